"""read_volume: LPS files land in RAS exactly, DICOM series are sorted, and every unusable input is refused
with a one-line VolumeError naming the problem and the fix."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from medsegany.errors import VolumeError
from medsegany.geometry import LPS_TO_RAS
from medsegany.volume import Volume, read_volume, read_volume_header, volume_to_sitk

LPS_TO_RAS_DIAG = np.diag([-1.0, -1.0, 1.0, 1.0])


def sitk():
    import SimpleITK

    return SimpleITK


def write_image(path: Path, array: np.ndarray, is_vector: bool = False) -> Path:
    sitk().WriteImage(sitk().GetImageFromArray(array, isVector=is_vector), str(path))
    return path


def assert_volume_error(path, *fragments: str, frame: int | None = None) -> VolumeError:
    """read_volume refuses ``path`` with a one-line VolumeError holding every fragment (any case)."""
    with pytest.raises(VolumeError) as caught:
        read_volume(path, frame=frame)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    assert caught.value.problem and caught.value.fix, "an error must name the problem and the fix"
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"
    with pytest.raises(VolumeError) as from_header:  # --estimate's header-only read refuses it alike
        read_volume_header(path, frame=frame)
    assert str(from_header.value) == message
    return caught.value


# -- geometry ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_read_volume_converts_an_oblique_flipped_lps_file_to_ras(
    tmp_path, oblique_flipped_geometry, make_labelled_phantom, suffix
):
    image_kji, _ = make_labelled_phantom()
    image = sitk().GetImageFromArray(image_kji)
    oblique_flipped_geometry.apply_to(image)
    path = tmp_path / f"scan{suffix}"
    sitk().WriteImage(image, str(path))

    volume = read_volume(path)

    # NIfTI stores its matrix as float32 (1e-7 relative): 1e-4 mm is far below any voxel.
    np.testing.assert_allclose(
        volume.ijk_to_ras, LPS_TO_RAS_DIAG @ oblique_flipped_geometry.ijk_to_lps, atol=1e-4
    )
    np.testing.assert_array_equal(volume.voxels_kji, image_kji)
    assert volume.name == "scan"
    assert np.linalg.det(volume.ijk_to_ras[:3, :3]) < 0  # flipped stays flipped: no silent reorientation


@settings(max_examples=15, deadline=None)
@given(
    spacing=st.tuples(*[st.floats(0.1, 8.0)] * 3),
    origin=st.tuples(*[st.floats(-400.0, 400.0)] * 3),
    angles=st.tuples(*[st.floats(-np.pi, np.pi)] * 3),
    flip=st.booleans(),
)
def test_read_volume_of_a_random_lps_geometry_is_lps_to_ras_times_ijk_to_lps(spacing, origin, angles, flip):
    from scipy.spatial.transform import Rotation

    direction = Rotation.from_euler("xyz", angles).as_matrix() @ np.diag([1.0, -1.0 if flip else 1.0, 1.0])
    image = sitk().Image(3, 4, 2, sitk().sitkInt16)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.ravel()))
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction @ np.diag(spacing)
    ijk_to_lps[:3, 3] = origin
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.mha"
        sitk().WriteImage(image, str(path))
        volume = read_volume(path)
    np.testing.assert_allclose(volume.ijk_to_ras, LPS_TO_RAS_DIAG @ ijk_to_lps, atol=1e-9)


def test_volume_to_sitk_restores_the_lps_geometry(oblique_flipped_geometry, make_labelled_phantom):
    image_kji, _ = make_labelled_phantom()
    volume = Volume(image_kji, LPS_TO_RAS @ oblique_flipped_geometry.ijk_to_lps, name="phantom")
    image = volume_to_sitk(volume)
    np.testing.assert_allclose(image.GetSpacing(), oblique_flipped_geometry.spacing_ijk, atol=1e-12)
    np.testing.assert_allclose(image.GetOrigin(), oblique_flipped_geometry.origin_lps, atol=1e-12)
    np.testing.assert_allclose(
        np.reshape(image.GetDirection(), (3, 3)), oblique_flipped_geometry.direction_lps, atol=1e-12
    )
    np.testing.assert_array_equal(sitk().GetArrayFromImage(image), image_kji)
    # One voxel centre through ITK and through the volume: the same place (RAS = LPS with x, y negated).
    point_lps = np.array(image.TransformIndexToPhysicalPoint((3, 2, 1)))
    np.testing.assert_allclose(
        volume.ijk_to_ras_points(np.array([3, 2, 1])), point_lps * [-1, -1, 1], atol=1e-9
    )


def test_volume_properties_follow_the_matrix():
    matrix = np.diag([-0.5, -2.0, 4.0, 1.0])
    volume = Volume(np.zeros((3, 4, 5), dtype=np.int16), matrix)
    assert volume.shape_ijk == (5, 4, 3)
    np.testing.assert_allclose(volume.spacing_ijk, (0.5, 2.0, 4.0))
    assert volume.voxel_volume_ml == pytest.approx(0.004)
    np.testing.assert_allclose(
        volume.ras_to_ijk_points(volume.ijk_to_ras_points(np.array([[1, 2, 3]]))), [[1, 2, 3]]
    )
    labels = volume.with_voxels(np.ones((3, 4, 5), dtype=np.uint8), name="labels")
    assert labels.name == "labels" and np.array_equal(labels.ijk_to_ras, matrix)
    with pytest.raises(ValueError):
        volume.with_voxels(np.ones((3, 4, 6), dtype=np.uint8))
    with pytest.raises(VolumeError, match="2 dimensions"):
        Volume(np.zeros((4, 5)), np.eye(4))
    with pytest.raises(VolumeError, match="invalid IJK->RAS"):
        Volume(np.zeros((3, 4, 5)), np.diag([1.0, 0.0, 1.0, 1.0]))


# -- DICOM -----------------------------------------------------------------------------------------------
def test_read_volume_of_a_shuffled_oblique_dicom_series(dicom_series):
    folder, image_kji, _, geometry = dicom_series
    volume = read_volume(folder)
    np.testing.assert_array_equal(volume.voxels_kji, image_kji)  # sorted by position, not by file name
    np.testing.assert_allclose(volume.ijk_to_ras, LPS_TO_RAS_DIAG @ geometry.ijk_to_lps, atol=1e-4)
    assert volume.metadata["dicom_series_count"] == 1
    assert volume.name == "dicom"


def test_a_dicom_series_with_a_missing_slice_is_refused(
    tmp_path, make_labelled_phantom, make_dicom_series, oblique_right_handed_geometry
):
    """ITK spreads the slices evenly between the first and the last: with one missing, the volume was
    read stretched (spacing 2.5 * 6/5 instead of 2.5) and every slice after the gap misplaced."""
    image_kji, _ = make_labelled_phantom(shape_kji=(7, 6, 5))
    folder = make_dicom_series(tmp_path / "gap", image_kji, oblique_right_handed_geometry, shuffle=False)
    (folder / "IM0003.dcm").unlink()  # unshuffled: file k holds slice k
    assert_volume_error(folder, "unevenly spaced slices", "missing slice", "complete series")


def test_a_localizer_filed_in_a_dicom_series_is_named(
    tmp_path, make_labelled_phantom, make_dicom_series, oblique_right_handed_geometry
):
    """A scout slice of another orientation in the series was stacked among the axial slices; the
    refusal said "unevenly spaced slices (a missing slice?)"."""
    from conftest import ItkGeometry

    image_kji, _ = make_labelled_phantom(shape_kji=(5, 6, 7))
    folder = make_dicom_series(tmp_path / "series", image_kji, oblique_right_handed_geometry)
    direction = oblique_right_handed_geometry.direction_lps[:, [0, 2, 1]] * [1, 1, -1]  # a coronal-like view
    scout = ItkGeometry((0.9, 0.7, 2.5), (100.0, -20.0, 60.0), direction)
    scout_folder = make_dicom_series(tmp_path / "scout", image_kji[:1], scout)
    import SimpleITK as sitk

    series_uid = sitk.ReadImage(str(folder / "IM0000.dcm")).GetMetaData("0020|000e").strip()
    scout_slice = sitk.ReadImage(str(scout_folder / "IM0000.dcm"))
    scout_slice.SetMetaData("0020|000e", series_uid)  # filed in the series: the same Series UID
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "SCOUT.dcm"))
    writer.Execute(scout_slice)
    assert_volume_error(folder, "mixes slices of 2 orientations", "localizer", "out of the folder")


def test_a_gantry_tilted_dicom_series_keeps_its_slices_positions(
    tmp_path, make_labelled_phantom, make_dicom_series, oblique_right_handed_geometry
):
    """Each slice's position is shifted along its rows as the table moves (a 20-degree tilt): ITK put the
    slices on the normal, |step| apart, 6.5 mm off at the last of 8 slices; the sheared grid is exact."""
    from conftest import ItkGeometry

    direction = oblique_right_handed_geometry.direction_lps.copy()
    step = direction[:, 2] * 2.5 + direction[:, 1] * 2.5 * np.tan(np.deg2rad(20.0))
    direction[:, 2] = step / np.linalg.norm(step)  # the K axis leans towards J: a sheared grid
    tilted = ItkGeometry((0.9, 0.7, float(np.linalg.norm(step))), (120.0, -35.5, 48.0), direction)
    image_kji, _ = make_labelled_phantom(shape_kji=(8, 6, 5))
    volume = read_volume(make_dicom_series(tmp_path / "tilted", image_kji, tilted))
    np.testing.assert_allclose(volume.ijk_to_ras, LPS_TO_RAS_DIAG @ tilted.ijk_to_lps, atol=1e-4)
    np.testing.assert_array_equal(volume.voxels_kji, image_kji)


def test_a_dicom_series_rescaled_slice_by_slice_keeps_every_slices_values(tmp_path):
    """A PET series has its own Rescale Slope/Intercept on each slice: ITK took the first slice's voxel
    type (int16 for a slope of 1), truncating the others' fractions and wrapping what fell outside."""
    import SimpleITK as sitk

    slopes, intercepts = (1.0, 0.5, 2.5, 0.25), (0.0, 0.0, -50.5, -1000.0)
    stored = np.arange(4 * 5 * 6).reshape(4, 5, 6) * 7 + 101
    values_kji = (stored * np.array(slopes)[:, None, None] + np.array(intercepts)[:, None, None]).astype(
        np.float32
    )
    folder = tmp_path / "pet"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # one series: ours, not a fresh UID per file
    for k, (slope, intercept) in enumerate(zip(slopes, intercepts, strict=True)):
        slice_image = sitk.GetImageFromArray(values_kji[k])
        slice_image.SetSpacing((0.8, 0.8))  # the writer's Pixel Spacing
        tags = {
            "0008|0060": "PT",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.77.1",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0032": f"-20\\-30\\{40 + 3 * k}",
            "0020|0013": str(k + 1),
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.77.1.{k + 1}",
            # 16-bit signed storage: the writer stores (value - intercept) / slope
            **{"0028|0100": "16", "0028|0101": "16", "0028|0102": "15", "0028|0103": "1"},
            **{"0028|1053": str(slope), "0028|1052": str(intercept)},
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k}.dcm"))
        writer.Execute(slice_image)

    volume = read_volume(folder)
    np.testing.assert_array_equal(volume.voxels_kji, values_kji)
    np.testing.assert_allclose(volume.spacing_ijk, (0.8, 0.8, 3.0), atol=1e-6)


