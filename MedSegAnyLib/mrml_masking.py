"""Segment Editor masking settings (a ``vtkMRMLSegmentEditorNode``) as an :class:`EditMasking`."""

from __future__ import annotations

import numpy as np

from .errors import OutputError
from .mrml_segment import EditMasking, full_extent_ijk, volume_ijk_to_segmentation, volume_shape_kji
from .mrml_volume import volume_from_node, world_ijk_to_ras
from .mrml_vtk import image_values_kji, numpy_support, numpy_to_matrix, oriented_image, slicer_module


def overwrite_mode_name(segment_editor_node) -> str:
    """ "none", "visible" or "all" for the editor node's overwrite mode."""
    editor = type(segment_editor_node)
    names = {editor.OverwriteNone: "none", editor.OverwriteVisibleSegments: "visible"}
    return names.get(segment_editor_node.GetOverwriteMode(), "all")


def edit_masking_from_editor_node(
    segment_editor_node, segmentation_node, segment_id: str, reference_volume_node
) -> EditMasking:
    """The editable area (mask mode and intensity range) and overwrite mode the Segment Editor would use.

    The editable area is computed by Slicer itself (``vtkMRMLSegmentationNode.GenerateEditMask``) on the
    reference volume's grid, with ``segment_id`` always editable, then narrowed to the editable
    intensity range when that option is on (inclusive, as in Slicer), tested on the Segment Editor's
    source volume as Slicer does (:func:`source_values_kji`).
    """
    slicer = slicer_module()
    editable_kji = None
    mask_mode = segment_editor_node.GetMaskMode()
    if mask_mode != slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere:
        shape_kji = volume_shape_kji(reference_volume_node)
        reference = oriented_image(
            np.zeros(shape_kji, dtype=np.uint8),
            full_extent_ijk(shape_kji),
            volume_ijk_to_segmentation(segmentation_node, reference_volume_node),
        )
        not_editable = slicer.vtkOrientedImageData()
        mask_segment_id = segment_editor_node.GetMaskSegmentID() or ""
        if not segmentation_node.GenerateEditMask(
            not_editable, mask_mode, reference, segment_id, mask_segment_id
        ):
            raise OutputError(
                "Slicer could not compute the Segment Editor's editable area",
                "check the masking settings (the mask segment must exist) or set Editable area to Everywhere",
            )
        values_kji = image_values_kji(not_editable)
        if values_kji is None or values_kji.shape != shape_kji:
            raise OutputError(
                "the editable area does not cover the volume", "set Editable area to Everywhere"
            )
        # GenerateEditMask marks the voxels that may NOT change with nonzero values.
        editable_kji = values_kji == 0
    if segment_editor_node.GetSourceVolumeIntensityMask():
        low, high = segment_editor_node.GetSourceVolumeIntensityMaskRange()
        voxels_kji = source_values_kji(segment_editor_node, reference_volume_node)
        in_range_kji = (voxels_kji >= low) & (voxels_kji <= high)
        editable_kji = in_range_kji if editable_kji is None else editable_kji & in_range_kji
    return EditMasking(editable_kji, overwrite_mode_name(segment_editor_node))


def editor_source_volume(segment_editor_node):
    """The Segment Editor's source volume node (called "master volume" before Slicer 5.2), or None."""
    getter = getattr(segment_editor_node, "GetSourceVolumeNode", None) or getattr(
        segment_editor_node, "GetMasterVolumeNode", None
    )
    return getter() if getter is not None else None


def source_values_kji(segment_editor_node, reference_volume_node) -> np.ndarray:
    """The values the editable intensity range is tested on, on the reference volume's voxel grid (KJI).

    Slicer tests the range on the Segment Editor's source volume, resampled (linear interpolation, in
    world coordinates) onto the grid being edited. The two differ when the user picked one volume in
    MedSegAny and another in the Segment Editor (a PET and its CT, say), so the range is taken from the
    source volume here too; the reference volume's own voxels when no source volume is set.
    """
    reference = volume_from_node(reference_volume_node, copy=False)
    source_node = editor_source_volume(segment_editor_node)
    if source_node is None or source_node.GetID() == reference_volume_node.GetID():
        return reference.voxels_kji
    source_image = source_node.GetImageData()
    if source_image is None or source_image.GetPointData().GetScalars() is None:
        raise OutputError(
            f"the Segment Editor's source volume '{source_node.GetName()}' has no image data",
            "choose a loaded source volume in the Segment Editor or turn off Editable intensity range",
        )
    source_to_world = world_ijk_to_ras(source_node)
    if tuple(source_image.GetDimensions()[::-1]) == reference.voxels_kji.shape and np.allclose(
        source_to_world, reference.ijk_to_ras, atol=1e-6
    ):
        return _first_component_kji(source_image)  # the same grid: no resampling
    slicer = slicer_module()
    source = slicer.vtkOrientedImageData()
    source.ShallowCopy(source_image)
    source.SetImageToWorldMatrix(numpy_to_matrix(source_to_world))
    grid = slicer.vtkOrientedImageData()
    shape_kji = reference.voxels_kji.shape
    grid.SetExtent(0, shape_kji[2] - 1, 0, shape_kji[1] - 1, 0, shape_kji[0] - 1)
    grid.SetImageToWorldMatrix(numpy_to_matrix(reference.ijk_to_ras))
    resampled = slicer.vtkOrientedImageData()
    background = source_node.GetImageBackgroundScalarComponentAsDouble(0)
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        source, grid, resampled, True, False, None, background
    ):
        raise OutputError(
            f"Slicer could not resample the source volume '{source_node.GetName()}' onto "
            f"'{reference_volume_node.GetName()}'",
            "select the same volume in MedSegAny and in the Segment Editor, "
            "or turn off Editable intensity range",
        )
    return _first_component_kji(resampled)


def _first_component_kji(image) -> np.ndarray:
    """An image's first scalar component as a KJI array (Slicer's intensity range uses that one too)."""
    scalars = image.GetPointData().GetScalars()
    i, j, k = image.GetDimensions()
    values = numpy_support().vtk_to_numpy(scalars).reshape(k, j, i, scalars.GetNumberOfComponents())
    return values[..., 0]
