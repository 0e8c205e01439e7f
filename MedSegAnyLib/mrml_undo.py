"""Undo for one AI action: save the voxels of the segments it may change, put them back exactly.

A snapshot keeps, per segment, its voxels cropped to their bounding box on the segment's own layer
lattice (no resampling, so restoring is bit-exact). Restoring clears the segment and writes the saved
voxels back through ``SetBinaryLabelmapToSegment`` without overwriting anything, so every snapshotted
segment gets exactly its old voxels back; Slicer may keep segments on separate layers afterwards,
which changes how they are stored, not their content.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import OutputError
from .mrml_segment import (
    EditMasking,
    binary_labelmap_layer,
    segment_ids,
    segment_or_error,
    set_binary_labelmap,
)
from .mrml_surface import closed_surface_name
from .mrml_vtk import image_to_world, image_values_kji, oriented_image, slicer_module


@dataclass(frozen=True)
class SavedSegment:
    """One segment's voxels: ``mask_kji`` over ``extent_ijk`` of a lattice with ``ijk_to_segmentation``."""

    segment_id: str
    mask_kji: np.ndarray | None  # None: the segment was empty
    extent_ijk: tuple[int, int, int, int, int, int] | None
    ijk_to_segmentation: np.ndarray | None


@dataclass(frozen=True)
class SegmentSnapshot:
    """Saved content of the segments one AI action may change (the target first)."""

    segmentation_node_id: str | None
    segments: tuple[SavedSegment, ...]

    @property
    def segment_ids(self) -> tuple[str, ...]:
        return tuple(saved.segment_id for saved in self.segments)

    def restricted_to(self, segment_ids: set[str] | tuple[str, ...]) -> SegmentSnapshot:
        """The snapshot of only these segments."""
        kept = tuple(saved for saved in self.segments if saved.segment_id in segment_ids)
        return SegmentSnapshot(self.segmentation_node_id, kept)


def _save(segmentation_node, segment_id: str) -> SavedSegment:
    layer = binary_labelmap_layer(segmentation_node, segment_id)
    values_kji = image_values_kji(layer) if layer is not None else None
    if values_kji is None:
        return SavedSegment(segment_id, None, None, None)
    mask_kji = values_kji == segment_or_error(segmentation_node, segment_id).GetLabelValue()
    if not mask_kji.any():
        return SavedSegment(segment_id, None, None, None)
    extent = layer.GetExtent()
    low_high = []
    for kji_axis in range(3):
        present = np.flatnonzero(mask_kji.any(axis=tuple(a for a in range(3) if a != kji_axis)))
        low_high.append((int(present[0]), int(present[-1])))
    (k0, k1), (j0, j1), (i0, i1) = low_high
    cropped = mask_kji[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1].copy()
    extent_ijk = (
        extent[0] + i0,
        extent[0] + i1,
        extent[2] + j0,
        extent[2] + j1,
        extent[4] + k0,
        extent[4] + k1,
    )
    return SavedSegment(segment_id, cropped, extent_ijk, image_to_world(layer))


def snapshot_segment(
    segmentation_node, segment_id: str, masking: EditMasking | None = None
) -> SegmentSnapshot:
    """Save ``segment_id`` and the segments that ``masking``'s overwrite mode lets an action erase.

    Take it right before the action (the set of visible segments is read now).
    """
    segment_or_error(segmentation_node, segment_id)
    others = (masking or EditMasking()).segments_to_overwrite(segmentation_node, segment_id)
    segment_ids = [segment_id, *others]
    return SegmentSnapshot(
        segmentation_node.GetID(), tuple(_save(segmentation_node, sid) for sid in segment_ids)
    )


