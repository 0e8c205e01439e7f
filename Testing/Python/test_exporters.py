"""Labelmaps land on the same voxels as their input, in every format and odd geometry; writes are atomic."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from medsegany.errors import OutputError
from medsegany.exporters import (
    LABELMAP_SUFFIXES,
    SEG_NRRD_GZIP_LEVEL,
    SegmentInfo,
    default_segment_color,
    label_values_present,
    output_suffix,
    write_labelmap,
)
from medsegany.geometry import LPS_TO_RAS, ijk_to_ras_matrix
from medsegany.volume import Volume, read_volume

PLAIN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
SEGMENTS = [SegmentInfo(1, "lesion core", (0.9, 0.1, 0.2)), SegmentInfo(2, "marker", (0.1, 0.3, 1.0))]


def sitk():
    import SimpleITK

    return SimpleITK


def labelled_voxels_ijk(labels_kji: np.ndarray, count: int = 6) -> np.ndarray:
    """A few labelled voxel indices (i, j, k), spread over the labelled set, always including the last."""
    k, j, i = np.nonzero(labels_kji)
    picks = np.unique(np.linspace(0, len(k) - 1, count).round().astype(int))
    return np.stack([i[picks], j[picks], k[picks]], axis=1)


def assert_same_voxels_and_place(
    written: Path, labels_kji: np.ndarray, expected_ijk_to_ras: np.ndarray
) -> None:
    """``written`` (read by SimpleITK and read_volume) has ``labels_kji`` where ``expected_ijk_to_ras`` says.

    The expected matrix comes from the input's known geometry, not from reading it, so a reader and a
    writer that make the same mistake cannot agree by accident.
    """
    image = sitk().ReadImage(str(written))
    np.testing.assert_array_equal(sitk().GetArrayFromImage(image), labels_kji)
    ijk_to_ras_itk = ijk_to_ras_matrix(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    np.testing.assert_allclose(ijk_to_ras_itk, expected_ijk_to_ras, atol=1e-4)

    volume = read_volume(written)
    np.testing.assert_array_equal(volume.voxels_kji, labels_kji)
    np.testing.assert_allclose(volume.ijk_to_ras, expected_ijk_to_ras, atol=1e-4)

    # Resample-free physical check: each labelled voxel centre is at the same RAS point in the output,
    # found back from that point the output holds the same label.
    for index_ijk in labelled_voxels_ijk(labels_kji):
        point_ras = expected_ijk_to_ras[:3, :3] @ index_ijk + expected_ijk_to_ras[:3, 3]
        point_lps = np.array(image.TransformIndexToPhysicalPoint([int(v) for v in index_ijk]))
        np.testing.assert_allclose(point_lps * [-1, -1, 1], point_ras, atol=1e-3)
        found_ijk = np.rint(volume.ras_to_ijk_points(point_ras)).astype(int)
        np.testing.assert_array_equal(found_ijk, index_ijk)
        i, j, k = found_ijk
        assert volume.voxels_kji[k, j, i] == labels_kji[index_ijk[2], index_ijk[1], index_ijk[0]] != 0


def assert_seg_nrrd(
    written: Path, labels_kji: np.ndarray, expected_ijk_to_ras: np.ndarray, segments: list[SegmentInfo]
) -> None:
    import slicerio

    segmentation = slicerio.read_segmentation(str(written))
    np.testing.assert_allclose(segmentation["ijkToLPS"], LPS_TO_RAS @ expected_ijk_to_ras, atol=1e-6)
    assert segmentation["voxels"].shape == labels_kji.shape[::-1]  # slicerio's arrays are IJK
    np.testing.assert_array_equal(segmentation["voxels"].transpose(2, 1, 0), labels_kji)
    read_back = {s["labelValue"]: s for s in segmentation["segments"]}
    assert sorted(read_back) == sorted(info.label_value for info in segments)
    for info in segments:
        segment = read_back[info.label_value]
        assert segment["name"] == info.name
        np.testing.assert_allclose(segment["color"], info.color_rgb, atol=1e-6)
        assert segment["layer"] == 0
        np.testing.assert_array_equal(
            slicerio.segment_mask(segmentation, segment).transpose(2, 1, 0), labels_kji == info.label_value
        )


# -- (a) an LPS-stored NRRD with an oblique, flipped direction -----------------------------------------
@pytest.mark.parametrize("suffix", PLAIN_SUFFIXES)
def test_labelmap_for_oblique_flipped_nrrd_lands_on_the_input_voxels(tmp_path, oblique_flipped_nrrd, suffix):
    path, image_kji, labels_kji, geometry = oblique_flipped_nrrd
    volume = read_volume(path)
    assert np.array_equal(volume.voxels_kji, image_kji)
    written = write_labelmap(labels_kji, volume, tmp_path / f"labels{suffix}", SEGMENTS)
    assert written == tmp_path / f"labels{suffix}" and written.is_file()
    assert_same_voxels_and_place(written, labels_kji, LPS_TO_RAS @ geometry.ijk_to_lps)
    assert sitk().ReadImage(str(written)).GetPixelID() == sitk().sitkUInt8
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_seg_nrrd_for_oblique_flipped_nrrd_keeps_geometry_names_colours_and_values(
    tmp_path, oblique_flipped_nrrd
):
    path, _, labels_kji, geometry = oblique_flipped_nrrd
    volume = read_volume(path)
    written = write_labelmap(labels_kji, volume, tmp_path / "labels.seg.nrrd", SEGMENTS)
    assert_seg_nrrd(written, labels_kji, LPS_TO_RAS @ geometry.ijk_to_lps, SEGMENTS)
    # SimpleITK (Slicer's reader for a single-layer .seg.nrrd) sees the same voxels at the same place.
    assert_same_voxels_and_place(written, labels_kji, LPS_TO_RAS @ geometry.ijk_to_lps)


def test_seg_nrrd_keeps_label_values_that_are_not_1_to_n(tmp_path, oblique_flipped_nrrd):
    path, _, labels_kji, geometry = oblique_flipped_nrrd
    volume = read_volume(path)
    sparse_kji = np.where(labels_kji == 1, 7, np.where(labels_kji == 2, 300, 0)).astype(np.uint16)
    segments = [SegmentInfo(300, "marker", (0.0, 0.5, 0.5)), SegmentInfo(7, "tumour", (1.0, 1.0, 0.0))]
    written = write_labelmap(sparse_kji, volume, tmp_path / "sparse.seg.nrrd", segments)
    assert_seg_nrrd(written, sparse_kji, LPS_TO_RAS @ geometry.ijk_to_lps, segments)


def test_seg_nrrd_names_labels_that_have_no_segment_info(tmp_path, oblique_flipped_nrrd):
    import slicerio

    path, _, labels_kji, _ = oblique_flipped_nrrd
    written = write_labelmap(
        labels_kji,
        read_volume(path),
        tmp_path / "auto.seg.nrrd",
        [SegmentInfo(2, "two\nlines", (0.2, 0.2, 0.2))],
    )
    segments = {s["labelValue"]: s for s in slicerio.read_segmentation(str(written))["segments"]}
    assert segments[2]["name"] == "two lines"  # a newline would break the NRRD header
    assert segments[1]["name"] == "Segment_1"
    np.testing.assert_allclose(segments[1]["color"], default_segment_color(0))


def test_seg_nrrd_keeps_non_ascii_names_as_slicer_reads_them(tmp_path, small_volume):
    """Slicer writes segment names as UTF-8 in the header and reads them back so; pynrrd alone refused them
    ('ascii' codec can't encode), which failed the whole write."""
    labels_kji = np.zeros((3, 4, 5), dtype=np.uint8)
    labels_kji[0, 1, 2], labels_kji[1, 2, 3], labels_kji[2, 3, 4] = 1, 2, 3
    segments = [
        SegmentInfo(1, "Läsion 肝臓", (1.0, 0.0, 0.0)),
        SegmentInfo(2, "plain", (0.0, 1.0, 0.0)),
        SegmentInfo(3, "Größe\nzwei", (0.0, 0.0, 1.0)),
    ]
    written = write_labelmap(labels_kji, small_volume, tmp_path / "utf8.seg.nrrd", segments)
    header = written.read_bytes().split(b"\n\n", 1)[0]
    assert "Segment0_Name:=Läsion 肝臓\n".encode() in header
    assert b"Segment1_Name:=plain\n" in header
    assert "Segment2_Name:=Größe zwei\n".encode() in header
    assert_same_voxels_and_place(written, labels_kji, small_volume.ijk_to_ras)
    assert slicer_segment_names(written) == {1: "Läsion 肝臓", 2: "plain", 3: "Größe zwei"}


def test_seg_nrrd_names_with_backslashes_read_back_in_slicer(tmp_path, small_volume):
    """Slicer reads a backslash and "n" in a header field as a newline: a raw "C:\\new" came back in two
    lines, and two backslashes as one."""
    labels_kji = np.zeros((3, 4, 5), dtype=np.uint8)
    labels_kji[0, 1, 2], labels_kji[1, 2, 3] = 1, 2
    segments = [SegmentInfo(1, r"C:\new\tumor", (1.0, 0.0, 0.0)), SegmentInfo(2, r"a\\b", (0.0, 1.0, 0.0))]
    written = write_labelmap(labels_kji, small_volume, tmp_path / "backslash.seg.nrrd", segments)
    assert slicer_segment_names(written) == {1: r"C:\new\tumor", 2: r"a\\b"}


def slicer_segment_names(path: Path) -> dict[int, str]:
    """{label value: name} of the segments of a .seg.nrrd as Slicer's own storage node reads them."""
    slicer = pytest.importorskip("slicer", reason="needs slicer-core for Slicer's own .seg.nrrd reader")
    if not hasattr(slicer, "vtkMRMLSegmentationStorageNode"):
        pytest.skip("this slicer-core has no segmentation storage node")
    from slicer_scene_testing import make_scene

    scene, logic = make_scene()
    try:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        storage = slicer.vtkMRMLSegmentationStorageNode()
        scene.AddNode(storage)
        storage.SetFileName(str(path))
        assert storage.ReadData(node)
        segmentation = node.GetSegmentation()
        return {
            segmentation.GetNthSegment(n).GetLabelValue(): segmentation.GetNthSegment(n).GetName()
            for n in range(segmentation.GetNumberOfSegments())
        }
    finally:
        logic.SetMRMLScene(None)
        scene.Clear(1)


@pytest.mark.parametrize("dtype, high", [(np.uint8, 255), (np.uint16, 65535)])
def test_label_values_present_are_numpys_unique_nonzero_values(dtype, high):
    rng = np.random.default_rng(3)
    labels_kji = np.zeros((6, 7, 8), dtype=dtype)
    assert label_values_present(labels_kji) == []
    labels_kji.flat[rng.choice(labels_kji.size, 40, replace=False)] = rng.choice([1, 2, 9, high], 40)
    assert label_values_present(labels_kji) == [int(v) for v in np.unique(labels_kji) if v]


def test_seg_nrrd_voxels_are_gzipped_at_the_fast_level(tmp_path, small_volume):
    """gzip's header tells the level apart (RFC 1952's XFL byte: 4 fastest, 2 slowest), so a write that
    fell back to pynrrd's level 9 (5x slower for a 512 x 512 x 300 labelmap) fails here."""
    labels_kji = np.zeros((3, 4, 5), dtype=np.uint8)
    labels_kji[1] = 2
    written = write_labelmap(labels_kji, small_volume, tmp_path / "fast.seg.nrrd", SEGMENTS)
    data = written.read_bytes().split(b"\n\n", 1)[1]
    assert SEG_NRRD_GZIP_LEVEL == 1 and data[:2] == b"\x1f\x8b" and data[8] == 4
    assert_seg_nrrd(written, labels_kji, small_volume.ijk_to_ras, SEGMENTS)


# -- (b) a NIfTI with a permuted, flipped direction (DeepLesion) -----------------------------------------
@pytest.mark.realdata
def test_labelmap_for_deeplesion_niftis_with_permuted_directions(tmp_path, shared_data_dir):
    """Every DeepLesion case: its own label file, written for its image, lands on the same voxels."""
    folder = shared_data_dir / "medsam2_recist_ct_lesion"
    labels = sorted(folder.glob("CT_Lesion_*_label.nii.gz"))
    if not labels:
        pytest.skip(f"no DeepLesion label files in {folder}")
    permuted = 0
    for label_path in labels:
        image_path = label_path.with_name(label_path.name.replace("_label", "_image"))
        reference_image = sitk().ReadImage(str(image_path))
        direction = np.reshape(reference_image.GetDirection(), (3, 3))
        permuted += not np.allclose(np.abs(direction), np.eye(3))
        expected_ijk_to_ras = ijk_to_ras_matrix(
            reference_image.GetSpacing(), reference_image.GetOrigin(), direction
        )
        volume = read_volume(image_path)
        label_volume = read_volume(label_path)
        np.testing.assert_allclose(label_volume.ijk_to_ras, volume.ijk_to_ras, atol=1e-4)
        labels_kji = label_volume.voxels_kji
        assert labels_kji.any(), label_path.name
        for suffix in (".nii.gz", ".nrrd"):
            written = write_labelmap(labels_kji, volume, tmp_path / f"{volume.name}{suffix}")
            assert_same_voxels_and_place(written, labels_kji, expected_ijk_to_ras)
        lesion = [SegmentInfo(1, "lesion", (0.85, 0.4, 0.4))]
        written = write_labelmap(labels_kji, volume, tmp_path / f"{volume.name}.seg.nrrd", lesion)
        assert_seg_nrrd(written, labels_kji, expected_ijk_to_ras, lesion)
    assert permuted, "the DeepLesion cases should include a permuted direction"


# -- (c) a DICOM series --------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".seg.nrrd"])
def test_labelmap_for_dicom_series_lands_on_the_input_voxels(tmp_path, dicom_series, suffix):
    folder, _, labels_kji, geometry = dicom_series
    volume = read_volume(folder)
    written = write_labelmap(labels_kji, volume, tmp_path / f"labels{suffix}", SEGMENTS)
    assert_same_voxels_and_place(written, labels_kji, LPS_TO_RAS @ geometry.ijk_to_lps)
    if suffix == ".seg.nrrd":
        assert_seg_nrrd(written, labels_kji, LPS_TO_RAS @ geometry.ijk_to_lps, SEGMENTS)


# -- (d) a sheared grid (a gantry-tilted CT kept in NRRD): NIfTI cannot hold it ------------------------
@pytest.fixture
def sheared_nrrd(tmp_path) -> tuple[Path, np.ndarray]:
    """An LPS NRRD whose K axis leans 0.3 mm towards P per slice (gantry tilt): (path, ijk_to_ras)."""
    import nrrd

    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.array([[0.8, 0.0, 0.0], [0.0, 0.8, 0.3], [0.0, 0.0, 2.0]])  # columns I, J, K
    ijk_to_lps[:3, 3] = (10.0, 20.0, 30.0)
    path = tmp_path / "sheared.nrrd"
    header = {
        "space": "left-posterior-superior",
        "space directions": ijk_to_lps[:3, :3].T,  # NRRD's rows are the axes
        "space origin": ijk_to_lps[:3, 3],
    }
    nrrd.write(str(path), np.zeros((20, 30, 10), dtype=np.int16), header)
    return path, LPS_TO_RAS @ ijk_to_lps


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_nifti_output_of_a_sheared_grid_is_refused_not_written_off_it(tmp_path, sheared_nrrd, suffix):
    """ITK's NIfTI writer made the axes perpendicular (with a warning on stderr): the labelmap of this
    20 x 30 x 10 volume lay 2.1 mm off the image at its far corner, and nothing told the user."""
    path, ijk_to_ras = sheared_nrrd
    volume = read_volume(path)
    np.testing.assert_allclose(volume.ijk_to_ras, ijk_to_ras, atol=1e-6)
    labels_kji = np.zeros(volume.voxels_kji.shape, dtype=np.uint8)
    labels_kji[9, 29, 19] = 1
    target = tmp_path / f"labels{suffix}"
    refusal = r"not perpendicular .* 2\.1 mm off the image.*\.nrrd, \.seg\.nrrd or \.mha"
    with pytest.raises(OutputError, match=refusal):
        write_labelmap(labels_kji, volume, target)
    assert not target.exists()
    for kept in (".nrrd", ".seg.nrrd", ".mha"):  # the formats the message offers keep the grid exactly
        written = write_labelmap(labels_kji, volume, tmp_path / f"labels{kept}")
        np.testing.assert_allclose(read_volume(written).ijk_to_ras, ijk_to_ras, atol=1e-6)


def test_a_nifti_output_of_a_volume_over_32767_voxels_wide_is_refused_before_writing(tmp_path):
    """NIfTI-1's dimensions are 16-bit: ITK failed after the run, and the message blamed the disk."""
    from medsegany.exporters import check_output_geometry

    wide = Volume(np.zeros((2, 2, 40000), dtype=np.uint8), np.eye(4), name="wide")
    with pytest.raises(OutputError, match=r"40000 voxels along an axis and NIfTI-1 holds at most 32767"):
        check_output_geometry(tmp_path / "x.nii.gz", wide)
    check_output_geometry(tmp_path / "x.nrrd", wide)  # the formats offered take it
    written = write_labelmap(np.ones((2, 2, 40000), dtype=np.uint8), wide, tmp_path / "x.nrrd")
    assert read_volume(written).shape_ijk == (40000, 2, 2)


# -- formats -------------------------------------------------------------------------------------------
@pytest.fixture
def small_volume() -> Volume:
    return Volume(np.zeros((3, 4, 5), dtype=np.int16), np.diag([-0.5, -0.5, 2.0, 1.0]), name="small")


def test_labels_of_256_and_more_are_written_as_uint16(tmp_path, small_volume):
    labels_kji = np.zeros((3, 4, 5), dtype=np.int32)
    labels_kji[1, 2, 3] = 300
    written = write_labelmap(labels_kji, small_volume, tmp_path / "many.nii.gz")
    image = sitk().ReadImage(str(written))
    assert image.GetPixelID() == sitk().sitkUInt16
    assert sitk().GetArrayFromImage(image)[1, 2, 3] == 300


def test_boolean_mask_is_written_as_label_1(tmp_path, small_volume):
    mask_kji = np.zeros((3, 4, 5), dtype=bool)
    mask_kji[0, 1, 2] = True
    written = write_labelmap(mask_kji, small_volume, tmp_path / "mask.mha")
    np.testing.assert_array_equal(read_volume(written).voxels_kji, mask_kji.astype(np.uint8))


def test_mhd_header_names_its_final_data_file(tmp_path, small_volume):
    labels_kji = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    written = write_labelmap(labels_kji, small_volume, tmp_path / "result.mhd")
    header = written.read_text(errors="replace")
    data_file = next(
        line.split("=", 1)[1].strip() for line in header.splitlines() if line.startswith("ElementDataFile")
    )
    assert data_file.startswith("result.") and (tmp_path / data_file).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["result.mhd", data_file])
    np.testing.assert_array_equal(read_volume(written).voxels_kji, labels_kji)


