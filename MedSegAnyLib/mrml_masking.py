"""Segment Editor masking settings (a ``vtkMRMLSegmentEditorNode``) as an :class:`EditMasking`."""

from __future__ import annotations

import numpy as np

from .errors import OutputError
from .mrml_segment import EditMasking, full_extent_ijk, volume_ijk_to_segmentation, volume_shape_kji
from .mrml_volume import volume_from_node
from .mrml_vtk import image_values_kji, oriented_image, slicer_module


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
    intensity range of the reference volume when that option is on (inclusive, as in Slicer).
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
        voxels_kji = volume_from_node(reference_volume_node, copy=False).voxels_kji
        in_range_kji = (voxels_kji >= low) & (voxels_kji <= high)
        editable_kji = in_range_kji if editable_kji is None else editable_kji & in_range_kji
    return EditMasking(editable_kji, overwrite_mode_name(segment_editor_node))