def restore_segment(segmentation_node, snapshot: SegmentSnapshot, skip_deleted: bool = False) -> None:
    """Give every segment in ``snapshot`` back exactly the voxels it had when the snapshot was taken.

    A segment deleted since is an OutputError, or left out with ``skip_deleted`` (a failed action's own
    writes taken back: the user deleted its target meanwhile)."""
    if (
        snapshot.segmentation_node_id is not None
        and segmentation_node.GetID() != snapshot.segmentation_node_id
    ):
        raise OutputError(
            f"the snapshot belongs to segmentation {snapshot.segmentation_node_id}, "
            f"not '{segmentation_node.GetName()}'",
            "undo on the segmentation the action changed",
        )
    existing = set(segment_ids(segmentation_node))
    missing = [sid for sid in snapshot.segment_ids if sid not in existing]
    if missing and skip_deleted:
        snapshot, missing = snapshot.restricted_to(existing), []
    if missing:
        raise OutputError(
            f"segment(s) {', '.join(missing)} were deleted after the action",
            "undo is no longer possible for it",
        )
    logic = slicer_module().vtkSlicerSegmentationsModuleLogic
    segmentation = segmentation_node.GetSegmentation()
    # ClearSegment drops a segment's 3D surface and writing the labelmap back does not rebuild it
    surface = closed_surface_name()
    shown_in_3d = any(
        segmentation.GetSegment(saved.segment_id).GetRepresentation(surface) is not None
        for saved in snapshot.segments
    )
    for saved in snapshot.segments:
        segmentation.ClearSegment(saved.segment_id)
    for saved in snapshot.segments:
        if saved.mask_kji is None:
            continue
        image = oriented_image(saved.mask_kji.astype(np.uint8), saved.extent_ijk, saved.ijk_to_segmentation)
        # Overwrite nothing: a segment that overlapped another one before gets its own layer again.
        set_binary_labelmap(
            image, segmentation_node, saved.segment_id, logic.MODE_MERGE_MASK, list(saved.extent_ijk), []
        )
    if shown_in_3d:
        segmentation.CreateRepresentation(surface)  # converts the restored segments only


def snapshot_segments(segmentation_node, wanted_ids: tuple[str, ...]) -> SegmentSnapshot:
    """Save these segments as they are now; those deleted meanwhile are left out."""
    existing = set(segment_ids(segmentation_node))
    saved = tuple(_save(segmentation_node, sid) for sid in wanted_ids if sid in existing)
    return SegmentSnapshot(segmentation_node.GetID(), saved)


def undo_keeping_later_edits(
    segmentation_node,
    before: SegmentSnapshot,
    after: SegmentSnapshot,
    skip_deleted: bool = False,
    written: SavedSegment | None = None,
    target_written: tuple[SavedSegment, SavedSegment] | None = None,
) -> None:
    """Undo one action: its target (``before``'s first segment) gets its old voxels back exactly; every
    other segment gets back only the voxels the action took from it (in ``before``, not in ``after``)
    and keeps what the user painted or erased since. Before, the other segments were reset whole, and
    hand edits made after the action were lost. A deleted target is an OutputError, or left deleted with
    ``skip_deleted``.

    ``written``: the voxels the action wrote into its target (a failed action's writes taken back, with
    ``after`` the segments now): the others get back only what they lost there. Without it they got back
    every voxel they lost since the action began, and a part the user erased from one meanwhile came
    back (180 voxels of two slices the run never reached, in the test).

    ``target_written``: (region, values), the voxels the action set in its target and the value it last
    left in each (a failed action's writes taken back): the target gets its old voxels back only where
    it still holds what the action left, and keeps everything else as it is now: what the user painted
    or erased in it while the action ran, on slices the action never wrote and on voxels changed after
    the action wrote them. A voxel the user set to the very value the action had left (painting over its
    mask) cannot be told apart and is taken back. Without it the target was restored whole, and what the
    user painted in it during the run was lost (36 voxels, in the test)."""
    _apply_taken(segmentation_node, before, after, True, skip_deleted, written, target_written)


def redo_keeping_later_edits(segmentation_node, before: SegmentSnapshot, after: SegmentSnapshot) -> None:
    """Redo one action: its target gets ``after``'s voxels; every other segment loses again only the
    voxels the action took from it."""
    _apply_taken(segmentation_node, before, after, give_back=False)