def test_a_folder_holding_one_multi_frame_dicom_file_is_read_as_its_volume(tmp_path):
    """The series reader stacked the file's 3D image as a 4D image of one frame ("4D with 1 frames,
    choose --frame 0..0")."""
    import SimpleITK as sitk

    voxels_kji = (np.arange(4 * 6 * 5).reshape(4, 6, 5) * 5).astype(np.uint16)
    image = sitk.GetImageFromArray(voxels_kji)
    image.SetSpacing((0.9, 0.7, 3.0))
    image.SetOrigin((-10.0, -20.0, 100.0))
    folder = tmp_path / "enhanced"
    folder.mkdir()
    sitk.WriteImage(image, str(folder / "multiframe.dcm"))  # GDCM writes a 3D image as one multi-frame file

    volume = read_volume(folder)
    np.testing.assert_array_equal(volume.voxels_kji, voxels_kji)
    np.testing.assert_allclose(volume.ijk_to_ras, read_volume(folder / "multiframe.dcm").ijk_to_ras)
    np.testing.assert_allclose(volume.ijk_to_ras @ [1, 1, 1, 1], [10 - 0.9, 20 - 0.7, 103, 1], atol=1e-6)


def test_reading_a_dicom_series_keeps_itks_warning_display_as_it_was(tmp_path, dicom_series):
    """The reader hides ITK's warnings while it reads, then switched the process-wide display on whatever
    it was before (a caller that had turned it off got ITK's warnings back)."""
    import SimpleITK as sitk

    (tmp_path / "empty").mkdir()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        read_volume(dicom_series[0])
        assert not sitk.ProcessObject.GetGlobalWarningDisplay()
        with pytest.raises(VolumeError):
            read_volume(tmp_path / "empty")
        assert not sitk.ProcessObject.GetGlobalWarningDisplay()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(True)
    read_volume(dicom_series[0])
    assert sitk.ProcessObject.GetGlobalWarningDisplay()