def test_an_existing_output_is_replaced_on_success(tmp_path, small_volume):
    target = tmp_path / "labels.nrrd"
    target.write_bytes(b"old result")
    write_labelmap(np.ones((3, 4, 5), dtype=np.uint8), small_volume, target)
    assert read_volume(target).voxels_kji.min() == 1


def test_output_suffix_takes_the_longest_known_extension():
    assert output_suffix("a/b/Case.SEG.NRRD") == ".seg.nrrd"
    assert output_suffix("case.nii.gz") == ".nii.gz"
    assert output_suffix("case.nrrd") == ".nrrd"
    assert set(LABELMAP_SUFFIXES) == {".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"}


def _closest_pair(colours) -> float:
    """The smallest difference, in the most different channel, of two of ``colours``."""
    pairs = [(c1, c2) for n, c1 in enumerate(colours) for c2 in colours[n + 1 :]]
    return min(max(abs(a - b) for a, b in zip(c1, c2)) for c1, c2 in pairs)


def test_default_segment_colors_are_distinct_valid_and_cycle():
    colours = [default_segment_color(index) for index in range(10)]
    assert len(set(colours)) == 10
    assert all(len(c) == 3 and all(0.0 <= v <= 1.0 for v in c) for c in colours)
    assert _closest_pair(colours) > 0.2  # distinguishable: every pair differs by more than 0.2 somewhere


