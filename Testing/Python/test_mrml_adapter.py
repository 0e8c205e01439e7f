"""MRML adapter tests with the real MRML classes of the ``slicer-core`` wheel (headless, no Qt).

The volume's IJK->RAS is oblique and flipped and it sits under a linear transform, so any mix-up of
IJK/KJI order, node vs world coordinates or LPS/RAS shows up as a wrong box, point or voxel. Expected
values are computed here from the numpy matrices the scene was built from; segment contents are
checked against Slicer's own exporter (``ExportSegmentsToLabelmapNode``) and ``slicerio``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import slicer_scene_testing as scene_kit
from slicer_scene_testing import (
    add_segmentation,
    affine,
    linear_transform_node,
    mrml_scene,
    require_mrml,
    rotation,
    vtk_matrix,
)

slicer = require_mrml()

from medsegany.errors import OutputError, PromptError, VolumeError  # noqa: E402
from medsegany.mrml_adapter import (  # noqa: E402
    EditMasking,
    SegmentWriter,
    create_segment,
    edit_masking_from_editor_node,
    prompts_from_markups,
    restore_segment,
    segment_mask_kji,
    segment_terminology,
    snapshot_segment,
    volume_from_node,
)
from medsegany.mrml_masking import source_values_kji  # noqa: E402
from medsegany.terminology import TerminologyError, lookup, terminology_entry_string  # noqa: E402
from vtkmodules.util import numpy_support  # noqa: E402

# A smaller scene than the logic tests' (slicer_scene_testing's defaults), with its own oblique geometry.
SHAPE_KJI = (8, 10, 12)  # K, J, I
SPACING_IJK = np.array([0.8, 1.1, 2.0])
#: Node IJK->RAS: rotated 30 degrees about S and 10 about A, I axis flipped, anisotropic spacing.
NODE_IJK_TO_RAS = affine(
    rotation("z", 30) @ rotation("y", 10) @ np.diag([-1.0, 1, 1]) @ np.diag(SPACING_IJK), [12, -40, 25]
)
#: Parent transform of the volume (node -> world): 20 degrees about R plus a shift.
VOLUME_PARENT = affine(rotation("x", 20), [5, -3, 7])
WORLD_IJK_TO_RAS = VOLUME_PARENT @ NODE_IJK_TO_RAS

# slicer_scene_testing's helpers on this module's geometry.
_fill = partial(scene_kit.fill_segment, ijk_to_segmentation=WORLD_IJK_TO_RAS)
_roi_on_slice = partial(scene_kit.add_roi_on_slice, world_ijk_to_ras=WORLD_IJK_TO_RAS)
_points = partial(scene_kit.add_points, world_ijk_to_ras=WORLD_IJK_TO_RAS)


@pytest.fixture()
def scene():
    with mrml_scene() as mrml:
        yield mrml


@pytest.fixture()
def voxels_kji() -> np.ndarray:
    return np.random.default_rng(7).integers(-100, 400, size=SHAPE_KJI).astype(np.int16)


@pytest.fixture()
def volume_node(scene, voxels_kji):
    return scene_kit.add_volume_node(scene, voxels_kji, NODE_IJK_TO_RAS, VOLUME_PARENT)


def _exported_kji(scene, segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """The segment on the volume's grid as Slicer's own exporter computes it (independent oracle)."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.ExportSegmentsToLabelmapNode(
        segmentation_node,
        [segment_id],
        labelmap,
        volume_node,
        slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
    )
    dimensions = labelmap.GetImageData().GetDimensions()
    assert dimensions == (SHAPE_KJI[2], SHAPE_KJI[1], SHAPE_KJI[0])
    values = numpy_support.vtk_to_numpy(labelmap.GetImageData().GetPointData().GetScalars())
    scene.RemoveNode(labelmap)
    return values.reshape(SHAPE_KJI) > 0


def _blob_kji(seed: int, fill: float = 0.3) -> np.ndarray:
    return np.random.default_rng(seed).random(SHAPE_KJI) < fill


# ------------------------------------------------------------------------------------------------ volumes