def test_a_folder_without_dicom_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert_volume_error(tmp_path, "without a dicom series", "dicom series folder")


def test_a_single_file_dicom_series_is_refused_as_a_single_slice(
    tmp_path, make_labelled_phantom, make_dicom_series, oblique_right_handed_geometry
):
    image_kji, _ = make_labelled_phantom(shape_kji=(1, 6, 7))
    folder = make_dicom_series(tmp_path / "one_slice", image_kji, oblique_right_handed_geometry)
    assert_volume_error(folder, "single slice", "several slices")


def test_one_file_of_a_dicom_series_is_refused_with_its_folder_as_the_fix(
    tmp_path, make_labelled_phantom, make_dicom_series, oblique_right_handed_geometry
):
    """The fix said "give a 3D volume with several slices", not that a series is read from its folder."""
    image_kji, _ = make_labelled_phantom(shape_kji=(4, 6, 7))
    folder = make_dicom_series(tmp_path / "series", image_kji, oblique_right_handed_geometry)
    fix = f"the folder of its series ({folder})"
    assert_volume_error(folder / "IM0000.dcm", "is a single DICOM slice", fix)


ARTERIAL_UID = "1.2.826.0.1.3680043.2.1125.77.1"
VENOUS_UID = "1.2.826.0.1.3680043.2.1125.77.2"


