"""``medsegany segment``: exit codes, one-line errors (no traceback), and a real LiteMedSAM run."""

from __future__ import annotations

import json

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from medsegany.cli import main  # noqa: E402


def write_phantom(path, shape_kji=(5, 64, 64)):
    """A bright ellipsoid in a 64 x 64 x 5 volume, 1 x 1 x 3 mm."""
    k, j, i = np.indices(shape_kji)
    voxels = np.where(((k - 2) / 2.6) ** 2 + ((j - 32) / 14) ** 2 + ((i - 30) / 18) ** 2 <= 1, 200, 10)
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray((voxels + rng.normal(0, 3, shape_kji)).astype(np.int16))
    image.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(image, str(path))
    return path


def read_labels(path) -> np.ndarray:
    """The label values (K, J, I) of a labelmap the command wrote."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("cli") / "phantom.nii.gz")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medsegany: error: "), err
    assert "Traceback" not in err
    assert pytest.importorskip("re").search(pattern, lines[0]), lines[0]


def test_segment_with_bundled_litemedsam_writes_nifti_seg_nrrd_and_preview(phantom, tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"objects": [{"name": "blob", "boxes_ijk": [[14, 20, 2, 46, 44, 2]]}]}))
    nifti, seg, preview = tmp_path / "out.nii.gz", tmp_path / "out.seg.nrrd", tmp_path / "preview.png"
    code, out, err = run_cli(
        capsys,
        "segment",
        phantom,
        "--prompts",
        prompts,
        "--model",
        "litemedsam",
        "--device",
        "cpu",
        "--window",
        "0,255",
        "-o",
        nifti,
        "-o",
        seg,
        "--preview",
        preview,
        "-q",
    )
    assert code == 0, err
    assert nifti.is_file() and seg.is_file() and preview.is_file()
    labels = read_labels(nifti)
    assert set(np.unique(labels)) == {0, 1}
    assert labels[2].sum() > 200 and "blob:" in out
    # an existing output without --overwrite is refused and left as it was
    before = nifti.read_bytes()
    code, _, err = run_cli(capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "-o", nifti)
    assert_one_line_error(code, err, "already exists.*--overwrite")
    assert nifti.read_bytes() == before


def test_an_mhd_output_does_not_replace_an_existing_zraw_without_overwrite(phantom, tmp_path, capsys):
    """A .mhd labelmap's voxels go to a .zraw beside it; an existing .zraw of that name was replaced
    silently (the check looked at the .mhd only), against "existing files need --overwrite"."""
    zraw = tmp_path / "labels.zraw"
    zraw.write_bytes(b"the user's own data")
    code, _, err = run_cli(capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2",
                           "--model", "sam9_giant", "-o", tmp_path / "labels.mhd")  # fmt: skip
    assert_one_line_error(code, err, "labels.zraw already exists.*--overwrite")
    assert zraw.read_bytes() == b"the user's own data" and not (tmp_path / "labels.mhd").exists()


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--box-ijk", "14,20,2,46,44,2", "--model", "sam9_giant"], "unknown model"),
        (["--box-ijk", "100,120,2,140,150,2"], "outside the volume"),
        (["--box-ijk", "14,20,9,46,44,9"], "outside the volume"),
        (
            ["--box-ijk", "14,20,2,46,44,2", "--checkpoint", "BAD", "--config", "sam2.1_hiera_t512"],
            "cannot read|corrupt|not a PyTorch",
        ),
        (
            ["--box-ijk", "14,20,2,46,44,2", "--checkpoint", "BAD", "--config", "vit_b"],
            "corrupt|not a PyTorch",
        ),
        (["--box-ijk", "14,20,2,46,44,2", "--model", "medsam2_latest"], "models download medsam2_latest"),
    ],
)
def test_user_errors_exit_1_with_one_line(phantom, tmp_path, capsys, monkeypatch, extra, pattern):
    monkeypatch.setenv("MEDSEGANY_HOME", str(tmp_path / "home"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    argv = [str(bad) if value == "BAD" else value for value in extra]
    code, _, err = run_cli(capsys, "segment", phantom, *argv, "--device", "cpu", "-o", tmp_path / "o.nii.gz")
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "o.nii.gz").exists()


def test_missing_and_2d_inputs(tmp_path, capsys):
    code, _, err = run_cli(
        capsys, "segment", tmp_path / "none.nii.gz", "--box-ijk", "1,1,0,5,5,0", "-o", tmp_path / "o.nii.gz"
    )
    assert_one_line_error(code, err, "does not exist")
    flat = tmp_path / "flat.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.uint8)), str(flat))
    code, _, err = run_cli(capsys, "segment", flat, "--box-ijk", "1,1,0,5,5,0", "-o", tmp_path / "o.nii.gz")
    assert_one_line_error(code, err, "2D|2-D|two-dimensional|single slice|one slice")


def test_a_run_that_cannot_fit_in_memory_is_refused_before_it_starts(phantom, tmp_path, capsys, monkeypatch):
    import medsegany.memory_estimate as memory_estimate

    monkeypatch.setattr(memory_estimate, "available_memory_bytes", lambda device="cpu": 64 * 2**20)
    out = tmp_path / "never.nii.gz"
    code, _, err = run_cli(capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "-o", out)
    assert_one_line_error(code, err, r"needs about .* GiB of memory.*0\.06 GiB available: it does not fit")
    assert not out.exists()


def test_memory_running_out_during_a_run_says_nothing_was_written(phantom, tmp_path, capsys, monkeypatch):
    """The session keeps what it segmented before running out (its undo step), but a CLI job writes
    nothing, and the error says so instead of the session's "undo removes it"."""
    import medsegany.cli as cli
    from fake_models import ThresholdModel

    class RunsOutAtTheThirdSlice(ThresholdModel):
        def embed_frames(self, frames):
            if self.encoded >= 2:  # the prompted slice and one more, then memory is full
                raise MemoryError()
            return super().embed_frames(frames)

    monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False: RunsOutAtTheThirdSlice())
    out = tmp_path / "never.nii.gz"
    code, _, err = run_cli(
        capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "-o", out, "--window", "0,255", "-q"
    )
    assert_one_line_error(code, err, r"the model ran out of memory \(nothing was written\)\. segment a slice")
    assert "undo" not in err and not out.exists()


