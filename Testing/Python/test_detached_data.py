"""Detached headers (.nhdr, .mhd) whose data file is missing are refused by name, before SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
from medsegany.detached_data import check_detached_data, detached_data_files
from medsegany.errors import VolumeError
from medsegany.volume import read_volume, read_volume_header

sitk = pytest.importorskip("SimpleITK")


def write(path, voxels_kji=None):
    voxels_kji = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) if voxels_kji is None else voxels_kji
    sitk.WriteImage(sitk.GetImageFromArray(voxels_kji), str(path))
    return path


@pytest.mark.parametrize(
    ("name", "data_name", "key"), [("a.mhd", "a.raw", "ElementDataFile"), ("b.nhdr", "b.raw", "data file")]
)
@pytest.mark.parametrize("reader", [read_volume, read_volume_header])
def test_a_header_without_its_data_file_is_refused_by_name(tmp_path, name, data_name, key, reader):
    header = write(tmp_path / name)
    assert detached_data_files(header) == [tmp_path / data_name]
    (tmp_path / data_name).unlink()
    with pytest.raises(VolumeError) as caught:
        reader(header)
    message = str(caught.value)
    assert f"separate data file, {tmp_path / data_name}, which does not exist" in message
    assert f"copy the data file beside the header, or correct the header's `{key}` line" in message
    assert "NIfTI" not in message


def test_images_whose_voxels_follow_their_header_name_no_data_file(tmp_path):
    for name in ("c.nrrd", "d.mha", "e.nii.gz", "f.nii"):
        path = write(tmp_path / name)
        assert detached_data_files(path) == []
        check_detached_data(path)  # nothing raised
        assert read_volume(path).shape_ijk == (6, 5, 4)


def test_lists_and_patterns_of_data_files_are_all_checked(tmp_path):
    (tmp_path / "s1.raw").write_bytes(bytes(60))
    (tmp_path / "s2.raw").write_bytes(bytes(60))
    nrrd = "NRRD0004\ntype: int16\ndimension: 3\nsizes: 6 5 2\nencoding: raw\nendian: little\n"
    listed = tmp_path / "listed.nhdr"
    listed.write_text(nrrd + "data file: LIST 2\ns1.raw\ns2.raw\n")
    pattern = tmp_path / "pattern.nhdr"
    pattern.write_text(nrrd + "data file: s%d.raw 1 3 1 2\n")  # s3.raw is missing
    meta = tmp_path / "meta.mhd"
    meta.write_text(
        "NDims = 3\nDimSize = 6 5 2\nElementType = MET_SHORT\nElementDataFile = LIST 2D\n"
        f"s1.raw\n{tmp_path / 's2.raw'}\n"
    )
    assert detached_data_files(listed) == [tmp_path / "s1.raw", tmp_path / "s2.raw"]
    assert detached_data_files(meta) == [tmp_path / "s1.raw", tmp_path / "s2.raw"]
    assert detached_data_files(pattern) == [tmp_path / f"s{n}.raw" for n in (1, 2, 3)]
    for header in (listed, meta):  # valid headers: read as before
        assert read_volume(header).shape_ijk == (6, 5, 2)
    with pytest.raises(VolumeError, match=r"s3\.raw, which does not exist"):
        check_detached_data(pattern)


def test_a_header_this_cannot_parse_is_left_to_simpleitk(tmp_path):
    path = tmp_path / "odd.nhdr"
    path.write_text("not a nrrd header\ndata file: missing.raw\n")
    assert detached_data_files(path) == []