@pytest.fixture
def two_series_folder(tmp_path, make_labelled_phantom, make_dicom_series, oblique_right_handed_geometry):
    """One folder, two series of one patient: 'venous' (6 slices) and 'arterial' (4 slices)."""
    image_kji, _ = make_labelled_phantom(shape_kji=(6, 8, 10), seed=4)
    folder = tmp_path / "study"
    make_dicom_series(
        folder,
        image_kji,
        oblique_right_handed_geometry,
        series_uid=VENOUS_UID,
        description="venous",
        file_prefix="V",
    )
    make_dicom_series(
        folder,
        image_kji[:4] + 100,
        oblique_right_handed_geometry,
        series_uid=ARTERIAL_UID,
        description="arterial",
        file_prefix="A",
    )
    return folder, image_kji


def test_a_folder_of_two_series_reads_the_largest_and_names_the_other(two_series_folder):
    folder, image_kji = two_series_folder
    volume = read_volume(folder)
    np.testing.assert_array_equal(volume.voxels_kji, image_kji)
    assert volume.metadata["dicom_series_uid"] == VENOUS_UID and volume.metadata["dicom_series_count"] == 2
    assert volume.metadata["dicom_other_series"] == [f"{ARTERIAL_UID} (4 files, 'arterial')"]
    assert volume.metadata["dicom_series_chosen"] is False