def test_structure_names_the_segment_and_writes_its_terminology(phantom, tmp_path, capsys):
    slicerio = pytest.importorskip("slicerio")
    seg = tmp_path / "kidney.seg.nrrd"
    code, out, err = run_cli(
        capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "--structure", "kidney_left",
        "--window", "0,255", "-o", seg, "-q",
    )  # fmt: skip
    assert code == 0, err
    (segment,) = slicerio.read_segmentation(str(seg), skip_voxels=True)["segments"]
    assert segment["name"] == "Left kidney" and "Left kidney:" in out
    assert segment["terminology"]["type"][:2] == ["SCT", "64033007"]  # SNOMED CT: kidney structure
    code, _, err = run_cli(capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "--structure", "livr",
                           "-o", tmp_path / "x.nii.gz")  # fmt: skip
    assert_one_line_error(code, err, "did you mean 'Liver'")


def test_a_run_without_an_output_is_a_clear_error(phantom, tmp_path, capsys):
    code, _, err = run_cli(capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2")
    assert_one_line_error(code, err, "no output file was given.*-o OUT")
    preview = tmp_path / "only.png"  # a preview alone is not a segmentation: refused before any work
    code, _, err = run_cli(capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "--preview", preview)
    assert_one_line_error(code, err, "no output file was given")
    assert not preview.exists()


def test_the_plans_choice_of_host_memory_for_features_reaches_the_session(
    phantom, tmp_path, capsys, monkeypatch
):
    import dataclasses

    import medsegany.memory_estimate as memory_estimate
    import medsegany.session as session_module

    real_plan, real_session = memory_estimate.plan_for_volume, session_module.SegmentationSession
    made = []

    def offloading_plan(*args, **kwargs):  # as a GPU too small for every slice's features would plan
        estimate = real_plan(*args, **kwargs)
        plan = dataclasses.replace(estimate.plan, offload_features=True)
        return dataclasses.replace(estimate, plan=plan)

    def recording_session(*args, **kwargs):
        made.append(kwargs)
        return real_session(*args, **kwargs)

    monkeypatch.setattr(memory_estimate, "plan_for_volume", offloading_plan)
    monkeypatch.setattr(session_module, "SegmentationSession", recording_session)
    out = tmp_path / "o.nii.gz"
    code, _, err = run_cli(
        capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "-o", out, "--window", "0,255"
    )
    assert code == 0, err
    notes = [line for line in err.splitlines() if "note:" in line]
    assert made[0]["offload_features"] is True and "features kept in host memory" in notes[0]
    assert out.is_file()


def test_values_that_start_with_a_minus_sign_follow_their_option(phantom, tmp_path, capsys):
    """``--window -160,240`` (the example the window's own error gives) was refused by argparse as an
    unknown option; a negative RAS coordinate first in a list too."""
    from medsegany.cli import joined_negative_values

    assert joined_negative_values(["--window", "-160,240", "--box-ras", "-1.5,-2,3,4,5,6", "-q"]) == [
        "--window=-160,240",
        "--box-ras=-1.5,-2,3,4,5,6",
        "-q",
    ]
    assert joined_negative_values(["--point-ras", "-12,30,4:-", "--win", "-5,5"]) == [
        "--point-ras=-12,30,4:-",
        "--win=-5,5",  # an abbreviation argparse accepts
    ]
    for unchanged in (["--overwrite", "-5"], ["--", "--window", "-5,5"], ["-o", "-1,2"]):
        assert joined_negative_values(unchanged) == unchanged  # a flag, after "--", a short option
    out = tmp_path / "window.nii.gz"
    code, _, err = run_cli(capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "--window", "-100,255",
                           "-o", out, "-q")  # fmt: skip
    assert code == 0, err
    assert read_labels(out).any()


def test_output_names_the_writers_refuse_are_refused_before_any_work(phantom, tmp_path, capsys):
    """Before, ``-o a.nii.gz -o b.txt`` wrote a.nii.gz, then failed on b.txt; a rerun with the name
    mended then met "a.nii.gz already exists"."""
    first, bad = tmp_path / "a.nii.gz", tmp_path / "b.txt"
    code, _, err = run_cli(capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "-o", first, "-o", bad)
    assert_one_line_error(code, err, "cannot tell the format of output 'b.txt'")
    assert not first.exists()
    code, _, err = run_cli(capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "-o", first,
                           "--preview", tmp_path / "p.jpg")  # fmt: skip
    assert_one_line_error(code, err, "preview 'p.jpg' is not a .png file")
    code, _, err = run_cli(capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "-o", tmp_path,
                           "--overwrite")  # fmt: skip
    assert_one_line_error(code, err, "cannot tell the format|is a folder")
    assert not first.exists()


def ctrl_c_at_seg_nrrd_outputs(monkeypatch) -> None:
    """The threshold model for the CLI's jobs, and Ctrl-C pressed as a job starts writing a .seg.nrrd."""
    import medsegany.cli as cli
    import medsegany.exporters as exporters
    from fake_models import ThresholdModel

    real_write = exporters.write_labelmap

    def interrupted_at_the_seg_nrrd(labelmap_kji, volume, path, **kwargs):
        if str(path).endswith(".seg.nrrd"):
            raise KeyboardInterrupt
        return real_write(labelmap_kji, volume, path, **kwargs)

    monkeypatch.setattr(exporters, "write_labelmap", interrupted_at_the_seg_nrrd)
    monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False: ThresholdModel())