def test_volume_from_node_has_voxels_and_world_geometry(volume_node, voxels_kji):
    volume = volume_from_node(volume_node)
    np.testing.assert_array_equal(volume.voxels_kji, voxels_kji)
    np.testing.assert_allclose(volume.ijk_to_ras, WORLD_IJK_TO_RAS, atol=1e-9)
    np.testing.assert_allclose(volume.spacing_ijk, SPACING_IJK)
    assert volume.name == "CT"
    # A private copy: changing it must not change the node.
    volume.voxels_kji[0, 0, 0] += 1
    assert volume_from_node(volume_node).voxels_kji[0, 0, 0] == voxels_kji[0, 0, 0]


def test_non_linear_parent_transform_is_refused(scene, volume_node):
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonTransforms import vtkThinPlateSplineTransform

    source, target = vtkPoints(), vtkPoints()
    for point in ((0, 0, 0), (50, 0, 0), (0, 50, 0), (0, 0, 50)):
        source.InsertNextPoint(point)
        target.InsertNextPoint(point[0] + 3, point[1], point[2] + point[0] * 0.1)
    warp = vtkThinPlateSplineTransform()
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    warp.SetBasisToR()
    warp_node = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    warp_node.SetAndObserveTransformToParent(warp)
    volume_node.SetAndObserveTransformNodeID(warp_node.GetID())
    with pytest.raises(VolumeError, match="non-linear transform 'warp'"):
        volume_from_node(volume_node)


# ------------------------------------------------------------------------------------------------ markups


def test_roi_and_point_lists_give_ijk_box_and_labelled_points(scene, volume_node):
    volume = volume_from_node(volume_node)
    roi_parent = affine(rotation("y", -15), [1, 2, 3])
    roi = _roi_on_slice(scene, (2, 3, 5), (9, 7, 5), roi_parent)
    positive_ijk = [(4.2, 5.1, 5.0), (6.0, 4.0, 5.2)]
    negative_ijk = [(8.5, 6.0, 4.9)]
    positive = _points(scene, positive_ijk, affine(rotation("z", 40), [0, 9, -2]), "positive")
    negative = _points(scene, negative_ijk, np.eye(4), "negative")

    prompts = prompts_from_markups(volume, roi, positive, negative)

    assert prompts.axis == 2
    np.testing.assert_allclose(prompts.box_ijk, (2, 3, 5, 9, 7, 5), atol=1e-6)
    np.testing.assert_allclose(prompts.points_ijk, positive_ijk + negative_ijk, atol=1e-6)
    assert prompts.point_labels == (1, 1, 0)
    slice_prompts = prompts.to_slice_prompts(volume)
    assert (slice_prompts.axis, slice_prompts.slice_index) == (2, 5)
    np.testing.assert_allclose(slice_prompts.box_frame_xyxy(), [2, 3, 9, 7], atol=1e-6)


def test_roi_flat_along_i_gives_box_on_an_i_slice(scene, volume_node):
    volume = volume_from_node(volume_node)
    roi = _roi_on_slice(scene, (6, 1, 2), (6, 8, 6), np.eye(4))
    prompts = prompts_from_markups(volume, roi)
    assert prompts.axis == 0
    np.testing.assert_allclose(prompts.box_ijk, (6, 1, 2, 6, 8, 6), atol=1e-6)
    assert prompts.points_ijk == () and prompts.point_labels == ()


def test_a_3d_roi_is_refused(scene, volume_node):
    volume = volume_from_node(volume_node)
    roi = _roi_on_slice(scene, (2, 3, 4), (9, 7, 6), np.eye(4))
    with pytest.raises(PromptError, match="3D box"):
        prompts_from_markups(volume, roi)


# ------------------------------------------------------------------------------------------------ writes