def test_more_than_ten_objects_get_distinct_bright_colours():
    """Objects 1 and 11 got the same colour (a palette of 10 that cycled): 12 vertebrae could not be told
    apart in one labelmap."""
    colours = [default_segment_color(index) for index in range(40)]
    assert colours[:10] == [default_segment_color(index) for index in range(10)]  # the palette first
    assert _closest_pair(colours[:24]) >= 0.2 and _closest_pair(colours) > 0.15
    assert all(max(c) >= 0.6 and max(c) - min(c) >= 0.15 for c in colours)  # neither dark nor grey
    count = len({default_segment_color(index) for index in range(1000)})
    assert count > 150 and default_segment_color(count) == default_segment_color(0)  # then it cycles
    # every colour of the cycle stands apart: the last candidates were near-copies of palette colours
    # ((0.49, 0.66, 0.49) for the first, (0.5, 0.68, 0.5): objects 1 and 196 looked the same)
    assert _closest_pair([default_segment_color(index) for index in range(count)]) >= 0.15


# -- refusals: one line naming the problem and the fix, nothing left behind ----------------------------
def assert_output_error(call, *fragments: str) -> OutputError:
    with pytest.raises(OutputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and caught.value.fix
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"
    return caught.value


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("CASE.NII.GZ", ".nii.gz"),
        ("Case.Nii", ".nii"),
        ("case.nii.GZ", ".nii.gz"),
        ("CASE.MHA", ".mha"),
        ("case.MHD", ".mhd"),
    ],
)
def test_an_extension_itk_cannot_write_in_capitals_is_refused_before_the_run(
    tmp_path, small_volume, name, suffix
):
    # output_suffix is what the command line checks before the run: ITK failed only after it ("Bad Nifti
    # file name", "check free disk space"), and wrote an .MHA as .mhd + .zraw
    assert_output_error(
        lambda: output_suffix(tmp_path / name), "not in lower case", f"end the output name with {suffix}"
    )
    labels_kji = np.zeros((3, 4, 5), dtype=np.uint8)
    assert_output_error(
        lambda: write_labelmap(labels_kji, small_volume, tmp_path / name), "not in lower case"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["CASE.NRRD", "Case.Nrrd", "CASE.SEG.NRRD"])