def test_ctrl_c_between_two_outputs_names_the_one_written(phantom, tmp_path, capsys, monkeypatch):
    """Each output is written whole or not at all; Ctrl-C between them said "no output was written"."""
    ctrl_c_at_seg_nrrd_outputs(monkeypatch)
    first, second = tmp_path / "a.nii.gz", tmp_path / "b.seg.nrrd"
    code, _, err = run_cli(capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "-o", first,
                           "-o", second, "--window", "0,255", "-q")  # fmt: skip
    assert code == 130 and f"cancelled; only {first} was written" in err
    assert first.is_file() and not second.exists()


def test_an_object_hidden_by_a_later_one_in_the_labelmap_is_told(phantom, tmp_path, capsys, monkeypatch):
    """Objects segmented independently may overlap, and a labelmap holds one value a voxel: an object
    listed before the organ around it had 0 voxels in the file, while the summary gave its full count."""
    import medsegany.cli as cli
    from fake_models import ThresholdModel

    monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False: ThresholdModel())
    prompts = tmp_path / "nested.json"
    inner, outer = [24, 26, 2, 36, 38, 2], [14, 20, 2, 46, 44, 2]
    objects = [{"name": "tumour", "boxes_ijk": [inner]}, {"name": "organ", "boxes_ijk": [outer]}]
    prompts.write_text(json.dumps({"objects": objects}))
    out = tmp_path / "nested.nii.gz"
    code, stdout, err = run_cli(capsys, "segment", phantom, "--prompts", prompts, "--window=0,255", "-o", out)
    assert code == 0, err
    labels = read_labels(out)
    tumour_voxels = int(stdout.split("tumour: ")[1].split(" voxels")[0].split(", ")[-1])
    hidden = tumour_voxels - int((labels == 1).sum())
    assert hidden > 0 and f"note: {hidden} of tumour's {tumour_voxels} voxels are under objects listed" in err
    assert "organ's" not in err


