"""``medsegany segment`` on a slab (``medsegany.slab``, ``cli_estimate.plan_run``): ``--slice-range`` and a
memory plan's slab hand the session only those slices, and the result lands on the whole volume's grid,
equal to the same range propagated inside the whole volume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from fake_models import ThresholdModel  # noqa: E402
from test_cli import assert_one_line_error, read_labels, run_cli, write_phantom  # noqa: E402

BOX = "14,20,2,46,44,2"  # on K = 2


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """``test_cli``'s ellipsoid, with a brighter corner (400) on K = 0 and 4: an automatic window from
    slices 1..3 alone would differ from the whole volume's."""
    path = write_phantom(tmp_path_factory.mktemp("slab") / "phantom.nii.gz")
    voxels_kji = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    voxels_kji[[0, 4], :16, :16] = 400
    image = sitk.GetImageFromArray(voxels_kji)
    image.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture()
def sessions(monkeypatch):
    """The volumes and options the CLI's sessions were made with (the model: the threshold stand-in)."""
    import medsegany.cli as cli
    import medsegany.session as session_module

    real = session_module.SegmentationSession
    made = []

    def recording(volume, *args, **kwargs):
        made.append((volume, kwargs))
        return real(volume, *args, **kwargs)

    monkeypatch.setattr(session_module, "SegmentationSession", recording)
    monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False: ThresholdModel())
    return made


def whole_volume_oracle(phantom, box_ijk, slice_range, intensity="auto", model=None) -> np.ndarray:
    """The library's result: the same range propagated inside the whole volume (no crop)."""
    from medsegany.prompts import make_slice_prompts
    from medsegany.session import SegmentationSession
    from medsegany.volume import read_volume

    session = SegmentationSession(read_volume(phantom), model or ThresholdModel(), intensity=intensity)
    object_id = session.add_object("oracle")
    session.add_prompts(object_id, make_slice_prompts(session.volume, box_ijk=box_ijk))
    for _ in session.propagate(slice_range=slice_range):
        pass
    return session.labelmap_kji()


def test_a_slice_range_hands_the_session_only_its_slices(phantom, tmp_path, capsys, sessions, monkeypatch):
    import medsegany.preview as preview_module
    from medsegany.intensity import resolve_intensity
    from medsegany.volume import read_volume

    titles, real_title = [], preview_module._draw_title

    def recording_title(draw, text, highlight):
        titles.append(text)
        real_title(draw, text, highlight)

    monkeypatch.setattr(preview_module, "_draw_title", recording_title)
    out, preview = tmp_path / "range.nii.gz", tmp_path / "range.png"
    code, stdout, err = run_cli(
        capsys, "segment", phantom, "--box-ijk", BOX, "--slice-range", "1,3", "-o", out, "--preview", preview
    )
    assert code == 0, err
    assert preview.is_file()  # drawn from the slab's copy of the prompted slice
    assert "K=2 (prompt)" in titles and set(titles) <= {"K=1", "K=2 (prompt)", "K=3"}  # the volume's indices
    ((volume, kwargs),) = sessions
    assert volume.voxels_kji.shape == (3, 64, 64)
    # the window is the whole volume's (an automatic one from the slab's voxels alone would differ)
    whole = read_volume(phantom)
    assert kwargs["intensity"] == resolve_intensity(whole)
    assert resolve_intensity(whole) != resolve_intensity(volume)
    labels = read_labels(out)
    assert labels.shape == (5, 64, 64) and not labels[[0, 4]].any() and labels[1:4].any(axis=(1, 2)).all()
    np.testing.assert_array_equal(labels, whole_volume_oracle(phantom, (14, 20, 2, 46, 44, 2), (1, 3)))
    assert "K 1..3" in stdout  # the summary counts slices in the volume's indices
    code, _, err = run_cli(
        capsys, "segment", phantom, "--box-ijk", BOX, "--slice-range", "7,9", "-o", out, "--overwrite"
    )
    assert code == 1 and "slice range (7, 9) is empty" in err and "within 0..4" in err