def _frames(mask_kji: np.ndarray, axis: int, indices):
    return {s: np.take(mask_kji, s, axis=2 - axis) for s in indices}


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_written_slices_read_back_and_other_segment_is_untouched(scene, volume_node, axis):
    segmentation, (target, other) = add_segmentation(scene, volume_node)
    other_kji = _blob_kji(1)
    _fill(segmentation, other, other_kji)
    result_kji = _blob_kji(2, fill=0.5)
    written = range(1, SHAPE_KJI[2 - axis] - 1)

    writer = SegmentWriter(segmentation, target, volume_node)  # default: overwrite none
    for index, frame in _frames(result_kji, axis, written).items():
        writer.write_slice(axis, index, frame)

    expected_kji = np.zeros(SHAPE_KJI, dtype=bool)
    for index in written:
        expected_kji[(slice(None),) * (2 - axis) + (index,)] = np.take(result_kji, index, axis=2 - axis)
    got_kji = segment_mask_kji(segmentation, target, volume_node)
    np.testing.assert_array_equal(got_kji, expected_kji)
    np.testing.assert_array_equal(_exported_kji(scene, segmentation, target, volume_node), expected_kji)
    np.testing.assert_array_equal(segment_mask_kji(segmentation, other, volume_node), other_kji)
    assert (expected_kji & other_kji).any(), "the test must make the segments overlap"
    extent = writer.modified_extent_ijk
    assert (extent[2 * axis], extent[2 * axis + 1]) == (written[0], written[-1])


def test_rewriting_a_slice_removes_what_is_no_longer_there(scene, volume_node):
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    writer = SegmentWriter(segmentation, target, volume_node)
    first, second = _blob_kji(3, 0.6)[4], _blob_kji(4, 0.2)[4]
    writer.write_slice(2, 4, first)
    writer.write_slice(2, 4, second)
    got_kji = segment_mask_kji(segmentation, target, volume_node)
    np.testing.assert_array_equal(got_kji[4], second)
    assert not got_kji[[0, 1, 2, 3, 5, 6, 7]].any()


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_written_together_equal_the_same_slices_written_in_order(scene, volume_node, axis):
    """Runs of neighbouring slices go to Slicer as slabs, with masking and overwriting as slice by slice."""
    editable_kji = np.ones(SHAPE_KJI, dtype=bool)
    editable_kji[:, :, :4] = False
    masking = EditMasking(editable_kji, overwrite_other_segments="all")
    count = SHAPE_KJI[2 - axis]
    order = [1, 2, 3, count - 1, 5, 2]  # runs 1-3 and 5, the last slice alone, slice 2 twice
    frames = [np.take(_blob_kji(20 + n, 0.5), index, axis=2 - axis) for n, index in enumerate(order)]
    results = {}
    for together in (False, True):
        segmentation, (target, other) = add_segmentation(scene, volume_node, (f"t{together}", f"o{together}"))
        _fill(segmentation, target, _blob_kji(30, 0.3))
        _fill(segmentation, other, _blob_kji(31, 0.3))
        writer = SegmentWriter(segmentation, target, volume_node, masking)
        if together:
            writer.write_slices(axis, list(zip(order, frames)))
        else:  # the last frame of each slice, one by one
            for index, frame in dict(zip(order, frames)).items():
                writer.write_slice(axis, index, frame)
        results[together] = [segment_mask_kji(segmentation, sid, volume_node) for sid in (target, other)]
        extent = writer.modified_extent_ijk
        assert (extent[2 * axis], extent[2 * axis + 1]) == (1, count - 1)
    for in_order, together in zip(results[False], results[True]):
        np.testing.assert_array_equal(together, in_order)
    np.testing.assert_array_equal(  # the last frame given for slice 2 won
        np.take(results[True][0], 2, axis=2 - axis)[np.take(editable_kji, 2, axis=2 - axis)],
        frames[-1][np.take(editable_kji, 2, axis=2 - axis)],
    )


def test_a_bad_slice_among_several_writes_nothing(scene, volume_node):
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    writer = SegmentWriter(segmentation, target, volume_node)
    good = np.ones(SHAPE_KJI[1:], dtype=bool)
    with pytest.raises(OutputError, match="outside the volume"):
        writer.write_slices(2, [(3, good), (SHAPE_KJI[0], good)])
    with pytest.raises(OutputError, match="has shape"):
        writer.write_slices(2, [(3, good), (4, good[:-1])])
    assert not segment_mask_kji(segmentation, target, volume_node).any() and not writer.touched