def test_nrrd_names_in_capitals_are_written_and_read_back(tmp_path, small_volume, name):
    labels_kji = np.zeros((3, 4, 5), dtype=np.uint8)
    labels_kji[1, 2, 3], labels_kji[2, 0, 1] = 1, 2
    written = write_labelmap(labels_kji, small_volume, tmp_path / name)
    assert [path.name for path in tmp_path.iterdir()] == [name]
    if name.lower().endswith(".seg.nrrd"):
        assert_seg_nrrd(
            written,
            labels_kji,
            small_volume.ijk_to_ras,
            [
                SegmentInfo(1, "Segment_1", default_segment_color(0)),
                SegmentInfo(2, "Segment_2", default_segment_color(1)),
            ],
        )
    else:
        assert_same_voxels_and_place(written, labels_kji, small_volume.ijk_to_ras)


@pytest.mark.parametrize("name", ["labels.png", "labels.txt", "labels", ".nii.gz"])
def test_unknown_extension(tmp_path, small_volume, name):
    labels_kji = np.zeros((3, 4, 5), dtype=np.uint8)
    assert_output_error(
        lambda: write_labelmap(labels_kji, small_volume, tmp_path / name), "cannot tell the format", ".nii.gz"
    )
    assert list(tmp_path.iterdir()) == []