def test_a_plan_that_fits_only_a_slab_crops_the_volume_to_it(
    phantom, tmp_path, capsys, sessions, monkeypatch
):
    import medsegany.memory_estimate as memory_estimate

    real_plan = memory_estimate.plan_for_volume

    def slab_plan(*args, **kwargs):  # as a machine with room for three slices would plan
        estimate = real_plan(*args, **kwargs)
        assert kwargs["crops_slab"] is True  # the CLI crops: the windowed copy and masks shrink with it
        shape_kji, axis, centre = args[1], args[2], args[4]
        slab = (max(centre - 1, 0), min(centre + 1, shape_kji[2 - axis] - 1))
        plan = dataclasses.replace(estimate.plan, slab=slab)
        return dataclasses.replace(estimate, plan=plan)

    monkeypatch.setattr(memory_estimate, "plan_for_volume", slab_plan)
    out = tmp_path / "slab.nii.gz"
    code, _, err = run_cli(capsys, "segment", phantom, "--box-ijk", BOX, "--window", "0,255", "-o", out)
    assert code == 0, err
    assert "note:" in err and "only slices 1-3 (a slab around the prompt)" in err
    ((volume, _),) = sessions
    assert volume.voxels_kji.shape == (3, 64, 64)
    expected = whole_volume_oracle(phantom, (14, 20, 2, 46, 44, 2), (1, 3), intensity=(0.0, 255.0))
    labels = read_labels(out)
    assert labels[1:4].any(axis=(1, 2)).all() and not labels[[0, 4]].any()
    np.testing.assert_array_equal(labels, expected)

    # within a --slice-range, the plan's slab is placed in the volume's indices
    code, _, err = run_cli(
        capsys, "segment", phantom, "--box-ijk", BOX, "--slice-range", "2,4", "-o", out, "--overwrite"
    )
    assert code == 0, err
    assert "only slices 2-3 (a slab around the prompt)" in err
    assert sessions[-1][0].voxels_kji.shape == (2, 64, 64)
    labels = read_labels(out)
    assert labels[2:4].any(axis=(1, 2)).all() and not labels[[0, 1, 4]].any()


def test_prompts_in_two_views_where_only_a_slab_fits_are_refused_before_the_run(
    phantom, tmp_path, capsys, sessions, monkeypatch
):
    """A slab along the first prompt's axis would leave the object prompted in another view on its prompt
    slice alone; the job says so, and writes nothing."""
    import medsegany.memory_estimate as memory_estimate

    real_plan = memory_estimate.plan_for_volume

    def slab_plan(*args, **kwargs):  # as a machine with room for three slices would plan
        estimate = real_plan(*args, **kwargs)
        return dataclasses.replace(estimate, plan=dataclasses.replace(estimate.plan, slab=(1, 3)))

    prompts = tmp_path / "views.json"
    axial, sagittal = [14, 20, 2, 46, 44, 2], [30, 20, 0, 30, 44, 4]  # on K = 2, and on I = 30
    objects = [{"name": "axial", "boxes_ijk": [axial]}, {"name": "sagittal", "boxes_ijk": [sagittal]}]
    prompts.write_text(json.dumps({"objects": objects}))
    out = tmp_path / "never.nii.gz"
    monkeypatch.setattr(memory_estimate, "plan_for_volume", slab_plan)
    code, _, err = run_cli(capsys, "segment", phantom, "--prompts", prompts, "--window", "0,255", "-o", out)
    assert_one_line_error(code, err, "only a slab of slices fits, and the prompts lie in several views")
    assert "segment each view in its own run" in err and not out.exists() and not sessions
    code, stdout, err = run_cli(capsys, "segment", phantom, "--prompts", prompts, "--estimate")
    assert "needs about" in stdout and "several views" in err and code == 1  # told, then refused

    monkeypatch.undo()  # with room for the whole volume, both objects are segmented
    code, _, err = run_cli(capsys, "segment", phantom, "--prompts", prompts, "--window", "0,255", "-o", out)
    assert code == 0, err
    labels = read_labels(out)
    assert labels[:, :, 30].any() and set(np.unique(labels)) == {0, 1, 2}