@pytest.mark.parametrize("mode", ["all", "visible"])
def test_overwrite_modes_erase_only_the_allowed_segments(scene, volume_node, mode):
    segmentation, (target, visible, hidden) = add_segmentation(
        scene, volume_node, ("target", "visible", "hidden")
    )
    visible_kji, hidden_kji = _blob_kji(5, 0.5), _blob_kji(6, 0.5)
    _fill(segmentation, visible, visible_kji)
    _fill(segmentation, hidden, hidden_kji)
    segmentation.GetDisplayNode().SetSegmentVisibility(hidden, False)
    result_kji = _blob_kji(7, 0.5)

    layers_before = segmentation.GetSegmentation().GetNumberOfLayers()

    writer = SegmentWriter(segmentation, target, volume_node, EditMasking(overwrite_other_segments=mode))
    for index, frame in _frames(result_kji, 2, range(SHAPE_KJI[0])).items():
        writer.write_slice(2, index, frame)

    # Overwriting the segment that shares the target's layer must not split that layer.
    assert segmentation.GetSegmentation().GetNumberOfLayers() == layers_before

    np.testing.assert_array_equal(segment_mask_kji(segmentation, target, volume_node), result_kji)
    np.testing.assert_array_equal(
        segment_mask_kji(segmentation, visible, volume_node), visible_kji & ~result_kji
    )
    expected_hidden = hidden_kji & ~result_kji if mode == "all" else hidden_kji
    np.testing.assert_array_equal(segment_mask_kji(segmentation, hidden, volume_node), expected_hidden)


def test_non_editable_area_stays_untouched(scene, volume_node):
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    before_kji = _blob_kji(8, 0.4)
    _fill(segmentation, target, before_kji)
    editable_kji = np.zeros(SHAPE_KJI, dtype=bool)
    editable_kji[:, 2:8, 3:10] = True
    result_kji = _blob_kji(9, 0.5)

    writer = SegmentWriter(segmentation, target, volume_node, EditMasking(editable_kji))
    for index, frame in _frames(result_kji, 1, range(SHAPE_KJI[1])).items():
        writer.write_slice(1, index, frame)

    got_kji = segment_mask_kji(segmentation, target, volume_node)
    np.testing.assert_array_equal(got_kji[~editable_kji], before_kji[~editable_kji])
    np.testing.assert_array_equal(got_kji[editable_kji], result_kji[editable_kji])


def test_restore_segment_is_bit_exact(scene, volume_node):
    names = ("target", "same_layer", "overlapping")
    segmentation, (target, same_layer, overlapping) = add_segmentation(scene, volume_node, names)
    target_kji, same_layer_kji = _blob_kji(10, 0.2), _blob_kji(11, 0.2)
    same_layer_kji &= ~target_kji
    _fill(segmentation, target, target_kji)
    _fill(segmentation, same_layer, same_layer_kji)
    _fill(segmentation, overlapping, _blob_kji(12, 0.3))  # overlaps both: Slicer gives it another layer
    masking = EditMasking(overwrite_other_segments="all")
    before = {
        sid: segment_mask_kji(segmentation, sid, volume_node) for sid in (target, same_layer, overlapping)
    }

    snapshot = snapshot_segment(segmentation, target, masking)
    writer = SegmentWriter(segmentation, target, volume_node, masking)
    for index, frame in _frames(_blob_kji(13, 0.6), 2, range(2, 7)).items():
        writer.write_slice(2, index, frame)
    changed = {sid: segment_mask_kji(segmentation, sid, volume_node) for sid in before}
    assert all((changed[sid] != before[sid]).any() for sid in before), "the action must change every segment"

    restore_segment(segmentation, snapshot)
    for sid, mask_kji in before.items():
        np.testing.assert_array_equal(segment_mask_kji(segmentation, sid, volume_node), mask_kji)


def test_segment_on_transformed_segmentation_matches_slicer_export(scene, volume_node):
    # Slicer's exporter resamples when the volume and the segmentation are under different transforms;
    # with the volume under a rotation it loses voxels itself (checked with slicer-core 5.13), so the
    # volume's transform is hardened here and only the segmentation is transformed.
    volume_node.SetAndObserveTransformNodeID(None)
    volume_node.SetIJKToRASMatrix(vtk_matrix(WORLD_IJK_TO_RAS))
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    segmentation_parent = affine(rotation("z", -25), [4, 4, -6])
    segmentation.SetAndObserveTransformNodeID(linear_transform_node(scene, segmentation_parent).GetID())
    result_kji = _blob_kji(14, 0.5)
    writer = SegmentWriter(segmentation, target, volume_node)
    for index, frame in _frames(result_kji, 0, range(SHAPE_KJI[2])).items():
        writer.write_slice(0, index, frame)
    np.testing.assert_array_equal(_exported_kji(scene, segmentation, target, volume_node), result_kji)
    np.testing.assert_array_equal(segment_mask_kji(segmentation, target, volume_node), result_kji)