def test_an_object_the_model_found_nothing_for_is_told_with_its_fix(phantom, tmp_path, capsys, monkeypatch):
    """A run that finds nothing on its prompted slice stops there; the summary alone read "0 slices
    (none), 0 voxels". The note names the slice and the way out that fits the prompt."""
    import medsegany.cli as cli
    from fake_models import ThresholdModel

    class TrainedWithBoxes(ThresholdModel):  # like LiteMedSAM: a point alone gives nothing
        def predict(self, embedding, box_frame_xyxy=None, points_frame_xy=None, point_labels=None):
            if box_frame_xyxy is None:
                box_frame_xyxy = (0, 0, 0, 0)  # the dark corner
            return super().predict(embedding, box_frame_xyxy, points_frame_xy, point_labels)

    monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False: TrainedWithBoxes())
    code, out, err = run_cli(capsys, "segment", phantom, "--point-ijk", "30,32,2", "--axis", "K",
                             "--window=0,255", "-o", tmp_path / "point.nii.gz")  # fmt: skip
    assert code == 0 and "0 slices (none), 0 voxels" in out
    assert "note: the model found nothing for" in err and "on its prompted slice K=2; add a box" in err
    # a box on the background: the box and the window are what to check
    code, out, err = run_cli(capsys, "segment", phantom, "--box-ijk", "1,1,3,8,8,3", "--window", "0,255",
                             "-o", tmp_path / "box.nii.gz")  # fmt: skip
    assert code == 0 and "prompted slice K=3; check that the box covers the object" in err
    # found: no note
    code, out, err = run_cli(capsys, "segment", phantom, "--box-ijk", "14,20,2,46,44,2", "--window", "0,255",
                             "-o", tmp_path / "found.nii.gz")  # fmt: skip
    assert code == 0 and "found nothing" not in err


def test_an_object_outscored_everywhere_under_exclusive_overlap_is_not_told_found_nothing(
    phantom, tmp_path, capsys, monkeypatch
):
    """--overlap exclusive: a box inside a bigger object's box, where the model is surer of the bigger one,
    loses every voxel of its prompted slice. The note said "the model found nothing ... check that the box
    covers the object", which sent the user to fix a box the model had segmented."""
    import medsegany.cli as cli
    from fake_models import ThresholdModel

    class SurerOfBiggerBoxes(ThresholdModel):  # logits grow with the box: the big object wins overlaps
        def predict(self, embedding, box_frame_xyxy=None, points_frame_xy=None, point_labels=None):
            prediction = super().predict(embedding, box_frame_xyxy, points_frame_xy, point_labels)
            x0, y0, x1, y1 = box_frame_xyxy
            scaled = prediction.logits_frame * (x1 - x0) * (y1 - y0) / 100.0
            return type(prediction)(scaled, prediction.iou_score)

    monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False: SurerOfBiggerBoxes())
    prompts = tmp_path / "nested.json"
    prompts.write_text(
        json.dumps(
            {
                "objects": [
                    {"name": "big", "boxes_ijk": [[14, 20, 2, 46, 44, 2]]},
                    {"name": "small", "boxes_ijk": [[26, 28, 2, 34, 36, 2]]},
                ]
            }
        )
    )
    code, out, err = run_cli(capsys, "segment", phantom, "--prompts", prompts, "--overlap", "exclusive",
                             "--window=0,255", "-o", tmp_path / "nested.nii.gz")  # fmt: skip
    assert code == 0 and "small: 0 slices (none), 0 voxels" in out, out
    assert "found nothing" not in err, err
    assert "slice K=2 every voxel the model found for small went to objects it is surer of there" in err