def test_of_two_series_of_one_size_the_one_read_before_series_could_be_chosen_is_read(
    tmp_path, make_labelled_phantom, make_dicom_series, oblique_right_handed_geometry
):
    """Two phases of a CT have the same slice count: without --series, the folder still gives the series
    it gave before the choice existed (ITK's last of the largest), not another one."""
    image_kji, _ = make_labelled_phantom(shape_kji=(4, 8, 10), seed=4)
    folder = tmp_path / "study"
    for uid, prefix, offset in ((ARTERIAL_UID, "A", 100), (VENOUS_UID, "V", 0)):
        make_dicom_series(
            folder, image_kji + offset, oblique_right_handed_geometry, series_uid=uid, file_prefix=prefix
        )
    itk_order = list(sitk().ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    assert sorted(itk_order) == sorted([ARTERIAL_UID, VENOUS_UID])
    volume = read_volume(folder)
    assert volume.metadata["dicom_series_uid"] == itk_order[-1]
    assert volume.metadata["dicom_other_series"] == [f"{itk_order[0]} (4 files, 'MedSegAny test series')"]


@pytest.mark.parametrize("choice", [ARTERIAL_UID, "77.1", f" {ARTERIAL_UID} "])
def test_a_series_of_a_folder_is_chosen_by_its_uid_or_a_unique_part_of_it(two_series_folder, choice):
    folder, image_kji = two_series_folder
    for read in (read_volume, read_volume_header):
        volume = read(folder, series=choice)
        assert volume.metadata["dicom_series_uid"] == ARTERIAL_UID and volume.shape_ijk == (10, 8, 4)
        assert volume.metadata["dicom_other_series"] == [f"{VENOUS_UID} (6 files, 'venous')"]
    np.testing.assert_array_equal(read_volume(folder, series=choice).voxels_kji, image_kji[:4] + 100)


@pytest.mark.parametrize(
    ("choice", "fragments"),
    [
        (
            "9.9.9",
            [
                "no DICOM series in",
                "has the UID '9.9.9'",
                f"{VENOUS_UID} (6 files, 'venous')",
                "give one of these UIDs",
            ],
        ),
        ("77.", ["'77.' is part of the UID of 2 DICOM series", "give more of the UID to --series"]),
    ],
)
def test_a_series_choice_matching_none_or_several_is_refused_with_the_list(
    two_series_folder, choice, fragments
):
    with pytest.raises(VolumeError) as caught:
        read_volume(two_series_folder[0], series=choice)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_a_series_choice_on_a_file_is_refused(tmp_path, oblique_flipped_nrrd):
    for read in (read_volume, read_volume_header):
        with pytest.raises(VolumeError, match=r"is a file, not a DICOM folder.*drop --series"):
            read(oblique_flipped_nrrd[0], series="1.2")


# -- refusals ------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    assert_volume_error(tmp_path / "absent.nii.gz", "does not exist", "check the path")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.touch()
    assert_volume_error(path, "empty (0 bytes)")


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("patient notes, not an image\n" * 3)
    assert_volume_error(path, "not an image", "NIfTI")


def test_corrupt_nifti(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00 truncated")
    assert_volume_error(path, "not an image simpleitk can read")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_truncated_nifti_is_refused(tmp_path, suffix):
    """ITK's NIfTI reader filled the voxels missing from a file cut short with zeros, silently."""
    voxels_kji = np.arange(40 * 50 * 60, dtype=np.int16).reshape(40, 50, 60)
    whole = write_image(tmp_path / f"whole{suffix}", voxels_kji)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert_volume_error(cut, "is truncated", "of the 240352 bytes its header declares", "again")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_nifti_2_file_is_named_as_such(tmp_path, suffix):
    """SimpleITK cannot read NIfTI-2: its "Unable to determine ImageIO reader" read as a broken file."""
    nibabel = pytest.importorskip("nibabel")
    path = tmp_path / f"two{suffix}"
    nibabel.save(nibabel.Nifti2Image(np.zeros((6, 5, 4), dtype=np.int16), np.eye(4)), str(path))
    assert_volume_error(path, "is a NIfTI-2 file", "save it as NIfTI-1 or NRRD")
    with pytest.raises(VolumeError, match="NIfTI-2"):
        read_volume_header(path)


@pytest.mark.parametrize("vox_offset", [float("nan"), float("inf")])
def test_a_nifti_with_a_damaged_vox_offset_is_left_to_simpleitk(tmp_path, vox_offset):
    """The size check turned a NaN or infinite vox_offset (which SimpleITK reads past) into a traceback
    (ValueError / OverflowError from int()) instead of reading the file or a one-line error."""
    import contextlib
    import struct

    voxels_kji = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    data = bytearray(write_image(tmp_path / "plain.nii", voxels_kji).read_bytes())
    data[108:112] = struct.pack("<f", vox_offset)
    path = tmp_path / "damaged.nii"
    path.write_bytes(bytes(data))
    assert read_volume_header(path).shape_ijk == (6, 5, 4)
    with contextlib.suppress(VolumeError):  # a one-line refusal is fine too; a traceback is not
        read_volume(path)


def test_a_nifti_whose_bitpix_disagrees_with_its_datatype_is_read(tmp_path):
    """ITK sizes the voxels by the datatype code; the size check used bitpix, so an int16 file whose
    bitpix said 32 was refused as "truncated" although SimpleITK reads it whole."""
    import struct

    voxels_kji = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    data = bytearray(write_image(tmp_path / "plain.nii", voxels_kji).read_bytes())
    data[72:74] = struct.pack("<h", 32)
    path = tmp_path / "bitpix.nii"
    path.write_bytes(bytes(data))
    np.testing.assert_array_equal(read_volume(path).voxels_kji, voxels_kji)


def test_a_nifti_of_several_gzip_members_is_read_whole(tmp_path):
    """Its last member's size trailer is not the file's size: the inflated bytes are counted instead."""
    import gzip

    voxels_kji = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    data = write_image(tmp_path / "plain.nii", voxels_kji).read_bytes()
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(data[:300]) + gzip.compress(data[300:]))
    np.testing.assert_array_equal(read_volume(path).voxels_kji, voxels_kji)


def test_a_volume_too_large_for_memory_is_refused_as_such(tmp_path):
    """ITK's failed allocation was told as an unreadable format, with "give a NIfTI, NRRD..." as fix."""
    header = "NRRD0004\ntype: int16\ndimension: 3\nsizes: 20000 20000 20000\nencoding: raw\n"
    (tmp_path / "huge.nhdr").write_text(header + "endian: little\ndata file: huge.raw\n\n")
    (tmp_path / "huge.raw").write_bytes(bytes(1000))
    with pytest.raises(VolumeError) as caught:  # 16 TB: more than any machine's memory
        read_volume(tmp_path / "huge.nhdr")
    assert "too large to read into the memory" in str(caught.value)
    assert "free memory, or crop or downsample" in str(caught.value) and "NIfTI" not in str(caught.value)


def test_2d_png(tmp_path):
    path = write_image(tmp_path / "slice.png", np.zeros((6, 7), dtype=np.uint8))
    assert_volume_error(path, "2D image", "3D volume")


def test_2d_nifti(tmp_path):
    path = write_image(tmp_path / "slice.nii.gz", np.zeros((6, 7), dtype=np.int16))
    assert_volume_error(path, "2D image", "3D volume")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_single_slice_volume(tmp_path, suffix):
    path = write_image(tmp_path / f"one{suffix}", np.zeros((1, 6, 7), dtype=np.int16))
    assert_volume_error(path, "single slice", "several slices")


def test_rgb_png(tmp_path):
    path = write_image(tmp_path / "photo.png", np.zeros((6, 7, 3), dtype=np.uint8), is_vector=True)
    assert_volume_error(path, "3 components", "scalar")


def test_rgb_volume(tmp_path):
    path = write_image(tmp_path / "colour.nrrd", np.zeros((3, 6, 7, 3), dtype=np.uint8), is_vector=True)
    assert_volume_error(path, "3 components", "scalar")


@pytest.fixture
def nifti_4d(tmp_path) -> Path:
    """A 4D NIfTI with 3 frames; frame t holds the value 10 * t + k in slice k."""
    frames = [
        sitk().GetImageFromArray(10 * t + np.arange(4)[:, None, None] + np.zeros((4, 5, 6), np.int16))
        for t in range(3)
    ]
    for frame in frames:
        frame.SetSpacing((0.5, 0.75, 2.0))
    path = tmp_path / "dynamic.nii.gz"
    sitk().WriteImage(sitk().JoinSeries(frames), str(path))
    return path


def test_4d_nifti_without_frame_names_the_frame_count(nifti_4d):
    assert_volume_error(nifti_4d, "4D with 3 frames", "--frame", "0..2")


def test_4d_nifti_with_frame_reads_that_frame(nifti_4d):
    volume = read_volume(nifti_4d, frame=2)
    assert volume.voxels_kji.shape == (4, 5, 6)
    np.testing.assert_array_equal(volume.voxels_kji[:, 0, 0], [20, 21, 22, 23])
    np.testing.assert_allclose(volume.spacing_ijk, (0.5, 0.75, 2.0), atol=1e-6)
    assert volume.metadata["frame"] == 2


def test_4d_nifti_with_a_frame_outside_the_range(nifti_4d):
    assert_volume_error(nifti_4d, "frame 3 is outside 0..2", frame=3)


def test_frame_given_for_a_3d_volume(tmp_path):
    path = write_image(tmp_path / "ct.nrrd", np.zeros((3, 4, 5), dtype=np.int16))
    assert_volume_error(path, "--frame 2", "drop --frame", frame=2)


def test_the_voxels_stay_in_the_images_memory_and_outlive_the_reader(tmp_path):
    """No copy of the voxels is made, and the image they live in is kept alive by the array."""
    import gc

    import SimpleITK as sitk

    voxels_kji = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) * 7
    path = tmp_path / "ramp.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(voxels_kji), str(path))
    volume = read_volume(path)
    gc.collect()  # the reader's locals are gone; only the array holds the image
    garbage = [np.full((64, 64, 64), -1, np.int16) for _ in range(8)]  # reuse any memory freed too early
    np.testing.assert_array_equal(volume.voxels_kji, voxels_kji)
    assert not volume.voxels_kji.flags.writeable  # read-only: a Volume's arrays are never written
    assert volume.voxels_kji.flags.c_contiguous and len(garbage) == 8
    with pytest.raises(ValueError):
        volume.voxels_kji[0, 0, 0] = 1