def test_segment_on_another_grid_is_resampled_on_read_and_refused_on_write(scene, volume_node):
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    # Half the voxel size along I: each volume voxel holds two segment voxels; fill both.
    fine_to_world = WORLD_IJK_TO_RAS @ affine(np.diag([0.5, 1, 1]), [-0.25, 0, 0])
    coarse_kji = _blob_kji(15, 0.5)
    _fill(segmentation, target, np.repeat(coarse_kji, 2, axis=2), ijk_to_segmentation=fine_to_world)
    np.testing.assert_array_equal(segment_mask_kji(segmentation, target, volume_node), coarse_kji)
    with pytest.raises(OutputError, match="another grid"):
        SegmentWriter(segmentation, target, volume_node).write_slice(2, 0, coarse_kji[0])


def test_wrong_frame_shape_and_slice_are_refused(scene, volume_node):
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    writer = SegmentWriter(segmentation, target, volume_node)
    with pytest.raises(OutputError, match=r"shape \(12, 10\), not \(10, 12\)"):
        writer.write_slice(2, 0, np.zeros((12, 10), dtype=bool))
    with pytest.raises(OutputError, match="outside the volume"):
        writer.write_slice(2, SHAPE_KJI[0], np.zeros((10, 12), dtype=bool))
    with pytest.raises(OutputError, match="no segment 'missing'"):
        SegmentWriter(segmentation, "missing", volume_node)


def test_edit_masking_from_segment_editor_node(scene, volume_node, voxels_kji):
    segmentation, (target, inside) = add_segmentation(scene, volume_node, ("target", "inside"))
    inside_kji = _blob_kji(16, 0.5)
    _fill(segmentation, inside, inside_kji)
    editor = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.SetMaskSegmentID(inside)
    editor.SetSourceVolumeIntensityMask(True)
    editor.SetSourceVolumeIntensityMaskRange(0, 250)
    editor.SetOverwriteMode(editor.OverwriteVisibleSegments)

    masking = edit_masking_from_editor_node(editor, segmentation, target, volume_node)

    assert masking.overwrite_other_segments == "visible"
    expected_kji = inside_kji & (voxels_kji >= 0) & (voxels_kji <= 250)
    np.testing.assert_array_equal(masking.editable_area_labelmap_kji, expected_kji)


def test_editable_intensity_range_is_tested_on_the_segment_editors_source_volume(scene, volume_node):
    # MedSegAny segments the CT while the Segment Editor's source volume is another volume on the same
    # grid (a PET, say): Slicer tests the intensity range on the source volume, so does the masking.
    segmentation, (target, _) = add_segmentation(scene, volume_node)
    pet_kji = np.random.default_rng(8).integers(0, 30, size=SHAPE_KJI).astype(np.int16)
    pet = scene_kit.add_volume_node(scene, pet_kji, NODE_IJK_TO_RAS, None, name="PET")
    pet.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    editor = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetAndObserveSourceVolumeNode(pet)
    editor.SetSourceVolumeIntensityMask(True)
    editor.SetSourceVolumeIntensityMaskRange(10, 20)

    masking = edit_masking_from_editor_node(editor, segmentation, target, volume_node)

    np.testing.assert_array_equal(masking.editable_area_labelmap_kji, (pet_kji >= 10) & (pet_kji <= 20))