def test_prompts_outside_the_range_are_told_and_every_object_keeps_its_label(
    phantom, tmp_path, capsys, sessions
):
    prompts = tmp_path / "two.json"
    prompts.write_text(
        json.dumps(
            {
                "objects": [
                    {"name": "low", "boxes_ijk": [[14, 20, 0, 46, 44, 0]]},
                    {"name": "middle", "boxes_ijk": [[14, 20, 2, 46, 44, 2]]},
                ]
            }
        )
    )
    out = tmp_path / "two.nii.gz"
    code, stdout, err = run_cli(
        capsys, "segment", phantom, "--prompts", prompts, "--slice-range", "1,4", "-o", out
    )
    assert code == 0, err
    assert "1 prompted slice(s) outside slices K 1..4 are not used" in err
    labels = read_labels(out)
    assert set(np.unique(labels)) == {0, 2} and not labels[0].any()  # "middle" is label 2, as without a range
    assert "low: 0 slices (none)" in stdout and "middle: " in stdout

    code, _, err = run_cli(
        capsys, "segment", phantom, "--prompts", prompts, "--slice-range", "3,4", "-o", out, "--overwrite"
    )
    assert code == 1 and "hold no prompt" in err


def test_an_estimate_with_a_slice_range_sizes_the_slab(phantom, capsys):
    code, out, err = run_cli(
        capsys, "segment", phantom, "--box-ijk", BOX, "--slice-range", "1,3", "--device", "cpu", "--estimate"
    )
    assert code == 0, err
    assert "on 3 slices of 64x64" in out


def test_a_sam2_slab_gives_the_masks_of_the_same_range_in_the_whole_volume(tmp_path, capsys, monkeypatch):
    """SAM 2 tracks by distances between slices, so a slab gives the masks the range gives inside the whole
    volume (MedSAM2's configuration, random weights), and the logits too: its memory is told the volume's
    7 slices, not the slab's 4 (an object pointer's distance is divided by min(slices, 16) - 1)."""
    pytest.importorskip("sam2")
    import medsegany.session as session_module
    from medsegany.models.registry import load_model
    from sam2_testing import CONFIG_512, random_checkpoint

    real_session, made = session_module.SegmentationSession, []
    monkeypatch.setattr(
        session_module,
        "SegmentationSession",
        lambda *a, **kw: made.append(real_session(*a, **kw)) or made[-1],
    )

    shape_kji = (7, 40, 48)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    voxels_kji = np.where((j - 20) ** 2 / 9**2 + (i - 24) ** 2 / 11**2 + (k - 3) ** 2 / 3.5**2 <= 1, 150, -80)
    image = sitk.GetImageFromArray(voxels_kji.astype(np.int16))
    image.SetSpacing((1.0, 1.0, 2.0))
    path = tmp_path / "sam2_phantom.nii.gz"
    sitk.WriteImage(image, str(path))
    checkpoint = random_checkpoint(tmp_path)
    out = tmp_path / "sam2.nii.gz"
    code, _, err = run_cli(
        capsys, "segment", path, "--box-ijk", "11,9,3,37,31,3", "--slice-range", "2,5",
        "--checkpoint", checkpoint, "--config", CONFIG_512, "--device", "cpu", "--precision", "float32",
        "-o", out, "-q",
    )  # fmt: skip
    assert code == 0, err
    model = load_model(None, checkpoint=checkpoint, config=CONFIG_512, device="cpu", precision="float32")
    expected = whole_volume_oracle(path, (11, 9, 3, 37, 31, 3), (2, 5), model=model)
    labels = read_labels(out)
    assert labels[3].any() and not labels[[0, 1, 6]].any()  # a real comparison, not two blanks
    np.testing.assert_array_equal(labels, expected)
    slab, whole = made[0].tracker(2), made[1].tracker(2)
    assert slab.num_frames == 4 and whole.num_frames == 7
    for k in range(2, 6):
        np.testing.assert_array_equal(
            slab.result(1, k - 2).mask_logits_frame, whole.result(1, k).mask_logits_frame, err_msg=str(k)
        )


