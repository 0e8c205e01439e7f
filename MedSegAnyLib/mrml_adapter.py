"""MRML adapter: Slicer nodes <-> MedSegAny values, Qt-free, importing ``slicer`` only when called.

It runs inside 3D Slicer and, for tests, with the ``slicer-core`` wheel (MRML without Qt). It uses
MRML and segmentation classes only; the Slicer module's Logic calls it from the main thread.

- volumes: :func:`volume_from_node`, :func:`world_ijk_to_ras`
- prompts: :func:`prompts_from_markups` (ROI flat on a slice -> box, point lists -> ± points)
- results: :class:`SegmentWriter` (one slice at a time, Segment Editor masking via :class:`EditMasking`,
  :func:`edit_masking_from_editor_node`), :func:`segment_mask_kji`
- undo: :func:`snapshot_segment`, :func:`restore_segment`
- new segments: :func:`create_segment` (optionally a catalogue structure: standard name, colour and
  ``TerminologyEntry`` tag), :func:`segment_terminology`
"""

from __future__ import annotations

from .mrml_markups import (
    MarkupsPrompts,
    box_ijk_from_roi,
    points_ijk_from_fiducials,
    prompts_from_markups,
    roi_corners_ras,
)
from .mrml_masking import edit_masking_from_editor_node, overwrite_mode_name
from .mrml_segment import OVERWRITE_MODES, EditMasking, SegmentWriter, segment_mask_kji
from .mrml_terminology import create_segment, segment_terminology, set_segment_terminology
from .mrml_undo import SavedSegment, SegmentSnapshot, restore_segment, snapshot_segment
from .mrml_volume import node_ijk_to_ras, volume_from_node, world_ijk_to_ras

__all__ = [
    "OVERWRITE_MODES",
    "EditMasking",
    "MarkupsPrompts",
    "SavedSegment",
    "SegmentSnapshot",
    "SegmentWriter",
    "box_ijk_from_roi",
    "create_segment",
    "edit_masking_from_editor_node",
    "node_ijk_to_ras",
    "overwrite_mode_name",
    "points_ijk_from_fiducials",
    "prompts_from_markups",
    "restore_segment",
    "roi_corners_ras",
    "segment_mask_kji",
    "segment_terminology",
    "set_segment_terminology",
    "snapshot_segment",
    "volume_from_node",
    "world_ijk_to_ras",
]