def test_a_source_volume_on_another_grid_is_resampled_onto_the_segmented_volume(scene, volume_node):
    # The source volume has twice the spacing (same origin and axes in world RAS, no parent transform)
    # and values linear in its indices, so Slicer's linear interpolation gives them exactly on the CT's
    # grid: 10 i + 100 j + 1000 k at source index (i, j, k) / 2.
    k_src, j_src, i_src = np.meshgrid(*(np.arange(n) for n in (4, 5, 6)), indexing="ij")
    source_kji = (10 * i_src + 100 * j_src + 1000 * k_src).astype(np.int16)
    coarse_ijk_to_ras = WORLD_IJK_TO_RAS @ np.diag([2.0, 2.0, 2.0, 1.0])
    source = scene_kit.add_volume_node(scene, source_kji, coarse_ijk_to_ras, None, name="coarse")
    editor = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetAndObserveSourceVolumeNode(source)

    values_kji = source_values_kji(editor, volume_node)

    k, j, i = np.meshgrid(*(np.arange(n) for n in SHAPE_KJI), indexing="ij")
    inside = (i <= 10) & (j <= 8) & (k <= 6)  # within the source's last voxel centres
    np.testing.assert_array_equal(values_kji[inside], (5 * i + 50 * j + 500 * k)[inside])
    # no source volume set: the segmented volume's own voxels
    editor.SetAndObserveSourceVolumeNode(None)
    own_kji = volume_from_node(volume_node).voxels_kji
    np.testing.assert_array_equal(source_values_kji(editor, volume_node), own_kji)


# ------------------------------------------------------------------------------------------------ files


def test_seg_nrrd_from_slicer_storage_node_is_read_by_slicerio(scene, volume_node, tmp_path: Path):
    slicerio = pytest.importorskip("slicerio")
    segmentation, (target, other) = add_segmentation(scene, volume_node, ("liver", "other"))
    # slicerio reads the file's geometry as written; a segmentation under a transform is saved in
    # its own coordinates, so the volume's transform is hardened here to compare with world RAS.
    volume_node.SetAndObserveTransformNodeID(None)
    volume_node.SetIJKToRASMatrix(vtk_matrix(WORLD_IJK_TO_RAS))
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    result_kji = _blob_kji(17, 0.4)
    writer = SegmentWriter(segmentation, target, volume_node)
    for index, frame in _frames(result_kji, 2, range(SHAPE_KJI[0])).items():
        writer.write_slice(2, index, frame)
    _fill(segmentation, other, _blob_kji(18, 0.2) & ~result_kji)

    path = tmp_path / "result.seg.nrrd"
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    storage.SetCropToMinimumExtent(False)  # keep the full reference extent: same grid as the volume
    assert storage.WriteData(segmentation), "vtkMRMLSegmentationStorageNode could not write the file"

    read = slicerio.read_segmentation(str(path))
    names = [segment["name"] for segment in read["segments"]]
    assert names == ["liver", "other"]
    ijk_to_lps = np.asarray(read["ijkToLPS"], dtype=float)
    np.testing.assert_allclose(np.diag([-1.0, -1, 1, 1]) @ ijk_to_lps, WORLD_IJK_TO_RAS, atol=1e-4)
    liver = read["segments"][0]
    voxels_ijk = np.asarray(read["voxels"])  # slicerio keeps the file's IJK order
    liver_kji = np.transpose(
        voxels_ijk if voxels_ijk.ndim == 3 else voxels_ijk[..., liver["layer"]], (2, 1, 0)
    )
    np.testing.assert_array_equal(liver_kji == liver["labelValue"], result_kji)


# ------------------------------------------------------------------------------------------------ terminology