def test_a_nifti_output_of_a_sheared_volume_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    """A gantry-tilted CT kept in NRRD (its K axis leans): ITK's NIfTI writer made the axes perpendicular,
    and the labelmap written after the run lay 2 mm off the image at its far corner, exit 0."""
    import medsegany.cli as cli
    import nrrd
    from fake_models import ThresholdModel
    from medsegany.volume import read_volume

    voxels_ijk = np.full((40, 30, 8), 10, dtype=np.int16)
    voxels_ijk[10:30, 8:22, 2:6] = 200
    directions = np.array([[0.8, 0.0, 0.0], [0.0, 0.8, 0.0], [0.0, 0.3, 2.0]])  # rows: I, J, K in LPS
    source = tmp_path / "tilted.nrrd"
    nrrd.write(str(source), voxels_ijk, {"space": "left-posterior-superior", "space directions": directions,
                                         "space origin": np.array([10.0, 20.0, 30.0])})  # fmt: skip

    def no_model(args, single_run=False):
        raise AssertionError("the model was loaded for a run whose output would be refused")

    monkeypatch.setattr(cli, "load_cli_model", no_model)
    kept, nifti = tmp_path / "labels.nrrd", tmp_path / "labels.nii.gz"
    code, _, err = run_cli(capsys, "segment", source, "--box-ijk", "8,6,4,32,24,4", "--window=0,255",
                           "-o", kept, "-o", nifti)  # fmt: skip
    refusal = r"tilted's voxel axes are not perpendicular .* labels\.nii\.gz would lie up to 2 mm off"
    assert_one_line_error(code, err, refusal + r" the image\. write \.nrrd")
    assert not kept.exists() and not nifti.exists()

    monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False: ThresholdModel())
    code, _, err = run_cli(capsys, "segment", source, "--box-ijk", "8,6,4,32,24,4", "--window=0,255",
                           "-o", kept, "-q")  # fmt: skip
    assert code == 0, err
    written = read_volume(kept)
    np.testing.assert_allclose(written.ijk_to_ras, read_volume(source).ijk_to_ras, atol=1e-6)
    assert written.voxels_kji[4, 15, 20] == 1 and written.voxels_kji[0, 0, 0] == 0


def test_the_note_for_points_that_found_nothing_does_not_say_sam_was_trained_with_boxes(
    phantom, tmp_path, capsys, monkeypatch
):
    """Meta's SAM (sam_vit_b/l/h, SAM's preprocessing) was trained with points as well as boxes: the note
    told "add a box (sam_vit_b was trained with boxes)", which holds for MedSAM and LiteMedSAM only."""
    import medsegany.cli as cli
    from fake_models import ThresholdModel

    class PointsGiveNothing(ThresholdModel):
        def __init__(self, model_id: str, preprocessing: str) -> None:
            super().__init__()
            self.model_id, self.preprocessing = model_id, preprocessing

        def predict(self, embedding, box_frame_xyxy=None, points_frame_xy=None, point_labels=None):
            if box_frame_xyxy is None:
                box_frame_xyxy = (0, 0, 0, 0)  # the dark corner
            return super().predict(embedding, box_frame_xyxy, points_frame_xy, point_labels)

    for model_id, preprocessing, trained_with_boxes in (
        ("sam_vit_b", "sam", False),
        ("medsam_vit_b", "medsam", True),
    ):
        model = PointsGiveNothing(model_id, preprocessing)
        monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False, model=model: model)
        code, _, err = run_cli(capsys, "segment", phantom, "--point-ijk", "30,32,2", "--axis", "K",
                               "--window=0,255", "-o", tmp_path / f"{model_id}.nii.gz")  # fmt: skip
        assert code == 0 and "note: the model found nothing for" in err
        assert ("was trained with boxes" in err) == trained_with_boxes, err
        assert "add a box" in err


def test_a_folder_of_several_dicom_series_is_noted_and_series_chooses_one(
    tmp_path, capsys, monkeypatch, make_labelled_phantom, make_dicom_series, oblique_right_handed_geometry
):
    """The note names the series read and lists the others with the way to choose; --series reads the one
    chosen; -q hides the note (segment --help: "no progress display and no notes")."""
    import medsegany.cli as cli
    from fake_models import ThresholdModel

    image_kji, _ = make_labelled_phantom(shape_kji=(6, 20, 24), seed=2)
    folder = tmp_path / "study"
    geometry = oblique_right_handed_geometry
    make_dicom_series(
        folder, image_kji, geometry, series_uid="1.2.3.6", description="venous", file_prefix="V"
    )
    make_dicom_series(
        folder, image_kji[:4], geometry, series_uid="1.2.3.4", description="arterial", file_prefix="A"
    )
    monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False: ThresholdModel())
    argv = ["segment", folder, "--box-ijk", "2,2,1,20,16,1", "--window=0,255"]
    code, _, err = run_cli(capsys, *argv, "-o", tmp_path / "told.nii.gz")
    assert code == 0 and "holds 2 DICOM series; using the largest (1.2.3.6)" in err
    assert "the others: 1.2.3.4 (4 files, 'arterial') (choose one with --series UID)" in err
    assert read_labels(tmp_path / "told.nii.gz").shape == (6, 20, 24)
    code, _, err = run_cli(capsys, *argv, "-o", tmp_path / "chosen.nii.gz", "--series", "3.4")
    assert code == 0 and "using the one chosen (1.2.3.4); the others: 1.2.3.6 (6 files, 'venous')" in err
    assert read_labels(tmp_path / "chosen.nii.gz").shape == (4, 20, 24)
    code, _, err = run_cli(capsys, *argv, "-o", tmp_path / "none.nii.gz", "--series", "9.9")
    assert code == 1 and "no DICOM series in" in err and not (tmp_path / "none.nii.gz").exists()
    code, out, err = run_cli(capsys, *argv, "-o", tmp_path / "quiet.nii.gz", "-q")
    assert code == 0 and err == "" and "segment_1:" in out