@pytest.mark.parametrize(
    ("suffix", "dtype"), [(".nrrd", np.int16), (".nii.gz", np.uint8), (".mha", np.float32)]
)
def test_a_header_gives_the_volume_a_read_gives_without_its_voxels(
    tmp_path, oblique_flipped_geometry, suffix, dtype
):
    image = sitk().GetImageFromArray(np.arange(5 * 6 * 7).reshape(5, 6, 7).astype(dtype))
    oblique_flipped_geometry.apply_to(image)
    path = tmp_path / f"scan{suffix}"
    sitk().WriteImage(image, str(path))
    read, header = read_volume(path), read_volume_header(path)
    np.testing.assert_array_equal(header.ijk_to_ras, read.ijk_to_ras)
    assert (
        header.voxels_kji.shape == read.voxels_kji.shape and header.voxels_kji.dtype == read.voxels_kji.dtype
    )
    assert header.voxels_kji.nbytes == read.voxels_kji.nbytes and header.name == read.name == "scan"
    assert not header.voxels_kji.any() and header.voxels_kji.strides == (0, 0, 0)  # no memory behind it
    assert header.metadata["header_only"] is True


def test_a_4d_header_gives_the_frames_geometry(nifti_4d):
    read, header = read_volume(nifti_4d, frame=1), read_volume_header(nifti_4d, frame=1)
    np.testing.assert_array_equal(header.ijk_to_ras, read.ijk_to_ras)
    assert header.voxels_kji.shape == read.voxels_kji.shape == (4, 5, 6)
    assert header.metadata["frame"] == read.metadata["frame"] == 1


def test_a_complex_image_is_refused_as_its_header_is(tmp_path):
    """Before, the voxels' imaginary part was dropped with a ComplexWarning, where ``--estimate`` (the
    header alone) refused the file."""
    voxels = (np.arange(4 * 5 * 6).reshape(4, 5, 6) + 1j).astype(np.complex64)
    assert_volume_error(write_image(tmp_path / "complex.nii.gz", voxels), "2 components", "magnitude")