def _tag(segment) -> str:
    import vtk

    value = vtk.reference("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), value)
    return str(value)


def test_segment_for_a_structure_gets_name_colour_and_terminology_tag(scene, volume_node):
    segmentation, _ = add_segmentation(scene, volume_node, names=())
    kidney = lookup("left kidney")

    segment_id = create_segment(segmentation, structure="kidney_left")

    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "Left kidney"
    np.testing.assert_allclose(segment.GetColor(), np.array(kidney.color_rgb) / 255.0)
    assert _tag(segment) == terminology_entry_string(kidney)
    assert segment.GetTerminologyEntryTagName() == "TerminologyEntry"
    assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated()
    assert segment_terminology(segmentation, segment_id) is kidney
    # Slicer's own reader of the tag agrees on the codes.
    read = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(_tag(segment), read)
    assert read.GetTypeObject().GetCodeValue() == "64033007"
    assert read.GetTypeModifierObject().GetCodeMeaning() == "Left"


def test_name_and_colour_override_a_structure_and_repeated_names_are_numbered(scene, volume_node):
    segmentation, _ = add_segmentation(scene, volume_node, names=())
    liver = lookup("liver")
    first = create_segment(segmentation, structure=liver)
    second = create_segment(segmentation, structure="LIVER")
    custom = create_segment(segmentation, "segment 4 of liver", (0.1, 0.2, 0.3), structure="liver")
    segments = segmentation.GetSegmentation()
    assert [segments.GetSegment(sid).GetName() for sid in (first, second, custom)] == [
        "Liver",
        "Liver 2",
        "segment 4 of liver",
    ]
    np.testing.assert_allclose(segments.GetSegment(custom).GetColor(), (0.1, 0.2, 0.3))
    assert _tag(segments.GetSegment(custom)) == terminology_entry_string(liver)


def test_plain_segment_keeps_slicers_default_terminology(scene, volume_node):
    segmentation, _ = add_segmentation(scene, volume_node, names=())
    segment_id = create_segment(segmentation, "MedSegAny 1", (0.8, 0.3, 0.2))
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "MedSegAny 1"
    np.testing.assert_allclose(segment.GetColor(), (0.8, 0.3, 0.2))
    tissue = segment_terminology(segmentation, segment_id)
    assert (tissue.type.meaning, tissue.color_rgb) == ("Tissue", None)  # vtkSegment's default entry
    unnamed = create_segment(segmentation)  # Slicer names and colours it
    assert segmentation.GetSegmentation().GetSegment(unnamed).GetName()


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"structure": "livr"}, TerminologyError, "did you mean 'Liver'"),
        ({"name": "x", "color_rgb": (0, 0, 255)}, OutputError, "not RGB in 0..1"),
    ],
)
def test_refused_segments_add_nothing(scene, volume_node, kwargs, error, fragment):
    segmentation, _ = add_segmentation(scene, volume_node, names=("existing",))
    with pytest.raises(error, match=fragment):
        create_segment(segmentation, **kwargs)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1


def test_terminology_survives_seg_nrrd_saved_by_slicer_and_read_by_slicerio_and_slicer(
    scene, volume_node, tmp_path: Path
):
    slicerio = pytest.importorskip("slicerio")
    from slicerio.segmentation import terminology_entry_to_string

    segmentation, _ = add_segmentation(scene, volume_node, names=())
    structures = [lookup("liver"), lookup("right kidney"), lookup("liver mass")]
    ids = [create_segment(segmentation, structure=entry) for entry in structures]
    for n, segment_id in enumerate(ids):
        _fill(segmentation, segment_id, _blob_kji(20 + n, 0.1))
    path = tmp_path / "organs.seg.nrrd"
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(segmentation), "vtkMRMLSegmentationStorageNode could not write the file"

    read = slicerio.read_segmentation(str(path), skip_voxels=True)
    assert [segment["name"] for segment in read["segments"]] == [entry.name for entry in structures]
    for segment, entry in zip(read["segments"], structures, strict=True):
        assert terminology_entry_to_string(segment["terminology"]) == terminology_entry_string(entry)
        assert segment["terminology"]["type"] == [entry.type.scheme, entry.type.value, entry.type.meaning]
        np.testing.assert_allclose(segment["color"], np.array(entry.color_rgb) / 255.0, atol=1e-6)

    # Slicer itself reads the tag back into a fresh segmentation node.
    reread = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(path))
    assert reader.ReadData(reread)
    reread_ids = [reread.GetSegmentation().GetNthSegmentID(n) for n in range(len(structures))]
    assert [segment_terminology(reread, sid) for sid in reread_ids] == structures


def test_an_roi_with_only_its_first_corner_is_no_box(scene, volume_node):
    """Slicer places an ROI with two clicks; one whose placement stopped after the first (1 of its 2
    required control points, size 0) is refused as not placed, not as 'zero width or height'."""
    from medsegany.mrml_markups import roi_is_placed

    volume = volume_from_node(volume_node)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.AddControlPointWorld(*scene_kit.world_ras([(6, 5, 6)])[0])
    assert not roi_is_placed(roi)
    with pytest.raises(PromptError, match="has not been placed"):
        prompts_from_markups(volume, roi)
    roi.AddControlPointWorld(*scene_kit.world_ras([(18, 14, 6)])[0])  # the second corner: a (thick) box
    assert roi_is_placed(roi) and roi.GetNumberOfControlPoints() == 1