def test_markups_files_saved_by_slicer_prompt_as_the_same_box_and_points_do(
    phantom, tmp_path, capsys, monkeypatch
):
    """--markups: an ROI file is the box, a point list's points are clicks (':-' negative), as Slicer saved
    them (LPS); the masks are those of the same prompts given as voxel indices."""
    slicer = pytest.importorskip("slicer", reason="needs slicer-core (Slicer's markups writer)")
    import medsegany.cli as cli
    from fake_models import ThresholdModel
    from medsegany.volume import read_volume
    from slicer_scene_testing import add_points, add_roi_on_slice

    ijk_to_ras = read_volume(phantom).ijk_to_ras
    scene = slicer.vtkMRMLScene()
    files = {}
    for name, node, storage in (
        (
            "box",
            add_roi_on_slice(scene, (14, 20, 2), (46, 44, 2), np.eye(4), world_ijk_to_ras=ijk_to_ras),
            "ROI",
        ),
        ("negative", add_points(scene, [(30, 32, 2)], np.eye(4), "neg", world_ijk_to_ras=ijk_to_ras), ""),
    ):
        writer = getattr(slicer, f"vtkMRMLMarkups{storage}JsonStorageNode")()
        scene.AddNode(writer)
        writer.SetFileName(str(tmp_path / f"{name}.mrk.json"))
        assert writer.WriteData(node)
        files[name] = tmp_path / f"{name}.mrk.json"
    monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False: ThresholdModel())
    common = ["segment", phantom, "--window=0,255", "-q"]
    code, _, err = run_cli(
        capsys,
        *common,
        "--box-ijk",
        "14,20,2,46,44,2",
        "--point-ijk",
        "30,32,2:-",
        "-o",
        tmp_path / "ijk.nii.gz",
    )
    assert code == 0, err
    marked = ["--markups", files["box"], "--markups", f"{files['negative']}:-"]
    code, _, err = run_cli(capsys, *common, *marked, "-o", tmp_path / "markups.nii.gz")
    assert code == 0, err
    expected = read_labels(tmp_path / "ijk.nii.gz")
    assert expected.any() and not expected[2, 32, 30]  # the negative click removed its voxel
    np.testing.assert_array_equal(read_labels(tmp_path / "markups.nii.gz"), expected)
    # an ROI cannot be a negative prompt, and one box per object
    code, _, err = run_cli(capsys, *common, "--markups", f"{files['box']}:-", "-o", tmp_path / "x.nii.gz")
    assert_one_line_error(code, err, "holds an ROI and was given as negative")
    code, _, err = run_cli(
        capsys, *common, *marked, "--box-ijk", "14,20,2,46,44,2", "-o", tmp_path / "y.nii.gz"
    )
    assert_one_line_error(code, err, "more than one box was given")
    empty = tmp_path / "empty.mrk.json"
    empty.write_text('{"markups": [{"type": "Fiducial", "controlPoints": []}]}')
    code, _, err = run_cli(capsys, *common, "--markups", f"{empty}:-", "-o", tmp_path / "z.nii.gz")
    assert_one_line_error(code, err, "the markups files given hold no placed point or ROI")