def test_a_range_over_prompts_in_two_views_leaves_out_and_tells_the_prompts_outside_it(
    phantom, tmp_path, capsys, sessions
):
    """Prompts on K and on I cannot crop, so the range limits each object's propagation on its own axis.
    The object prompted on I=30, outside slices 1..3, was still segmented there (1 slice of voxels where
    the user asked for none) and nothing said so; on one axis such a prompt is left out and told."""
    prompts = tmp_path / "views.json"
    objects = [
        {"name": "axial", "boxes_ijk": [[14, 20, 2, 46, 44, 2]]},
        {"name": "sagittal", "boxes_ijk": [[30, 20, 0, 30, 44, 4]]},
    ]
    prompts.write_text(json.dumps({"objects": objects}))
    out = tmp_path / "views.nii.gz"
    code, stdout, err = run_cli(
        capsys, "segment", phantom, "--prompts", prompts, "--slice-range", "1,3", "-o", out
    )
    assert code == 0, err
    assert "1 prompted slice(s) outside slices 1..3 of their axis are not used" in err
    labels = read_labels(out)
    assert (labels == 1)[1:4].any() and not (labels == 1)[[0, 4]].any()
    assert not (labels == 2).any() and "sagittal: 0 slices (none)" in stdout

    code, _, err = run_cli(
        capsys, "segment", phantom, "--prompts", prompts, "--slice-range", "3,4", "-o", out, "--overwrite"
    )
    assert_one_line_error(code, err, r"slices 3\.\.4 hold no prompt \(prompted: I=30, K=2\)")


def test_a_forward_run_where_only_a_slab_fits_gets_the_slab_from_its_prompt(
    phantom, tmp_path, capsys, sessions, monkeypatch
):
    """Room for 2 slices, the box on K=2, --direction forward: the planner's slab was centred (1..2), so
    the run segmented K=2 alone; from the prompt it is 2..3, and --estimate says the same slab."""
    import medsegany.memory_estimate as memory_estimate

    real_plan = memory_estimate.plan_memory

    def two_slices_of_room(model, frame_shape, num_frames, num_objects=1, device="cpu", **kwargs):
        room = memory_estimate.estimate_memory(
            model, frame_shape, 2, num_objects, device, 1, 2, volume_bytes=kwargs["volume_bytes"]
        )
        kwargs["available_bytes"] = int(room.device_bytes / 0.9) + 1
        return real_plan(model, frame_shape, num_frames, num_objects, device, **kwargs)

    monkeypatch.setattr(memory_estimate, "plan_memory", two_slices_of_room)
    monkeypatch.setattr(memory_estimate, "MIN_SLAB_SLICES", 2)
    out = tmp_path / "forward.nii.gz"
    argv = ("segment", phantom, "--box-ijk", BOX, "--window", "0,255", "--direction", "forward")
    code, stdout, err = run_cli(capsys, *argv, "--device", "cpu", "--estimate")
    assert code == 0, err
    assert "only slices 2-3 (a slab around the prompt)" in stdout
    code, _, err = run_cli(capsys, *argv, "-o", out)
    assert code == 0, err
    assert "only slices 2-3 (a slab around the prompt)" in err
    labels = read_labels(out)
    assert labels[2:4].any(axis=(1, 2)).all() and not labels[[0, 1, 4]].any()