def test_missing_folder(tmp_path, small_volume):
    labels_kji = np.zeros((3, 4, 5), dtype=np.uint8)
    assert_output_error(
        lambda: write_labelmap(labels_kji, small_volume, tmp_path / "absent" / "l.nii.gz"),
        "does not exist",
        "create the folder",
    )


def test_folder_is_a_file(tmp_path, small_volume):
    (tmp_path / "file").write_text("x")
    labels_kji = np.zeros((3, 4, 5), dtype=np.uint8)
    assert_output_error(
        lambda: write_labelmap(labels_kji, small_volume, tmp_path / "file" / "l.nii.gz"),
        "is a file, not a folder",
    )


def test_output_path_is_a_folder(tmp_path, small_volume):
    (tmp_path / "x.nrrd").mkdir()
    labels_kji = np.zeros((3, 4, 5), dtype=np.uint8)
    assert_output_error(lambda: write_labelmap(labels_kji, small_volume, tmp_path / "x.nrrd"), "is a folder")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's read-only folder")
def test_unwritable_folder(small_volume):
    # /proc refuses new files even to root, unlike a chmod-ed folder.
    labels_kji = np.zeros((3, 4, 5), dtype=np.uint8)
    assert_output_error(
        lambda: write_labelmap(labels_kji, small_volume, "/proc/medsegany-labels.nii.gz"),
        "cannot write in /proc",
        "folder you can write to",
    )