def test_a_markups_point_outside_the_volume_is_named_by_its_file_and_label(
    phantom, tmp_path, capsys, monkeypatch
):
    """Two --markups files: the second file's second point, off the image, was "point 3", numbered over
    the points of both files, and neither its file nor its label in Slicer was said."""
    import medsegany.cli as cli
    from fake_models import ThresholdModel
    from medsegany.volume import read_volume

    monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False: ThresholdModel())
    ijk_to_ras = read_volume(phantom).ijk_to_ras
    for name, points_ijk in (("a", [(30, 32, 2), (20, 30, 2)]), ("b", [(25, 30, 2), (90, 30, 2)])):
        positions_lps = (np.c_[points_ijk, np.ones(2)] @ ijk_to_ras.T)[:, :3] * [-1, -1, 1]
        control_points = [
            {"label": f"F-{n + 1}", "position": p.tolist(), "positionStatus": "defined"}
            for n, p in enumerate(positions_lps)
        ]
        markups = [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": control_points}]
        (tmp_path / f"{name}.mrk.json").write_text(json.dumps({"markups": markups}))
    files = ["--markups", tmp_path / "a.mrk.json", "--markups", tmp_path / "b.mrk.json"]
    code, _, err = run_cli(capsys, "segment", phantom, *files, "-o", tmp_path / "x.nii.gz")
    outside = "b.mrk.json point 'F-2' at LPS \\(90, 30, 6\\) I=90 is outside the volume"
    assert_one_line_error(code, err, outside)
    points = ["--axis", "K", "--point-ijk", "30,32,2", "--point-ijk", "30,32,4"]
    code, _, err = run_cli(capsys, "segment", phantom, *points, "-o", tmp_path / "y.nii.gz")
    other_slice = "--point-ijk 30,32,4 is on slice K=4, not on --point-ijk 30,32,2's slice"
    assert_one_line_error(code, err, other_slice)


def test_the_progress_of_mask_prompts_counts_each_labels_own_slices(phantom, tmp_path, capsys, monkeypatch):
    """Two labels, exclusive: the count ran over both labels and over the slices where one label took or
    gave back pixels of the other (and slices cleared), under the other's name: on 5 slices it reached
    "label_1: 10 slices", and label_2's first line never came (its count began at 5)."""
    import medsegany.cli as cli
    from fake_models import ThresholdModel

    image = sitk.ReadImage(str(phantom))
    truth_kji = sitk.GetArrayFromImage(image) > 100
    sparse_kji = np.zeros(truth_kji.shape, dtype=np.uint8)
    sparse_kji[1][truth_kji[1]] = 1
    sparse_kji[1][:, 32:][truth_kji[1][:, 32:]] = 2  # label 2: the right half of K=1, and K=3
    sparse_kji[3][truth_kji[3]] = 2
    labels = sitk.GetImageFromArray(sparse_kji)
    labels.CopyInformation(image)
    sitk.WriteImage(labels, str(tmp_path / "sparse.nii.gz"))
    monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False: ThresholdModel())
    argv = ["segment", phantom, "--window=0,255", "--mask-prompts", tmp_path / "sparse.nii.gz"]

    code, _, err = run_cli(capsys, *argv, "-o", tmp_path / "dense.nii.gz")

    assert code == 0, err
    assert [line.split(", ")[:2] for line in err.splitlines()] == [
        ["label_1: 1 slice", "at K=2"],  # (not a terminal: the first and every 10th slice of each label)
        ["label_2: 1 slice", "at K=2"],
    ]


def test_the_progress_line_counts_each_objects_slices_once():
    import io

    from medsegany.cli import SliceProgress

    stream = io.StringIO()  # not a terminal: a line for the 1st, 11th, 21st... slice of each object
    progress = SliceProgress(stream)
    for k in range(12):
        progress.update("liver", f"K={k}")
        progress.update("liver", f"K={k}")  # the same slice again (a re-run) counts once
        if k < 2:
            progress.update("spleen", f"K={k}")
    lines = [line.split(", ")[:2] for line in stream.getvalue().splitlines()]
    assert lines == [
        ["liver: 1 slice", "at K=0"],
        ["spleen: 1 slice", "at K=0"],
        ["liver: 11 slices", "at K=10"],
    ]
    assert progress.count == 14


