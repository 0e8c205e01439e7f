"""Slicer markups files (.mrk.json) as prompts: the box and points Slicer's own nodes give, read from the
files Slicer's own writer saves (slicer-core), on an oblique, flipped volume; every bad file named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from medsegany.errors import PromptError
from medsegany.markups_file import read_markups_file
from medsegany.prompts import box_ijk_from_corners_ras, point_ijk_from_ras
from medsegany.volume import read_volume

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (Slicer's markups writer)")

from slicer_scene_testing import add_points, add_roi_on_slice  # noqa: E402


def save(scene, node, path, storage_class="vtkMRMLMarkupsJsonStorageNode"):
    """``node`` saved as Slicer's File > Save does (its JSON storage node, LPS coordinates)."""
    storage = getattr(slicer, storage_class)()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    return path


@pytest.fixture
def oblique(oblique_flipped_nrrd):
    return read_volume(oblique_flipped_nrrd[0])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_an_roi_file_gives_the_box_slicers_node_gives(tmp_path, oblique, axis):
    from medsegany.mrml_markups import box_ijk_from_roi

    scene = slicer.vtkMRMLScene()
    low, high = np.array([2.0, 3.0, 1.0]), np.array([9.0, 11.0, 6.0])
    low[axis] = high[axis] = 4.0  # flat on slice 4 of this axis
    roi = add_roi_on_slice(scene, low, high, np.eye(4), world_ijk_to_ras=oblique.ijk_to_ras)
    path = save(scene, roi, tmp_path / "box.mrk.json", "vtkMRMLMarkupsROIJsonStorageNode")
    assert json.loads(path.read_text())["markups"][0]["coordinateSystem"] == "LPS"
    content = read_markups_file(path)
    assert len(content.rois_corners_ras) == 1 and content.points_ras == ()
    box_ijk = box_ijk_from_corners_ras(oblique, content.rois_corners_ras[0], "the ROI")
    expected_box_ijk, expected_axis = box_ijk_from_roi(oblique, roi)
    assert expected_axis == axis
    # the file holds its numbers to about 1e-6 mm
    np.testing.assert_allclose(box_ijk, expected_box_ijk, atol=1e-4)
    np.testing.assert_allclose(box_ijk, (*low, *high), atol=1e-4)


def test_a_point_list_file_gives_the_placed_points_in_ras(tmp_path, oblique):
    scene = slicer.vtkMRMLScene()
    points_ijk = [(3.0, 4.0, 5.0), (7.5, 2.0, 5.0), (1.0, 1.0, 1.0)]
    node = add_points(scene, points_ijk, np.eye(4), "clicks", world_ijk_to_ras=oblique.ijk_to_ras)
    node.UnsetNthControlPointPosition(2)  # skipped: not a click the user made
    content = read_markups_file(save(scene, node, tmp_path / "clicks.mrk.json"))
    got_ijk = [point_ijk_from_ras(oblique, point) for point in content.points_ras]
    np.testing.assert_allclose(got_ijk, points_ijk[:2], atol=1e-6)


def test_a_ras_file_and_one_without_a_coordinate_system_read_as_slicer_reads_them(tmp_path):
    """Slicer reads a file without coordinateSystem as LPS."""
    point = {"position": [1.0, 2.0, 3.0], "positionStatus": "defined"}
    for system, expected in (("RAS", (1.0, 2.0, 3.0)), (None, (-1.0, -2.0, 3.0))):
        markup = {"type": "Fiducial", "controlPoints": [point]}
        if system:
            markup["coordinateSystem"] = system
        path = tmp_path / f"{system}.mrk.json"
        path.write_text(json.dumps({"markups": [markup]}))
        assert read_markups_file(path).points_ras == (expected,)


@pytest.mark.parametrize(
    ("document", "fragments"),
    [
        ("{not json", ["is not valid JSON"]),
        ({"markups": []}, ["holds no markups"]),
        ({"markups": [{"type": "Line", "controlPoints": []}]}, ["is a 'Line' markups", "point list"]),
        (
            {"markups": [{"type": "ROI", "center": [0, 0, 0], "size": [1, 1, 0], "controlPoints": []}]},
            ["(an ROI) has not been placed", "draw the box"],
        ),
        (
            {"markups": [{"type": "Fiducial", "controlPoints": [{"label": "F-1", "position": "x"}]}]},
            ["point 'F-1' position is not 3 numbers"],
        ),
        (
            {"markups": [{"type": "Fiducial", "coordinateSystem": "IJK", "controlPoints": []}]},
            ["coordinate system 'IJK'"],
        ),
    ],
)
def test_a_bad_markups_file_is_named_with_the_fix(tmp_path, document, fragments):
    path = tmp_path / "bad.mrk.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(PromptError) as caught:
        read_markups_file(path)
    assert str(path) in str(caught.value) and caught.value.fix
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_a_missing_markups_file_is_named(tmp_path):
    with pytest.raises(PromptError, match="does not exist"):
        read_markups_file(tmp_path / "absent.mrk.json")


def test_an_roi_thick_across_slices_is_refused_as_a_3d_box(tmp_path, oblique):
    scene = slicer.vtkMRMLScene()
    roi = add_roi_on_slice(scene, (2, 3, 1), (9, 11, 6), np.eye(4), world_ijk_to_ras=oblique.ijk_to_ras)
    content = read_markups_file(
        save(scene, roi, tmp_path / "cube.mrk.json", "vtkMRMLMarkupsROIJsonStorageNode")
    )
    with pytest.raises(PromptError, match="is a 3D box, not a rectangle on one slice"):
        box_ijk_from_corners_ras(oblique, content.rois_corners_ras[0], "the ROI")


def test_a_point_list_with_no_placed_point_is_no_prompt(tmp_path):
    """The panel's negative list is often empty when saved; with other prompts that is no error."""
    path = tmp_path / "MedSegAny -.mrk.json"
    path.write_text(json.dumps({"markups": [{"type": "Fiducial", "controlPoints": []}]}))
    content = read_markups_file(path)
    assert content.points_ras == () and content.rois_corners_ras == ()