def test_unwritable_folder_for_a_user(tmp_path, small_volume):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        labels_kji = np.zeros((3, 4, 5), dtype=np.uint8)
        assert_output_error(
            lambda: write_labelmap(labels_kji, small_volume, folder / "l.nii.gz"), "cannot write"
        )
    finally:
        folder.chmod(0o700)


def test_shape_mismatch(tmp_path, small_volume):
    assert_output_error(
        lambda: write_labelmap(np.zeros((3, 4, 6), dtype=np.uint8), small_volume, tmp_path / "l.nii.gz"),
        "(3, 4, 6) differs from the volume's (3, 4, 5)",
        "grid of the volume",
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("labels_kji", "fragment"),
    [
        (np.full((3, 4, 5), -1, dtype=np.int16), "-1..-1"),
        (np.full((3, 4, 5), 70000, dtype=np.int32), "70000"),
        (np.full((3, 4, 5), 0.5), "non-integer"),
    ],
)
def test_label_values_outside_0_to_65535(tmp_path, small_volume, labels_kji, fragment):
    assert_output_error(lambda: write_labelmap(labels_kji, small_volume, tmp_path / "l.nrrd"), fragment)


@pytest.mark.parametrize(
    ("segments", "fragment"),
    [
        ([SegmentInfo(1, "a", (1, 0, 0)), SegmentInfo(1, "b", (0, 1, 0))], "two segments have label value 1"),
        ([SegmentInfo(0, "background", (1, 0, 0))], "label value 0"),
        ([SegmentInfo(1, "a", (255, 0, 0))], "rgb values in 0..1"),
    ],
)
def test_invalid_segments(tmp_path, small_volume, segments, fragment):
    labels_kji = np.ones((3, 4, 5), dtype=np.uint8)
    assert_output_error(
        lambda: write_labelmap(labels_kji, small_volume, tmp_path / "l.seg.nrrd", segments), fragment
    )
    assert list(tmp_path.iterdir()) == []