def _apply_taken(
    segmentation_node,
    before: SegmentSnapshot,
    after: SegmentSnapshot,
    give_back: bool,
    skip_deleted: bool = False,
    written: SavedSegment | None = None,
    target_written: tuple[SavedSegment, SavedSegment] | None = None,
) -> None:
    target = before.segments[0].segment_id
    restored: SegmentSnapshot | None = (before if give_back else after).restricted_to((target,))
    if target_written is not None and target in segment_ids(segmentation_node):
        now = _save(segmentation_node, target)
        merged = _written_taken_back(now, before.segments[0], *target_written)
        if merged is None:  # the layers' lattices differ: the old way, the whole segment
            pass
        elif merged is now:
            restored = None
        else:
            restored = SegmentSnapshot(before.segmentation_node_id, (merged,))
    if restored is not None:
        restore_segment(segmentation_node, restored, skip_deleted)
    existing = set(segment_ids(segmentation_node))
    saved_after = {saved.segment_id: saved for saved in after.segments}
    changed = []
    for saved_before in before.segments[1:]:
        other = saved_before.segment_id
        if other not in existing or other not in saved_after:
            continue  # deleted since, or not among what the action could change
        now = _save(segmentation_node, other)
        merged = _taken_applied(now, saved_before, saved_after[other], give_back, written)
        if merged is None:  # the layers' lattices differ: the old way, the whole segment
            merged = saved_before if give_back else saved_after[other]
        if merged is not now:
            changed.append(merged)
    if changed:
        restore_segment(segmentation_node, SegmentSnapshot(before.segmentation_node_id, tuple(changed)))


def _written_taken_back(
    now: SavedSegment, before: SavedSegment, region: SavedSegment, values: SavedSegment
) -> SavedSegment | None:
    """``now`` with ``before``'s voxels back where the action wrote (``region``) and ``now`` still holds
    the value it left there (``values``); ``now`` itself when nothing changes; None when they do not share
    one lattice."""
    if region.mask_kji is None:
        return now  # the action set no voxel
    union = _common_lattice([now, before, region, values])
    if union is None:
        return None
    on_union, low, high, matrix = union
    current = on_union(now)
    as_written = on_union(region) & (current == on_union(values))
    result = np.where(as_written, on_union(before), current)
    return _saved_or_now(now, result, current, low, high, matrix)


def _common_lattice(given: list[SavedSegment]) -> tuple[Callable, np.ndarray, np.ndarray, np.ndarray] | None:
    """(on_union, low, high, matrix): ``on_union(saved)`` puts a saved segment on the union of the
    non-empty ``given``'s extents (a bool KJI array; low/high in IJK); None when they do not share one
    lattice."""
    parts = [saved for saved in given if saved.mask_kji is not None]
    matrix = parts[0].ijk_to_segmentation
    if any(not np.allclose(saved.ijk_to_segmentation, matrix) for saved in parts[1:]):
        return None
    low = np.min([saved.extent_ijk[0::2] for saved in parts], axis=0)  # (i, j, k)
    high = np.max([saved.extent_ijk[1::2] for saved in parts], axis=0)
    shape_kji = tuple(int(n) for n in (high - low + 1)[::-1])

    def on_union(saved: SavedSegment) -> np.ndarray:
        mask = np.zeros(shape_kji, dtype=bool)
        if saved.mask_kji is not None:
            i0, j0, k0 = (np.array(saved.extent_ijk[0::2]) - low).tolist()
            k, j, i = saved.mask_kji.shape
            mask[k0 : k0 + k, j0 : j0 + j, i0 : i0 + i] = saved.mask_kji
        return mask

    return on_union, low, high, matrix


def _saved_or_now(now: SavedSegment, result, current, low, high, matrix) -> SavedSegment:
    """``result`` (on the union lattice) as ``now``'s segment; ``now`` itself when it equals ``current``."""
    if np.array_equal(result, current):
        return now
    if not result.any():
        return SavedSegment(now.segment_id, None, None, None)
    extent = (int(low[0]), int(high[0]), int(low[1]), int(high[1]), int(low[2]), int(high[2]))
    return SavedSegment(now.segment_id, result, extent, matrix)


def _taken_applied(
    now: SavedSegment,
    before: SavedSegment,
    after: SavedSegment,
    give_back: bool,
    written: SavedSegment | None = None,
) -> SavedSegment | None:
    """``now`` with the voxels taken (``before`` and not ``after``; and among ``written``, when given)
    added back or removed again; ``now`` itself when nothing changes; None when they do not share one
    lattice."""
    if written is not None and written.mask_kji is None:
        return now  # the action wrote nothing: it took nothing
    given = [now, before, after] if written is None else [now, before, after, written]
    if all(saved.mask_kji is None for saved in given):
        return now
    union = _common_lattice(given)
    if union is None:
        return None
    on_union, low, high, matrix = union
    taken = on_union(before) & ~on_union(after)
    if written is not None:
        taken &= on_union(written)
    current = on_union(now)
    result = current | taken if give_back else current & ~taken
    return _saved_or_now(now, result, current, low, high, matrix)