def test_mask_prompts_fill_the_slices_between_and_beyond_a_sparse_labelmap(
    phantom, tmp_path, capsys, monkeypatch
):
    """--mask-prompts: each label keeps its value, its drawn slices stay as drawn, the rest is segmented."""
    import medsegany.cli as cli
    from fake_models import ThresholdModel

    image = sitk.ReadImage(str(phantom))
    truth_kji = sitk.GetArrayFromImage(image) > 100
    sparse_kji = np.zeros(truth_kji.shape, dtype=np.uint8)
    sparse_kji[1][truth_kji[1]] = 7  # two slices drawn by hand, as label 7
    sparse_kji[3][truth_kji[3]] = 7
    sparse_kji[3, 30:34, 28:32] = 0  # ... with a hole the model would not leave
    labels = sitk.GetImageFromArray(sparse_kji)
    labels.CopyInformation(image)
    sitk.WriteImage(labels, str(tmp_path / "sparse.nii.gz"))
    monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False: ThresholdModel())
    common = ["segment", phantom, "--window=0,255", "-q", "--mask-prompts", tmp_path / "sparse.nii.gz"]

    code, out, err = run_cli(
        capsys, *common, "-o", tmp_path / "dense.nii.gz", "-o", tmp_path / "dense.seg.nrrd"
    )

    assert code == 0, err
    dense = read_labels(tmp_path / "dense.nii.gz")
    assert set(np.unique(dense)) == {0, 7}
    np.testing.assert_array_equal(dense[[1, 3]], sparse_kji[[1, 3]])  # the drawn slices, as drawn
    assert (dense[2] == 7).sum() > 0.8 * truth_kji[2].sum() and (dense[0] == 7).any()  # between, beyond
    np.testing.assert_array_equal(read_labels(tmp_path / "dense.seg.nrrd"), dense)
    assert "label_7:" in out

    # the labelmap must be on the image's grid; a single label may take --name; several may not
    moved = sitk.GetImageFromArray(sparse_kji)
    moved.CopyInformation(image)
    moved.SetOrigin((0.0, 0.0, 4.0))
    sitk.WriteImage(moved, str(tmp_path / "moved.nii.gz"))
    code, _, err = run_cli(
        *[capsys, "segment", phantom, "--mask-prompts", tmp_path / "moved.nii.gz"],
        "-o",
        tmp_path / "x.nii.gz",
    )
    assert_one_line_error(code, err, "has the image's size but lies 4 mm from it")
    two = sparse_kji.copy()
    two[1, :2, :2] = 9
    two_image = sitk.GetImageFromArray(two)
    two_image.CopyInformation(image)
    sitk.WriteImage(two_image, str(tmp_path / "two.nii.gz"))
    code, _, err = run_cli(
        capsys,
        *common[:-2],
        "--mask-prompts",
        tmp_path / "two.nii.gz",
        "--name",
        "liver",
        "-o",
        tmp_path / "y.nii.gz",
    )
    assert_one_line_error(code, err, "--name was given, but .* holds 2 labels")
    code, _, err = run_cli(
        capsys,
        *common[:-2],
        "--mask-prompts",
        tmp_path / "two.nii.gz",
        "--structure",
        "liver",
        "-o",
        tmp_path / "y.nii.gz",
    )  # every label would be named "Liver"
    assert_one_line_error(code, err, "--structure was given, but .* holds 2 labels")
    assert not (tmp_path / "y.nii.gz").exists()
    empty = sitk.GetImageFromArray(np.zeros_like(sparse_kji))
    empty.CopyInformation(image)
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    code, _, err = run_cli(
        capsys, *common[:-2], "--mask-prompts", tmp_path / "empty.nii.gz", "-o", tmp_path / "z.nii.gz"
    )
    assert_one_line_error(code, err, "labels no voxel")


def test_frame_pixels_as_given_reaches_the_session_and_changes_a_side_view(
    phantom, tmp_path, capsys, monkeypatch
):
    """The phantom's J frames are 5 x 64 pixels of 3 x 1 mm: LiteMedSAM sees them resampled to 15 x 64
    square pixels by default, squashed 3 times along K with ``--frame-pixels as-given``."""
    import medsegany.session as session_module

    real_session = session_module.SegmentationSession
    made = []

    def recording_session(*args, **kwargs):
        made.append(kwargs)
        return real_session(*args, **kwargs)

    monkeypatch.setattr(session_module, "SegmentationSession", recording_session)
    k, j, i = np.indices((5, 64, 64))
    inside = ((k - 2) / 2.6) ** 2 + ((j - 32) / 14) ** 2 + ((i - 30) / 18) ** 2 <= 1
    dices = {}
    for pixels in ("square", "as-given", None):
        out = tmp_path / f"{pixels}.nii.gz"
        chosen = ["--frame-pixels", pixels] if pixels else []
        code, _, err = run_cli(capsys, "segment", phantom, "--box-ijk", "12,32,0,48,32,4", *chosen,
                               "--slice-range", "30,34", "--window", "0,255", "--device", "cpu",
                               "--precision", "float32", "--compile", "off", "-o", out)  # fmt: skip
        assert code == 0, err
        labels = read_labels(out) > 0
        dices[pixels] = 2 * (labels & inside)[:, 30:35].sum() / (labels.sum() + inside[:, 30:35].sum())
    assert [kwargs["square_pixels"] for kwargs in made] == [True, False, True]
    # Dice on J=30..34: square 0.9993, as given 0.9932
    assert dices[None] == dices["square"] > dices["as-given"], dices
