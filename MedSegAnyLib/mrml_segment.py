"""Read a segment on a volume's grid, and stream slices into it the way Slicer's Segment Editor does.

Segments live in *layers*: shared binary labelmaps (``vtkOrientedImageData``, one label value per
segment) in the segmentation node's own coordinates. Every change goes through
``vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment`` with the extent of the one slice being
written, so only that slice is touched, other segments keep their voxels unless the Segment Editor's
overwrite setting says otherwise, and Slicer itself moves a segment to its own layer when it must
overlap a segment it may not overwrite. This mirrors the Segment Editor's "set" operation
(``vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap``): remove where the new mask is off, add where it
is on, both only inside the editable area, then erase the added voxels from the segments that may be
overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .errors import OutputError
from .mrml_surface import SurfaceDeferral
from .mrml_volume import world_ijk_to_ras
from .mrml_vtk import (
    extent_is_empty,
    image_to_world,
    image_values_kji,
    node_to_world,
    oriented_image,
    slicer_module,
)

OVERWRITE_MODES = ("none", "visible", "all")
AXIS_NAMES = ("I", "J", "K")

#: Two lattices are the same when their axes agree to 1e-4 (relative) and their origins are a whole
#: number of voxels apart to 1e-3 voxel; anything looser would shift voxels on a 512-voxel axis.
_AXIS_TOLERANCE = 1e-4
_OFFSET_TOLERANCE = 1e-3


@dataclass(frozen=True)
class EditMasking:
    """Segment Editor masking for AI writes.

    ``editable_area_labelmap_kji``: bool array on the reference volume's grid, True where voxels may
    change (the Segment Editor's "Editable area" and "Editable intensity range" combined); None means
    everywhere. ``overwrite_other_segments``: which other segments lose the voxels the written segment
    gains: "none" (segments overlap), "visible" or "all" (Slicer's default). MedSegAny's default is
    "none": an AI result never silently erases another segment unless the user chose so.
    ``overwrite_segment_ids``: those segments fixed when an action begins (:meth:`fixed_for`), so that
    its undo snapshot holds every segment its writes may erase (a segment shown mid-run was erased, and
    undo could not give it back); None reads them at every write.
    """

    editable_area_labelmap_kji: np.ndarray | None = None
    overwrite_other_segments: str = "none"
    overwrite_segment_ids: tuple[str, ...] | None = None

    def fixed_for(self, segmentation_node, segment_id: str) -> EditMasking:
        """This masking with the segments it may overwrite read now and kept."""
        ids = segment_ids_to_overwrite(segmentation_node, segment_id, self.overwrite_other_segments)
        return replace(self, overwrite_segment_ids=tuple(ids))

    def segments_to_overwrite(self, segmentation_node, segment_id: str) -> list[str]:
        """The other segments a write may erase: the fixed ones that still exist, else read now."""
        if self.overwrite_segment_ids is None:
            return segment_ids_to_overwrite(segmentation_node, segment_id, self.overwrite_other_segments)
        existing = set(segment_ids(segmentation_node))
        return [other for other in self.overwrite_segment_ids if other in existing and other != segment_id]

    def __post_init__(self) -> None:
        if self.overwrite_other_segments not in OVERWRITE_MODES:
            raise OutputError(
                f"overwrite mode {self.overwrite_other_segments!r} is unknown",
                f"use one of {', '.join(OVERWRITE_MODES)}",
            )


# ---------------------------------------------------------------------------------------------- geometry


def volume_ijk_to_segmentation(segmentation_node, reference_volume_node) -> np.ndarray:
    """Volume IJK -> the segmentation node's own coordinates (where its labelmaps live)."""
    segmentation_to_world = node_to_world(segmentation_node, OutputError, "segmentation")
    return np.linalg.inv(segmentation_to_world) @ world_ijk_to_ras(reference_volume_node)


def _lattice_offset_ijk(layer_ijk_to_segmentation: np.ndarray, volume_ijk_to_segmentation: np.ndarray):
    """Integer ``d`` with layer index = volume index + d when both grids coincide, else None."""
    volume_to_layer = np.linalg.inv(layer_ijk_to_segmentation) @ volume_ijk_to_segmentation
    if not np.allclose(volume_to_layer[:3, :3], np.eye(3), atol=_AXIS_TOLERANCE):
        return None
    offset = volume_to_layer[:3, 3]
    rounded = np.round(offset)
    if np.max(np.abs(offset - rounded)) > _OFFSET_TOLERANCE:
        return None
    return rounded.astype(int)


def volume_shape_kji(reference_volume_node) -> tuple[int, int, int]:
    image = reference_volume_node.GetImageData() if reference_volume_node is not None else None
    if image is None:
        raise OutputError("the reference volume has no image data", "choose the volume that was segmented")
    dimensions_ijk = image.GetDimensions()
    return (dimensions_ijk[2], dimensions_ijk[1], dimensions_ijk[0])


def full_extent_ijk(shape_kji) -> list[int]:
    return [0, shape_kji[2] - 1, 0, shape_kji[1] - 1, 0, shape_kji[0] - 1]


# ---------------------------------------------------------------------------------------------- segments


def segment_or_error(segmentation_node, segment_id: str):
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id) if segment_id else None
    if segment is None:
        raise OutputError(
            f"segmentation '{segmentation_node.GetName()}' has no segment '{segment_id}'",
            "choose an existing segment or add one",
        )
    return segment


def binary_labelmap_layer(segmentation_node, segment_id: str):
    """The binary labelmap layer of a segment (shared with other segments of the same layer)."""
    slicer = slicer_module()
    segmentation = segmentation_node.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if segmentation.GetSourceRepresentationName() != name:
        raise OutputError(
            f"segmentation '{segmentation_node.GetName()}' stores "
            f"{segmentation.GetSourceRepresentationName()}, not binary labelmaps",
            "set its source representation to Binary labelmap (Segmentations module, Representations)",
        )
    return segment_or_error(segmentation_node, segment_id).GetRepresentation(name)


def segment_ids(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def segment_ids_to_overwrite(segmentation_node, segment_id: str, mode: str) -> list[str]:
    """The other segments that may lose voxels, as the Segment Editor chooses them."""
    others = [other for other in segment_ids(segmentation_node) if other != segment_id]
    if mode == "all":
        return others
    if mode == "visible":
        display_node = segmentation_node.GetDisplayNode()
        # Without a display node nothing is shown, so nothing is "visible" (as in Slicer's logic).
        return [
            other for other in others if display_node is not None and display_node.GetSegmentVisibility(other)
        ]
    return []


def segment_mask_kji(segmentation_node, segment_id: str, reference_volume_node) -> np.ndarray:
    """The segment as a bool array on the reference volume's grid (KJI), whatever its layer's extent.

    A layer on the same lattice is copied voxel for voxel; a layer on another lattice (another
    spacing or orientation) is resampled with nearest neighbour, as Slicer does when exporting.
    """
    shape_kji = volume_shape_kji(reference_volume_node)
    mask_kji = np.zeros(shape_kji, dtype=bool)
    layer = binary_labelmap_layer(segmentation_node, segment_id)
    if layer is None:
        return mask_kji
    values_kji = image_values_kji(layer)
    if values_kji is None:
        return mask_kji
    label_value = segment_or_error(segmentation_node, segment_id).GetLabelValue()
    volume_to_segmentation = volume_ijk_to_segmentation(segmentation_node, reference_volume_node)
    layer_to_segmentation = image_to_world(layer)
    offset_ijk = _lattice_offset_ijk(layer_to_segmentation, volume_to_segmentation)
    extent = layer.GetExtent()
    if offset_ijk is None:
        slicer = slicer_module()
        binary = oriented_image(values_kji == label_value, extent, layer_to_segmentation)
        reference = oriented_image(
            np.zeros(shape_kji, dtype=np.uint8), full_extent_ijk(shape_kji), volume_to_segmentation
        )
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            binary, reference, resampled, False, False
        )
        values_kji = image_values_kji(resampled)
        if values_kji is None:
            return mask_kji
        extent, offset_ijk, label_value = resampled.GetExtent(), np.zeros(3, dtype=int), 1
    # Layer index q = volume index p + offset; copy the overlap of the layer's extent and the volume.
    low_ijk = [max(extent[2 * a] - offset_ijk[a], 0) for a in range(3)]
    high_ijk = [min(extent[2 * a + 1] - offset_ijk[a], shape_kji[2 - a] - 1) for a in range(3)]
    if any(low_ijk[a] > high_ijk[a] for a in range(3)):
        return mask_kji
    source = tuple(
        slice(low_ijk[a] + offset_ijk[a] - extent[2 * a], high_ijk[a] + offset_ijk[a] - extent[2 * a] + 1)
        for a in (2, 1, 0)
    )
    target = tuple(slice(low_ijk[a], high_ijk[a] + 1) for a in (2, 1, 0))
    mask_kji[target] = values_kji[source] == label_value
    return mask_kji


# ---------------------------------------------------------------------------------------------- writing


def set_binary_labelmap(
    image, segmentation_node, segment_id: str, mode: int, extent, overwrite_ids: list[str]
) -> None:
    logic = slicer_module().vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(
        image, segmentation_node, segment_id, mode, extent, False, overwrite_ids
    ):
        raise OutputError(
            f"Slicer refused to update segment '{segment_id}' of '{segmentation_node.GetName()}'",
            "check the segmentation is a binary labelmap on the volume's grid and retry",
        )


def _contiguous_runs(indices: list[int]) -> list[tuple[int, list[int]]]:
    """Sorted indices -> (first, run) per run of consecutive ones: [1, 2, 4] -> [(1, [1, 2]), (4, [4])]."""
    runs: list[tuple[int, list[int]]] = []
    for index in indices:
        if runs and runs[-1][1][-1] == index - 1:
            runs[-1][1].append(index)
        else:
            runs.append((index, [index]))
    return runs


class SegmentWriter:
    """Streams AI result slices into one segment, honouring Segment Editor masking.

    >>> writer = SegmentWriter(segmentation_node, segment_id, volume_node, EditMasking())  # doctest: +SKIP
    >>> writer.write_slice(axis=2, slice_index=40, mask_frame=mask)  # rows J, columns I  # doctest: +SKIP

    Call only from the thread that owns MRML (Slicer's main thread). Each call rewrites that one
    slice of the segment: inside the editable area the segment becomes ``mask_frame``; outside it the
    segment keeps what it had.
    """

    def __init__(
        self,
        segmentation_node,
        segment_id: str,
        reference_volume_node,
        masking: EditMasking | None = None,
        defer_surface: bool = True,
    ):
        self.segmentation_node = segmentation_node
        self.segment_id = segment_id
        self.reference_volume_node = reference_volume_node
        self.masking = masking or EditMasking()
        segment_or_error(segmentation_node, segment_id)
        binary_labelmap_layer(segmentation_node, segment_id)
        self.shape_kji = volume_shape_kji(reference_volume_node)
        editable = self.masking.editable_area_labelmap_kji
        if editable is not None and tuple(editable.shape) != self.shape_kji:
            raise OutputError(
                f"editable area has shape {tuple(editable.shape)}, the volume {self.shape_kji}",
                "compute the editable area on the reference volume's grid",
            )
        self._volume_to_segmentation = volume_ijk_to_segmentation(segmentation_node, reference_volume_node)
        self._use_volume_as_reference_geometry()
        #: the 3D surfaces of the segments written, rebuilt every few seconds instead of after every slice;
        #: ``defer_surface=False``: Slicer's own behaviour, every surface converted after each slice
        self.surface = SurfaceDeferral(segmentation_node, enabled=defer_surface)
        #: (i0, i1, j0, j1, k0, k1) of all slices written so far, volume IJK; None before the first write.
        self.modified_extent_ijk: tuple[int, ...] | None = None
        #: True once a write reached Slicer (even one that then failed): the segment may have changed
        self.touched = False
        # (extent, packed region, packed values, shape) of each slab, in order: the voxels the writes set
        # (the editable part of each slice) and what they left there. A failed run takes back from its
        # target only those it still holds as written, and gives other segments back only voxels some
        # write added (where it may have taken theirs).
        self._written: list[tuple[tuple[int, ...], np.ndarray, np.ndarray, tuple[int, ...]]] = []

    def _use_volume_as_reference_geometry(self) -> None:
        """New segmentations take the volume's grid, as the Segment Editor does on first edit."""
        slicer = slicer_module()
        segmentation = self.segmentation_node.GetSegmentation()
        parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        if (
            not segmentation.GetConversionParameter(parameter)
            and self.segmentation_node.GetScene() is not None
        ):
            self.segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(
                self.reference_volume_node
            )

    def _lattice_of(self, segment_id: str):
        """(image-to-segmentation matrix, offset) to build modifiers on ``segment_id``'s layer lattice."""
        layer = binary_labelmap_layer(self.segmentation_node, segment_id)
        if layer is None or extent_is_empty(layer):
            return self._volume_to_segmentation, np.zeros(3, dtype=int)
        layer_to_segmentation = image_to_world(layer)
        offset_ijk = _lattice_offset_ijk(layer_to_segmentation, self._volume_to_segmentation)
        if offset_ijk is None:
            raise OutputError(
                f"segment '{segment_id}' of '{self.segmentation_node.GetName()}' is on another grid than "
                f"volume '{self.reference_volume_node.GetName()}'",
                "segment the volume the segmentation was made on, or use a new segmentation",
            )
        return layer_to_segmentation, offset_ijk

    def _modifier(self, segment_id: str, values_kji: np.ndarray, extent_ijk: list[int]):
        """A modifier image on ``segment_id``'s lattice covering ``extent_ijk`` (volume IJK)."""
        matrix, offset_ijk = self._lattice_of(segment_id)
        shifted = [extent_ijk[n] + int(offset_ijk[n // 2]) for n in range(6)]
        return oriented_image(values_kji, shifted, matrix), shifted

    def _slice_extent(self, axis: int, slice_index: int) -> list[int]:
        extent = full_extent_ijk(self.shape_kji)
        extent[2 * axis] = extent[2 * axis + 1] = slice_index
        return extent

    def write_slice(self, axis: int, slice_index: int, mask_frame: np.ndarray) -> None:
        """Make the segment equal ``mask_frame`` on slice ``slice_index`` along IJK ``axis``.

        Only the editable part of the slice changes; ``mask_frame`` follows the frame convention
        (axis K: rows J, columns I; axis J: rows K, columns I; axis I: rows K, columns J).
        """
        self.write_slices(axis, [(slice_index, mask_frame)])

    def write_slices(self, axis: int, slices: list[tuple[int, np.ndarray]]) -> None:
        """:meth:`write_slice` for several ``(slice_index, mask_frame)`` at once. The last one given for
        a slice wins: the segment ends as if they were written in order, and segments it may overwrite
        lose voxels only under that last mask (a slice propagated, then cleared by the stop rule between
        two polls, erases nothing of its neighbours).

        Neighbouring slices go to Slicer as one slab: a call costs about the same for 1 or 10 slices
        (25-30 ms on a 512 x 512 x 100 segment, slicer-core on the 2-core development CPU), and a fast
        model (SAM 2 on a GPU: a slice every 10 ms) yields several slices between two polls of the panel.
        """
        if axis not in (0, 1, 2):
            raise OutputError(f"slice axis {axis!r} is not 0 (I), 1 (J) or 2 (K)", "give axis 0, 1 or 2")
        last = self.shape_kji[2 - axis] - 1
        expected = tuple(n for k, n in enumerate(self.shape_kji) if k != 2 - axis)
        masks: dict[int, np.ndarray] = {}
        for slice_index, mask_frame in slices:
            if not 0 <= slice_index <= last:
                raise OutputError(
                    f"slice {AXIS_NAMES[axis]}={slice_index} is outside the volume (0..{last})",
                    "write slices of the reference volume",
                )
            mask = np.asarray(mask_frame)
            if mask.shape != expected:
                raise OutputError(
                    f"mask of slice {AXIS_NAMES[axis]}={slice_index} has shape {mask.shape}, not {expected}",
                    "pass frames in the volume's frame convention",
                )
            masks[int(slice_index)] = mask.astype(bool)
        for first, run in _contiguous_runs(sorted(masks)):
            self._write_slab(axis, first, np.stack([masks[i] for i in run], axis=2 - axis))

    def _write_slab(self, axis: int, first: int, masks_kji: np.ndarray) -> None:
        """Write the neighbouring slices ``first ..`` (stacked along the KJI axis of ``axis``)."""
        count = masks_kji.shape[2 - axis]
        editable = self.masking.editable_area_labelmap_kji
        if editable is None:
            editable_kji = np.ones_like(masks_kji)
        else:
            editable_kji = np.take(editable, range(first, first + count), axis=2 - axis).astype(bool)
        add_kji = (masks_kji & editable_kji).astype(np.uint8)
        keep_kji = (~(~masks_kji & editable_kji)).astype(np.uint8)
        extent = self._slice_extent(axis, first)
        extent[2 * axis + 1] = first + count - 1

        slicer = slicer_module()
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        segment_id = self.segment_id
        all_others = [other for other in segment_ids(self.segmentation_node) if other != segment_id]
        overwrite_ids = self.masking.segments_to_overwrite(self.segmentation_node, segment_id)
        self.touched = True
        if editable_kji.any():  # recorded first: a write that then fails may have set some
            packed = (np.packbits(editable_kji), np.packbits(add_kji))
            self._written.append((tuple(extent), *packed, add_kji.shape))
        # nothing of the segment where the slices remove: skip that pass (fresh slices of a run; each
        # pass costs about 20 ms on a 512 x 512 x 100 segment, slicer-core on the 2-core CPU)
        if not keep_kji.all() and self._has_voxels_under(segment_id, keep_kji == 0, extent):
            # Removing only touches this segment's own label (minimumOfAllSegments off); listing every other
            # segment as overwritable stops Slicer from splitting the layer for a removal.
            image, shifted = self._modifier(segment_id, keep_kji, extent)
            with self.surface.writing(segment_id):
                set_binary_labelmap(
                    image, self.segmentation_node, segment_id, logic.MODE_MERGE_MIN, shifted, all_others
                )
        if add_kji.any():
            image, shifted = self._modifier(segment_id, add_kji, extent)
            with self.surface.writing(segment_id):
                set_binary_labelmap(
                    image, self.segmentation_node, segment_id, logic.MODE_MERGE_MASK, shifted, overwrite_ids
                )
            self._erase_from_other_layers(add_kji, extent, overwrite_ids, all_others)
        self._mark_in_progress()
        self._grow_modified_extent(extent)

    def _erase_from_other_layers(
        self, add_kji, extent, overwrite_ids: list[str], all_others: list[str]
    ) -> None:
        """Overwritable segments in other layers lose the added voxels (same-layer ones already did)."""
        segmentation = self.segmentation_node.GetSegmentation()
        logic = slicer_module().vtkSlicerSegmentationsModuleLogic
        own_layer = segmentation.GetLayerIndex(self.segment_id)
        added = add_kji.astype(bool)
        for other in overwrite_ids:
            if segmentation.GetLayerIndex(other) == own_layer:
                continue
            if not self._has_voxels_under(other, added, extent):
                continue
            image, shifted = self._modifier(other, (~added).astype(np.uint8), extent)
            with self.surface.writing(other):
                set_binary_labelmap(
                    image, self.segmentation_node, other, logic.MODE_MERGE_MIN, shifted, all_others
                )

    def _has_voxels_under(self, segment_id: str, added_kji: np.ndarray, extent: list[int]) -> bool:
        """Whether ``segment_id`` has any voxel where ``added_kji`` is set (skips needless writes)."""
        layer = binary_labelmap_layer(self.segmentation_node, segment_id)
        values_kji = image_values_kji(layer) if layer is not None else None
        if values_kji is None:
            return False
        _, offset_ijk = self._lattice_of(segment_id)
        layer_extent = layer.GetExtent()
        label_value = segment_or_error(self.segmentation_node, segment_id).GetLabelValue()
        region = []
        for a in (2, 1, 0):
            low = max(extent[2 * a] + offset_ijk[a], layer_extent[2 * a])
            high = min(extent[2 * a + 1] + offset_ijk[a], layer_extent[2 * a + 1])
            if low > high:
                return False
            region.append((low, high, low - offset_ijk[a] - extent[2 * a]))
        source = tuple(
            slice(low - layer_extent[2 * a], high - layer_extent[2 * a] + 1)
            for (low, high, _), a in zip(region, (2, 1, 0), strict=True)
        )
        target = tuple(slice(start, start + high - low + 1) for (low, high, start) in region)
        return bool(np.any((values_kji[source] == label_value) & added_kji[target]))

    def _writes_kji(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]] | None:
        """(region_kji, last_values_kji, ever_added_kji, extent_ijk) of all writes so far over the extent
        they cover (volume IJK): the voxels set, the value the last write left there, and the voxels any
        write added (one written and then cleared again counts). None before the first write."""
        if not self._written:
            return None
        extents = np.array([extent for extent, _, _, _ in self._written])
        low, high = extents[:, 0::2].min(axis=0), extents[:, 1::2].max(axis=0)  # (i, j, k)
        shape_kji = tuple(int(n) for n in (high - low + 1)[::-1])
        region_kji, values_kji = np.zeros(shape_kji, dtype=bool), np.zeros(shape_kji, dtype=bool)
        ever_added_kji = np.zeros(shape_kji, dtype=bool)
        for extent, packed_region, packed_values, shape in self._written:
            i0, j0, k0 = (np.array(extent[0::2]) - low).tolist()
            count = int(np.prod(shape))
            region = np.unpackbits(packed_region, count=count).reshape(shape).astype(bool)
            values = np.unpackbits(packed_values, count=count).reshape(shape).astype(bool)
            box = (slice(k0, k0 + shape[0]), slice(j0, j0 + shape[1]), slice(i0, i0 + shape[2]))
            region_kji[box] |= region
            values_kji[box] = np.where(region, values, values_kji[box])  # the later write wins
            ever_added_kji[box] |= values
        extent_ijk = tuple(int(v) for pair in zip(low, high, strict=True) for v in pair)
        return region_kji, values_kji, ever_added_kji, extent_ijk

    def added_voxels(self) -> tuple[np.ndarray, tuple[int, ...], np.ndarray] | None:
        """(mask_kji, extent_ijk, volume IJK -> segmentation matrix) of every voxel the writes added to the
        segment, over the extent they cover (volume IJK): the only voxels they can have taken from other
        segments. None when they added none."""
        writes = self._writes_kji()
        if writes is None or not writes[2].any():
            return None
        _, _, ever_added_kji, extent_ijk = writes
        return ever_added_kji, extent_ijk, self._volume_to_segmentation

    def written_voxels(self) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], np.ndarray] | None:
        """(region_kji, values_kji, extent_ijk, volume IJK -> segmentation matrix): every voxel the writes
        set in the segment (the editable part of each slice written) and the value the last write left
        there, over the extent they cover (volume IJK). None when they set none."""
        writes = self._writes_kji()
        if writes is None:
            return None
        region_kji, values_kji, _, extent_ijk = writes
        return region_kji, values_kji, extent_ijk, self._volume_to_segmentation

    def refresh_surface(self) -> None:
        """Rebuild the 3D surfaces of the segments written when it is time (see :mod:`.mrml_surface`)."""
        self.surface.maybe_rebuild()

    def close(self) -> None:
        """The run ended: the 3D surfaces of the segments written are built (see :mod:`.mrml_surface`)."""
        self.surface.close()

    def _mark_in_progress(self) -> None:
        logic = slicer_module().vtkSlicerSegmentationsModuleLogic
        segment = segment_or_error(self.segmentation_node, self.segment_id)
        if logic.GetSegmentStatus(segment) == logic.NotStarted:
            logic.SetSegmentStatus(segment, logic.InProgress)

    def _grow_modified_extent(self, extent: list[int]) -> None:
        if self.modified_extent_ijk is None:
            self.modified_extent_ijk = tuple(extent)
            return
        old = self.modified_extent_ijk
        self.modified_extent_ijk = tuple(
            min(old[n], extent[n]) if n % 2 == 0 else max(old[n], extent[n]) for n in range(6)
        )