def _partial_then_fail(exception: Exception, filename_position: int):
    """A stand-in writer that leaves half a file at its file-name argument, then fails."""

    def write(*args, **kwargs):
        Path(args[filename_position]).write_bytes(b"half a file")
        raise exception

    return write


@pytest.mark.parametrize("suffix", [".nii.gz", ".mhd", ".seg.nrrd"])
def test_a_failed_write_leaves_no_partial_file_and_keeps_the_old_output(
    tmp_path, small_volume, monkeypatch, suffix
):
    import slicerio

    monkeypatch.setattr(sitk(), "WriteImage", _partial_then_fail(RuntimeError("sitk::ERROR: disk full"), 1))
    monkeypatch.setattr(
        slicerio, "write_segmentation", _partial_then_fail(OSError(28, "No space left on device"), 0)
    )
    target = tmp_path / f"labels{suffix}"
    target.write_bytes(b"previous result")
    labels_kji = np.ones((3, 4, 5), dtype=np.uint8)
    assert_output_error(
        lambda: write_labelmap(labels_kji, small_volume, target), "writing", "failed", "disk space"
    )
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


_WRITE_UNDER_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
import numpy as np
from medsegany.errors import OutputError
from medsegany.exporters import write_labelmap
from medsegany.volume import Volume

labels_kji = np.random.default_rng(0).integers(0, 5, size=(40, 100, 100)).astype(np.uint8)
# writes past 50 kB fail as on a full disk (EFBIG instead of ENOSPC; the signal would kill the process)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, resource.RLIM_INFINITY))
try:
    write_labelmap(labels_kji, Volume(np.zeros(labels_kji.shape, np.int16), np.eye(4)), sys.argv[1])
    print("written")
except OutputError as error:
    print(error)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="a file size limit (RLIMIT_FSIZE) is POSIX")
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_nifti_cut_short_by_a_full_disk_is_refused_and_keeps_the_old_output(tmp_path, suffix):
    """ITK's NIfTI writer ignores failed writes: a full disk left a 50 kB .nii of 400 kB (or a cut .nii.gz)
    that replaced the previous output, and the write was reported done."""
    import subprocess

    import medsegany

    target = tmp_path / f"labels{suffix}"
    target.write_bytes(b"previous result")
    env = {**os.environ, "PYTHONPATH": str(Path(medsegany.__file__).parent.parent)}
    child = subprocess.run(
        [sys.executable, "-c", _WRITE_UNDER_A_FILE_SIZE_LIMIT, str(target)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert "came out incomplete" in child.stdout and "disk space" in child.stdout, child.stdout
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
