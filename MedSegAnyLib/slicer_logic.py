"""What the Slicer module does, without Qt: prompts from markups, streamed AI writes into a segment, undo.

Everything the MedSegAny panel does goes through :class:`SlicerSegmentationLogic`, so it can be driven
from Slicer's Python console and tested headless with ``slicer-core``::

    >>> logic = SlicerSegmentationLogic(model="litemedsam")                       # doctest: +SKIP
    >>> logic.set_target(volume_node, segmentation_node, segment_id)            # doctest: +SKIP
    >>> step = logic.segment(roi_node=roi, positive_points_node=plus)          # doctest: +SKIP
    >>> logic.undo()                                                            # doctest: +SKIP

Threads: the model calls (:meth:`SlicerSegmentationLogic.compute`) may run in a worker thread
(:mod:`medsegany.slicer_worker`); everything that touches MRML (:meth:`~SlicerSegmentationLogic.begin_action`,
:meth:`AIAction.apply`, :meth:`~SlicerSegmentationLogic.finish_action`, undo) runs on the main thread.
:class:`RunningAction` is the glue the widget's timer polls; the synchronous methods use the same steps.

One AI action (a prompt + propagation run, a correction, a re-propagation) is one undo step: the
segments it may change are snapshotted before it, and again after it for redo. A cancelled run keeps
the slices written so far and is one undo step too. Each finished action stores its provenance (model,
intensity window, every prompt in IJK and the volume's IJK->RAS) as JSON in the segment tag
:data:`PROVENANCE_TAG`, so a saved scene says how each segment was made.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import math
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .errors import MedSegAnyError, OutputError, PromptError
from .geometry import slice_axis_of_plane
from .mrml_markups import prompts_from_markups
from .mrml_masking import edit_masking_from_editor_node
from .mrml_segment import EditMasking, SegmentWriter, segment_mask_kji, segment_or_error
from .mrml_terminology import create_segment as create_segment  # the panel's "New segment" (re-exported)
from .mrml_undo import (
    SavedSegment,
    SegmentSnapshot,
    redo_keeping_later_edits,
    snapshot_segment,
    snapshot_segments,
    undo_keeping_later_edits,
)
from .mrml_volume import volume_from_node, world_ijk_to_ras
from .mrml_vtk import matrix_to_numpy
from .out_of_memory import RanOutOfMemoryError
from .prompts import AXIS_NAMES, SlicePrompts
from .slices import frame_of
from .volume import Volume

#: Segment tag holding the JSON provenance of the AI actions that made the segment.
PROVENANCE_TAG = "MedSegAny.Provenance"
#: Names of the markups nodes the module places prompts in.
PROMPT_NODE_NAMES = ("MedSegAny box", "MedSegAny +", "MedSegAny -")
#: Undo steps kept; each holds two cropped segment snapshots and two bit-packed object masks
#: (a 512 x 512 x 300 volume packs to 9.8 MB), so 20 steps stay under ~0.5 GB in the worst case.
MAX_UNDO_STEPS = 20
#: Directions offered in the panel -> the session's names ("up" = increasing slice index).
DIRECTION_NAMES = {
    "both": "both",
    "up": "forward",
    "down": "backward",
    "forward": "forward",
    "backward": "backward",
}


# ------------------------------------------------------------------------------------------ small helpers


def view_slice_axis(slice_node, volume_node, tolerance_deg: float = 1.0) -> int:
    """The IJK axis a slice view (Red/Yellow/Green) cuts the volume along; oblique views are refused.

    The view's normal is the third column of its SliceToRAS; it must be parallel, within
    ``tolerance_deg``, to the normal of one voxel plane of the volume in world RAS.
    """
    normal_ras = matrix_to_numpy(slice_node.GetSliceToRAS())[:3, 2]
    axis = slice_axis_of_plane(normal_ras, world_ijk_to_ras(volume_node), tolerance_deg)
    if axis is None:
        view = slice_node.GetLayoutName() or slice_node.GetName()
        raise PromptError(
            f"the {view} view is oblique to volume '{volume_node.GetName()}'",
            "reset the view to the volume's axes (slice view menu: Reset field of view / Rotate to volume "
            "plane) or prompt in another view",
        )
    return axis


def view_slice_index(slice_node, volume_node, axis: int) -> int:
    """The slice of ``volume_node`` along IJK ``axis`` that a slice view shows: the voxel plane through
    the view's centre (the translation of its SliceToRAS), the nearest one when the view lies beyond
    the volume."""
    from .geometry import apply_affine
    from .prompts import snap_index

    centre_ras = matrix_to_numpy(slice_node.GetSliceToRAS())[:3, 3]
    centre_ijk = apply_affine(np.linalg.inv(world_ijk_to_ras(volume_node)), centre_ras[None])[0]
    count = volume_node.GetImageData().GetDimensions()[axis]
    return int(np.clip(snap_index(centre_ijk[axis]), 0, count - 1))


def keep_prompts_on_the_new_points_slice(
    placed_node, prompt_nodes, volume_node, axis: int, covers_slice: Callable[[int], bool] | None = None
) -> int | None:
    """A point placed on another slice than the prompt's other markups starts a prompt there, as a new
    box does: the ROI and the points on other slices are removed (a correction on another slice was
    refused, its point sent with the old box). ``placed_node``: the point list just clicked in;
    ``prompt_nodes``: the panel's (ROI, positive, negative). Negative points with no positive point on
    their slice are a prompt of their own only where the object has a mask to correct (``covers_slice``
    of that slice, e.g. :meth:`SlicerSegmentationLogic.object_covers_slice`); elsewhere nothing is
    removed. Returns the new point's slice (None: no point)."""
    from .mrml_markups import clear_markups, points_ijk_from_fiducials, roi_corners_ras
    from .prompts import snap_index

    volume = volume_from_node(volume_node, copy=False)
    placed = points_ijk_from_fiducials(volume, placed_node)
    if not placed:
        return None
    slice_index = snap_index(placed[-1][axis])
    roi, *point_nodes = prompt_nodes

    def slices_of(node) -> list[int]:
        slices = []
        for n in range(node.GetNumberOfControlPoints()):
            position_ras = np.zeros(3)
            node.GetNthControlPointPositionWorld(n, position_ras)
            slices.append(snap_index(volume.ras_to_ijk_points(position_ras[None])[0, axis]))
        return slices

    positive = point_nodes[0] if point_nodes else None
    alone = placed_node is not positive and (positive is None or slice_index not in slices_of(positive))
    if alone and (covers_slice is None or not covers_slice(slice_index)):
        return slice_index  # negative points with no mask to correct: the markups stay as they were
    if roi is not None and roi.GetNumberOfControlPoints():
        roi_slice = snap_index(volume.ras_to_ijk_points(roi_corners_ras(roi))[:, axis].mean())
        if roi_slice != slice_index:
            clear_markups(roi)
    for node in point_nodes:
        if node is None:
            continue
        for n, point_slice in reversed(list(enumerate(slices_of(node)))):
            if point_slice != slice_index:
                node.RemoveNthControlPoint(n)
    return slice_index


def placed_view_slice(slice_node, volume_node, axis: int, position_ras) -> int | None:
    """The slice the view of ``slice_node`` shows (:func:`view_slice_index`) when world ``position_ras`` lies
    on the view's plane, i.e. was placed in that view; None otherwise (placed in another view).

    Prompts placed in a view go on that slice: a view up to 1 degree off the volume's axes
    (:func:`view_slice_axis` accepts it) cuts several slices across its width. Clicks 90 mm apart in the
    Red view of a volume tilted 0.6 degrees fell on K=20 and K=21: the second click was refused as "not on
    point 0's slice", and removed the first one (and the box) as a prompt on a new slice."""
    slice_to_ras = matrix_to_numpy(slice_node.GetSliceToRAS())
    normal_ras = slice_to_ras[:3, 2] / np.linalg.norm(slice_to_ras[:3, 2])
    spacing = np.linalg.norm(world_ijk_to_ras(volume_node)[:3, :3], axis=0)
    # Slicer places a click on the view's plane (to float precision); a tenth of a voxel leaves room
    if abs((np.asarray(position_ras, dtype=float) - slice_to_ras[:3, 3]) @ normal_ras) > 0.1 * spacing.min():
        return None
    return view_slice_index(slice_node, volume_node, axis)


def snap_last_point_to_view_slice(point_node, slice_node, volume_node, axis: int) -> None:
    """Put the point just placed in ``point_node`` (its last control point) on the slice the view shows,
    when it was placed in that view (:func:`placed_view_slice`); elsewhere it is left as it is."""
    count = point_node.GetNumberOfControlPoints()
    if count == 0:
        return
    position_ras = np.zeros(3)
    point_node.GetNthControlPointPositionWorld(count - 1, position_ras)
    slice_index = placed_view_slice(slice_node, volume_node, axis, position_ras)
    volume = volume_from_node(volume_node, copy=False)
    point_ijk = volume.ras_to_ijk_points(position_ras[None])[0]
    if slice_index is None or point_ijk[axis] == slice_index:
        return
    point_ijk[axis] = float(slice_index)
    point_node.SetNthControlPointPositionWorld(count - 1, *volume.ijk_to_ras_points(point_ijk[None])[0])


def flatten_roi_to_view_slice(roi_node, slice_node, volume_node, axis: int) -> int:
    """:func:`flatten_roi_to_slice` onto the slice the view shows, for an ROI just drawn in that view
    (:func:`placed_view_slice` of its centre); its own nearest slice otherwise."""
    from .mrml_markups import roi_corners_ras

    centre_ras = roi_corners_ras(roi_node).mean(axis=0)
    slice_index = placed_view_slice(slice_node, volume_node, axis, centre_ras)
    return flatten_roi_to_slice(roi_node, volume_node, axis, slice_index)


def set_roi_box_ijk(roi_node, volume_node, box_ijk) -> None:
    """Place an ROI exactly on the voxel box ``box_ijk`` (i0, j0, k0, i1, j1, k1) of ``volume_node``.

    The ROI is aligned with the volume's voxel axes in world RAS (its own parent transforms are
    accounted for); a box flat along one axis gives a zero-thickness ROI, i.e. a prompt rectangle.
    """
    from .mrml_vtk import node_to_world, numpy_to_matrix

    ijk_to_ras = world_ijk_to_ras(volume_node)
    low, high = np.asarray(box_ijk[:3], dtype=float), np.asarray(box_ijk[3:], dtype=float)
    low, high = np.minimum(low, high), np.maximum(low, high)
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    axes_ras = ijk_to_ras[:3, :3] / spacing
    axes_ras[:, 0] *= np.sign(np.linalg.det(axes_ras))  # an ROI's frame must be right-handed
    object_to_world = np.eye(4)
    object_to_world[:3, :3] = axes_ras
    object_to_world[:3, 3] = ijk_to_ras[:3, :3] @ ((low + high) / 2.0) + ijk_to_ras[:3, 3]
    world_to_node = np.linalg.inv(node_to_world(roi_node, PromptError, "ROI"))
    roi_node.GetObjectToNodeMatrix().DeepCopy(numpy_to_matrix(world_to_node @ object_to_world))
    roi_node.SetSize(*((high - low) * spacing))


def flatten_roi_to_slice(roi_node, volume_node, axis: int, slice_index: int | None = None) -> int:
    """Make an ROI drawn in a slice view an exact rectangle on one slice of ``volume_node``; its index.

    Slicer gives an interactively placed ROI some thickness; the prompt needs zero thickness along the
    view's axis. The ROI keeps its in-plane extent (voxel bounding box of its corners), is aligned with
    the volume's voxel axes, centred on ``slice_index`` (the slice the view shows, see
    :func:`snap_last_point_to_slice`; by default the nearest slice) and set to zero size along ``axis``.
    """
    from .mrml_markups import roi_corners_ras
    from .prompts import snap_index

    volume = volume_from_node(volume_node, copy=False)
    corners_ijk = volume.ras_to_ijk_points(roi_corners_ras(roi_node))
    low, high = corners_ijk.min(axis=0), corners_ijk.max(axis=0)
    if slice_index is None:
        slice_index = snap_index((low[axis] + high[axis]) / 2.0)
    low[axis] = high[axis] = slice_index
    set_roi_box_ijk(roi_node, volume_node, (*low, *high))
    return int(slice_index)


def read_provenance(segmentation_node, segment_id: str) -> dict[str, Any] | None:
    """The provenance JSON a MedSegAny action stored on a segment, or None (also for a tag that is no
    longer JSON: a file saved by an older version cut it at a "|")."""
    text = _get_tag(segment_or_error(segmentation_node, segment_id), PROVENANCE_TAG)
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def frame_pixels_record(session: Any, axis: int | None) -> dict[str, Any] | None:
    """What the model saw of the frames along ``axis`` (the CLI's ``--frame-pixels``): the session's
    choice, the frames' (row, column) pixel size in mm and whether they reached the model resampled to
    square pixels (a 2D model whose resize keeps the aspect, pixels not square: medsegany.frame_aspect)."""
    if session is None:
        return None
    record: dict[str, Any] = {"setting": "square" if session.square_pixels else "as-given"}
    if axis is not None:
        from .frame_aspect import SquarePixelFrames, frame_spacing_mm

        record["axis"] = AXIS_NAMES[axis]
        record["pixel_mm"] = [round(v, 4) for v in frame_spacing_mm(session.volume.spacing_ijk, axis)]
        record["resampled_to_square"] = isinstance(session.frame_model(axis), SquarePixelFrames)
    return record


def provenance_json(record: dict[str, Any]) -> str:
    """``record`` as JSON with no "|": Slicer separates a segment's tags with "|" in a saved .seg.nrrd and
    does not escape it, so a volume named "CT|1" cut the tag there (JSON reads ``\\u007c`` back as "|")."""
    return json.dumps(record).replace("|", "\\u007c")


def _get_tag(segment, name: str) -> str | None:
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def _set_tag(segment, name: str, value: str | None) -> None:
    if value is None:
        segment.RemoveTag(name)
    else:
        segment.SetTag(name, value)


def prompts_to_json(prompts: SlicePrompts) -> dict[str, Any]:
    return {
        "axis": AXIS_NAMES[prompts.axis],
        "slice_index": prompts.slice_index,
        "box_ijk": None if prompts.box_ijk is None else [float(v) for v in prompts.box_ijk],
        "points_ijk": [[float(v) for v in p] for p in prompts.points_ijk],
        "point_labels": list(prompts.point_labels),
    }


# ------------------------------------------------------------------------------------------ undo records


@dataclass
class ObjectState:
    """A session object's state, so that undo also rewinds what the model remembers and what the next
    propagation re-runs: its mask, and copies of everything the session keeps about its prompts and runs
    (prompts and drawn masks, their roles, what changed since the last run, where each slice came from,
    the confidence the stop rule scales by, the last complete run). Restored prompts are new objects, so
    a SAM 2 tracker rebuilds the object's memory from them when next used."""

    bookkeeping: dict[str, Any]  # SegmentObject field -> a deep copy of its value
    mask_packed: np.ndarray  # np.packbits of the bool KJI mask (1 bit per voxel)
    shape_kji: tuple[int, int, int]

    # what identifies the object, and its mask (packed apart): not bookkeeping
    NOT_BOOKKEEPING = ("object_id", "name", "color_rgb", "mask_kji")

    @classmethod
    def of(cls, segment_object) -> ObjectState:
        names = [f.name for f in fields(segment_object) if f.name not in cls.NOT_BOOKKEEPING]
        return cls(
            {name: copy.deepcopy(getattr(segment_object, name)) for name in names},
            np.packbits(segment_object.mask_kji),
            tuple(segment_object.mask_kji.shape),
        )

    def restore_into(self, segment_object) -> None:
        for name, value in self.bookkeeping.items():
            setattr(segment_object, name, copy.deepcopy(value))  # the state may be restored again (redo)
        count = math.prod(self.shape_kji)
        segment_object.mask_kji[...] = np.unpackbits(self.mask_packed, count=count).reshape(self.shape_kji)


@dataclass
class UndoStep:
    """One AI action on one segment, as undo/redo needs it."""

    label: str
    segmentation_node_id: str
    segment_id: str
    before: SegmentSnapshot
    provenance_before: str | None
    object_before: ObjectState | None
    after: SegmentSnapshot | None = None
    provenance_after: str | None = None
    object_after: ObjectState | None = None
    slices_written: int = 0
    cancelled: bool = False
    #: the node itself: node IDs start again at 1 after the scene is closed, so the ID alone names the
    #: next scene's segmentation too
    segmentation_node: Any = field(default=None, repr=False, compare=False)
    #: weakref to the session the object states belong to: a rebuilt session (other model or intensity)
    #: gets none of them, and holding it would keep its image features alive
    session_ref: Any = field(default=None, repr=False, compare=False)


@dataclass
class AIAction:
    """An AI action under way: writes each arriving slice into the segment (main thread only)."""

    label: str
    details: dict[str, Any]
    writer: SegmentWriter
    step: UndoStep
    slices: list[int] = field(default_factory=list)
    axis: int | None = None  # the IJK axis of the slices written (None before the first)

    def apply(self, result) -> None:
        """Write one :class:`~medsegany.session.SliceResult` into the segment (touches that slice only)."""
        self.apply_all([result])

    def apply_all(self, results: list[Any]) -> None:
        """Write the results that arrived together, in order; neighbouring slices in one call to Slicer
        (:meth:`~medsegany.mrml_segment.SegmentWriter.write_slices`)."""
        for axis in dict.fromkeys(result.axis for result in results):
            self.writer.write_slices(
                axis, [(r.slice_index, r.mask_frame) for r in results if r.axis == axis]
            )
        for result in results:
            self.slices.append(int(result.slice_index))
            self.step.slices_written += 1
            self.axis = int(result.axis)


# ------------------------------------------------------------------------------------------ the logic


@dataclass
class _SessionKey:
    volume_node_id: str
    volume_mtime: int
    # where the voxels are in the world: editing a parent transform's matrix changes no MTime it observes
    ijk_to_world_ras: tuple[float, ...]
    model_id: str
    device: str | None
    intensity: Any


def _panel_plan(
    model: Any,
    shape_kji: tuple[int, ...],
    device: str,
    volume_bytes: int,
    axis: int | None = None,
    centre: int | None = None,
    objects: int = 1,
    available_bytes: int | None = None,
    direction: str = "both",
) -> Any:
    """The memory plan of the panel's session (``memory_estimate.plan_for_volume``): propagating along IJK
    ``axis`` from slice ``centre``; before a prompt says them, one object from the middle of the volume's
    longest axis. The session holds the whole volume, so a slab only limits the propagation
    (``crops_slab=False``). ``available_bytes``: None measures the device's room now; ``direction``: the
    session's, which a one-way slab starts or ends at ``centre`` for."""
    from .memory_estimate import plan_for_volume

    if axis is None:
        axis = 2 - int(np.argmax(shape_kji))  # KJI index -> IJK axis
    if centre is None:
        centre = shape_kji[2 - axis] // 2
    return plan_for_volume(
        model,
        tuple(shape_kji),
        axis,
        objects,
        centre,
        device,
        volume_bytes=volume_bytes,
        available_bytes=available_bytes,
        crops_slab=False,
        direction=direction,
    )


def _stale_prompt(obj: Any, slice_range: tuple[int, int] | None, unpropagated: int | None) -> int:
    """The prompted slice of ``obj`` (a session object) that a re-propagation's slab goes around.

    Inside the user's range, which the slab must hold (centred on the first of K=6 and K=9, a range 8..11
    missed the slab 5..7, and all 4 slices of the range ran where only 3 fit); and among those, one whose
    runs the propagation re-runs (``obj.dirty``). Once a slab cut its runs a prompt stays there, so first
    ``unpropagated``, the slice prompted last without propagating, then a prompt nothing was propagated
    from yet: K=6 propagated over 5..7, then K=9 placed with auto-propagate off, went around K=6 again
    and K=9's neighbours were never reached. Else the first prompted slice.
    """
    keys = obj.prompted_slices()
    inside = [key for key in keys if slice_range is None or slice_range[0] <= key <= slice_range[1]]
    candidates = inside or keys
    stale = [key for key in candidates if key in obj.dirty]
    if unpropagated in stale:
        return unpropagated
    propagated_from = {key for key, _ in obj.origins.values()}
    return ([key for key in stale if key not in propagated_from] or stale or candidates)[0]


def memory_note(estimate: Any) -> str:
    """What the panel tells after an action when the memory plan had to give way, else "". A slab is
    the slice range an action propagates over (:meth:`SlicerSegmentationLogic.range_that_fits`)."""
    plan = estimate.plan
    needs = estimate.message.split("; plan:")[0]
    if plan.slab is not None:
        return (
            f"Memory: {needs}. Only slices {plan.slab[0]}-{plan.slab[1]} fit around the prompt: a "
            "propagation covers those (a prompt near their edge continues from there)."
        )
    return f"Memory: {estimate.message}" if estimate.gave_way else ""


class SlicerSegmentationLogic:
    """The module's logic: one volume, one target segment at a time, one model, undo/redo of AI actions.

    Args:
        model: catalog id of the model, or a ready :class:`~medsegany.models.base.SliceModel` (tests).
        device: "auto"/None, "cpu", "cuda" or "mps".
        intensity: preset name (see :data:`medsegany.intensity.PRESET_NAMES`) or a window (low, high);
            applied to a copy of the voxels, never to the volume node.
        settings: propagation settings (:class:`~medsegany.propagation.PropagationSettings`).
        model_loader: ``(model_id, device) -> SliceModel``; defaults to the model registry.
    """

    def __init__(
        self,
        model: Any = "litemedsam",
        device: str | None = None,
        intensity: str | tuple[float, float] = "auto",
        settings: Any = None,
        model_loader: Callable[[str, str | None], Any] | None = None,
    ) -> None:
        self._model_choice = model
        self.device = device
        self.intensity = intensity
        self.settings = settings
        self._model_loader = model_loader
        self._models: dict[tuple[str, str | None], Any] = {}
        self.volume_node = None
        self.segmentation_node = None
        self.segment_id: str | None = None
        self.segment_editor_node = None
        self.session = None
        # frames with non-square pixels to a 2D model resampled to square ones (the CLI's --frame-pixels;
        # the panel has no switch): read by each action's session
        self.square_pixels = True
        self.memory_message = ""  # the memory plan of the current session (the panel's status tooltip)
        self.memory_note = ""  # what the panel adds to its status line when the plan had to give way
        self._session_key: _SessionKey | None = None
        self._volume: Volume | None = None
        self._objects: dict[tuple[str, str], int] = {}
        # session object id -> its slice prompted last without propagating: a Propagate's slab goes
        # around it (range_that_fits)
        self._unpropagated: dict[int, int] = {}
        self._undo: list[UndoStep] = []
        self._redo: list[UndoStep] = []
        self.running: AIAction | None = None

    # -- configuration (main thread) -----------------------------------------------------------------
    @property
    def model_id(self) -> str:
        choice = self._model_choice
        return (
            choice if isinstance(choice, str) else str(getattr(choice, "model_id", type(choice).__name__))
        )

    def configure(self, model: Any = None, device: str | None = None, intensity: Any = None) -> None:
        """Change the model, device or intensity preset; the next action starts a fresh session."""
        self._refuse_while_running("change the model or intensity")
        if model is not None:
            self._model_choice = model
        if device is not None:
            self.device = None if device == "auto" else device
        if intensity is not None:
            self.intensity = intensity

    def set_target(self, volume_node, segmentation_node, segment_id: str, segment_editor_node=None) -> None:
        """The volume to segment, and the segment AI results go into.

        ``segment_editor_node`` (a ``vtkMRMLSegmentEditorNode``) supplies the masking and overwrite
        settings; None means: editable everywhere, never overwrite other segments.
        """
        self._refuse_while_running("change the target")
        if volume_node is None or segmentation_node is None:
            raise OutputError("no volume or segmentation was chosen", "choose both in the MedSegAny panel")
        segment_or_error(segmentation_node, segment_id)
        self.volume_node = volume_node
        self.segmentation_node = segmentation_node
        self.segment_id = segment_id
        self.segment_editor_node = segment_editor_node

    def forget_scene(self) -> None:
        """The scene closes (File > Close Scene, the next case): let go of its nodes, of the session (its
        masks and image features: on a GPU, memory the next case's plan counted as taken) and of the undo
        and redo steps (they belong to its segments; MRML gives the next scene's nodes the same IDs). The
        loaded models stay. An action still running is abandoned: the caller stops it first."""
        from .out_of_memory import release_cached_memory

        self.running = None
        self.volume_node = self.segmentation_node = self.segment_editor_node = None
        self.segment_id = None
        self.session, self._session_key, self._volume = None, None, None
        self.memory_message = self.memory_note = ""
        self._objects.clear()
        self._undo.clear()
        self._redo.clear()
        release_cached_memory()  # the session's cached blocks back to the device (CUDA, MPS)

    def set_volume(self, volume_node) -> None:
        """Only the volume, before a segment is chosen (what encoding ahead needs); ``set_target`` sets
        all three."""
        self._refuse_while_running("change the volume")
        if volume_node is None:
            raise OutputError("no volume was chosen", "choose the source volume in the MedSegAny panel")
        self.volume_node = volume_node

    def volume(self) -> Volume:
        """The source volume as a private copy (refreshed when the node's voxels or geometry change)."""
        self._require_target()
        return self._source_volume()

    def _source_volume(self) -> Volume:
        if self.volume_node is None:
            raise OutputError("no volume was chosen", "choose the source volume in the MedSegAny panel")
        key = self._current_key()
        if self._volume is None or self._session_key is None or key != self._session_key:
            self._volume = volume_from_node(self.volume_node)
            self.session = None
            self._objects.clear()
            self._session_key = key
        return self._volume

    def intensity_window(self):
        """The :class:`~medsegany.intensity.IntensityWindow` the model will see (for display)."""
        from .intensity import window_for

        return window_for(self.volume(), self.intensity)

    def masking(self) -> EditMasking:
        if self.segment_editor_node is None:
            return EditMasking()
        return edit_masking_from_editor_node(
            self.segment_editor_node, self.segmentation_node, self.segment_id, self.volume_node
        )

    # -- model and session (worker thread) -----------------------------------------------------------
    def load_model(self):
        """The model instance (loaded once per model id and device; the worker thread calls this)."""
        if not isinstance(self._model_choice, str):
            return self._model_choice
        key = (self._model_choice, self.device)
        if key not in self._models:
            if self._model_loader is not None:
                model = self._model_loader(*key)
            else:
                from .models.registry import load_model

                model = load_model(self._model_choice, device=self.device)  # 2D or SAM 2-family
            warm_up = getattr(model, "warm_up", None)
            if warm_up is not None:
                # while the panel says "loading the model": a compiled encoder compiles, SAM 2 on CUDA
                # records its tracking-step graphs
                warm_up()
            self._models[key] = model
        return self._models[key]

    def memory_preview(self, volume_node: Any) -> str:
        """One line for the panel before any action: what segmenting ``volume_node`` with the chosen model
        needs on the device and whether it fits (along its longest axis). A catalog model not loaded yet
        is sized from its card, so the line shows before a download; "" when it cannot be told (no
        image, an unsupported model, a device that is not there), and while PyTorch is not imported yet:
        the panel calls this on Slicer's main thread, where importing it (and on a GPU making its CUDA
        context) would freeze the window for seconds; the panel asks again once its model has loaded."""
        import sys

        from .memory_estimate import describe_fit, profile_of_card
        from .models.catalog import get_card
        from .models.registry import resolve_device

        image = volume_node.GetImageData() if volume_node is not None else None
        if image is None or "torch" not in sys.modules:
            return ""
        try:
            device = resolve_device(self.device)
            model = self._models.get((self._model_choice, self.device), self._model_choice)
            if isinstance(model, str):
                card = get_card(model)
                if card.status == "unsupported":
                    return ""
                model = profile_of_card(card)
            shape_kji = tuple(int(n) for n in reversed(image.GetDimensions()))
            voxel_bytes = image.GetScalarSize() * image.GetNumberOfScalarComponents()
            volume_bytes = int(np.prod(shape_kji)) * voxel_bytes
            device = str(getattr(model, "device", device))  # a loaded model's own
            estimate = _panel_plan(model, shape_kji, device, volume_bytes)
        except MedSegAnyError:
            return ""
        return f"Memory: {describe_fit(estimate)}"

    @property
    def model_loaded(self) -> bool:
        """True when the configured model is loaded (and warmed up) for the configured device."""
        if not isinstance(self._model_choice, str):
            return True
        return (self._model_choice, self.device) in self._models

    def can_load_unasked(self, store: Any = None) -> bool:
        """True when loading the configured model asks the user nothing: its weights ship with MedSegAny
        or are downloaded already, and its Python packages are installed (checked without importing).

        The panel then loads the model in the background as soon as it opens. Why: on a CPU the first
        load compiles LiteMedSAM's encoder (on the 2-core development machine about 5 s from inductor's
        cache, 20-40 s the first time on a machine), and the user would otherwise wait that long for the
        first mask after drawing the first box.
        """
        if not isinstance(self._model_choice, str) or self._model_loader is not None:
            return False  # a model object or a test's loader: nothing to fetch ahead
        from .slicer_install import loads_without_asking

        return loads_without_asking(self._model_choice, store)

    def ensure_session(self):
        """The :class:`~medsegany.session.SegmentationSession` for the current volume, model, intensity."""
        from .session import SegmentationSession

        if self.session is None:
            if self._volume is None:
                raise OutputError("no volume was prepared", "call set_target() and begin an action first")
            kwargs = {} if self.settings is None else {"settings": self.settings}
            model = self.load_model()
            kwargs.update(self._memory_plan(model).session_options)
            self.session = SegmentationSession(self._volume, model=model, intensity=self.intensity, **kwargs)
            self._unpropagated.clear()  # the ids were the old session's
        self.session.square_pixels = bool(self.square_pixels)  # set since: its frames start a new cache
        return self.session

    def _memory_plan(self, model: Any) -> Any:
        """The memory plan of a session on this device: how many slices of image features it may cache,
        and whether in host memory (along the volume's longest axis: the prompt's axis is not known
        yet); ModelError when nothing fits."""
        from .memory_estimate import require_fit

        voxels_kji = self._volume.voxels_kji
        device = str(getattr(model, "device", "cpu"))
        estimate = _panel_plan(model, voxels_kji.shape, device, voxels_kji.nbytes)
        require_fit(estimate)
        self.memory_message = estimate.message
        self.memory_note = memory_note(estimate)
        return estimate.plan

    def plan_encode_ahead(self, axis: int, slice_index: int) -> Iterator[Any] | None:
        """(main thread) The worker's generator encoding the image features of ``axis``'s slices from
        ``slice_index`` outward (:meth:`~medsegany.session.SegmentationSession.encode_ahead`), or None
        when that cannot start now: an action runs, or the model is not loaded yet (loading it is the
        worker's job, not a head start's).

        The session is made here, on the main thread, so that the generator holds it: a volume, model
        or intensity changed meanwhile gives the next action a new session, and the old one's features
        are dropped with it, never used for another volume.
        """
        if self.running is not None or not self.model_loaded:
            return None
        self._source_volume()  # refresh the private copy (MRML: main thread); no segment needed yet
        return self.ensure_session().encode_ahead(axis, slice_index)

    def _object_key(self) -> tuple[str, str]:
        return (self.segmentation_node.GetID(), self.segment_id)

    def _object_id(self, create: bool) -> int | None:
        """The session object of the target segment (main thread: reads the segment's name and colour)."""
        key = self._object_key()
        if key not in self._objects and create:
            segment = segment_or_error(self.segmentation_node, self.segment_id)
            color = tuple(float(c) for c in segment.GetColor())
            self._objects[key] = self.ensure_session().add_object(segment.GetName(), color)
        return self._objects.get(key)

    def _target_object(self) -> tuple[tuple[str, str], str, tuple[float, ...]]:
        segment = segment_or_error(self.segmentation_node, self.segment_id)
        return self._object_key(), segment.GetName(), tuple(float(c) for c in segment.GetColor())

    # -- prompts (main thread) -----------------------------------------------------------------------
    def prompt_nodes(self, scene=None, create: bool = True) -> tuple[Any, Any, Any]:
        """(ROI, positive points, negative points) markups nodes the panel places prompts in."""
        scene = scene or (self.volume_node.GetScene() if self.volume_node is not None else None)
        if scene is None:
            raise OutputError("there is no scene", "choose a volume first")
        classes = ("vtkMRMLMarkupsROINode", "vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsFiducialNode")
        colors = ((1.0, 0.85, 0.0), (0.1, 0.9, 0.2), (0.95, 0.2, 0.2))
        nodes = []
        for name, class_name, color in zip(PROMPT_NODE_NAMES, classes, colors, strict=True):
            node = scene.GetFirstNodeByName(name)
            if node is None and create:
                node = scene.AddNewNodeByClass(class_name, name)
                node.CreateDefaultDisplayNodes()
                display = node.GetDisplayNode()
                if display is not None:
                    display.SetSelectedColor(*color)
                    display.SetColor(*color)
            nodes.append(node)
        return tuple(nodes)

    def prompts_from_nodes(
        self, roi_node=None, positive_points_node=None, negative_points_node=None, axis: int | None = None
    ) -> SlicePrompts:
        """Checked prompts for one slice from markups (world RAS) on the current volume.

        ``axis``: the slice axis of the view the points were placed in (needed when there is no box).
        """
        volume = self.volume()
        markups = prompts_from_markups(volume, roi_node, positive_points_node, negative_points_node)
        # negative points alone correct the slice's mask; the session refuses them where there is none
        return markups.to_slice_prompts(volume, axis, corrects_a_mask=True)

    def object_covers_slice(self, axis: int, slice_index: int) -> bool:
        """Whether the target segment's MedSegAny object has a mask on this slice of ``axis`` (a negative
        point placed there corrects it)."""
        object_id = self._object_id(create=False) if self.session is not None else None
        if object_id is None:
            return False
        obj = self.session.objects[object_id]
        if obj.axis != axis or not 0 <= slice_index < obj.mask_kji.shape[2 - axis]:
            return False
        return bool(frame_of(obj.mask_kji, axis, slice_index).any())

    def correction_range(self, prompts: SlicePrompts) -> tuple[int, int] | None:
        """Slices a new prompt on ``prompts.slice_index`` can change (None: everything): see
        :meth:`correction_range_of_slice`."""
        return self.correction_range_of_slice(prompts.axis, prompts.slice_index)

    def correction_range_of_slice(self, axis: int, slice_index: int) -> tuple[int, int] | None:
        """Slices a new prompt (points, a box or an edited mask) on ``slice_index`` of ``axis`` can change
        (None: everything).

        Those are the slices of the runs the session's own plan gives that slice
        (:meth:`~medsegany.session.SegmentationSession.runs_of_prompt`): e.g. a fresh prompt between two
        prompts of a 2D model reaches the midpoints, a correction on a propagated slice (or any prompt of a
        SAM 2 model) reaches the next prompt, the volume's end beyond the outermost prompt; a SAM 2 run
        that had stopped short of a fresh prompt carries on to it, from its own prompted slice.
        """
        object_id = self._object_id(create=False) if self.session is not None else None
        if object_id is None:
            return None
        obj = self.session.objects[object_id]
        s = slice_index
        if obj.axis != axis or not any(k != s for k in obj.prompted_slices()):
            return None
        # a run that carries on to the new prompt starts at its own (prompted) slice: the range holds it
        ends = [s] + [end for run in self.session.runs_of_prompt(object_id, s) for end in (run.key, run.last)]
        return min(ends), max(ends)

    # -- actions -------------------------------------------------------------------------------------
    def begin_action(self, label: str, details: dict[str, Any] | None = None) -> AIAction:
        """Snapshot the segments the action may change and open a writer (main thread)."""
        self._refuse_while_running("start another action")
        self.volume()  # refresh the private copy before the worker uses it
        self._forget_objects_of_deleted_segments()
        # the segments it may overwrite, fixed now: its undo snapshot and its writes take the same ones
        masking = self.masking().fixed_for(self.segmentation_node, self.segment_id)
        before = snapshot_segment(self.segmentation_node, self.segment_id, masking)
        segment = segment_or_error(self.segmentation_node, self.segment_id)
        object_id = self._object_id(create=False) if self.session is not None else None
        object_before = ObjectState.of(self.session.objects[object_id]) if object_id is not None else None
        step = UndoStep(
            label,
            self.segmentation_node.GetID(),
            self.segment_id,
            before,
            _get_tag(segment, PROVENANCE_TAG),
            object_before,
            segmentation_node=self.segmentation_node,
            session_ref=weakref.ref(self.session) if self.session is not None else None,
        )
        writer = SegmentWriter(self.segmentation_node, self.segment_id, self.volume_node, masking)
        self.running = AIAction(label, dict(details or {}), writer, step)
        return self.running

    def _forget_objects_of_deleted_segments(self) -> None:
        """Drop the session objects of segments the user deleted: nothing reaches them again, yet each kept
        a whole-volume mask (and SAM 2's memory of it) and counted as one more object in every action's
        memory plan, where it can cut propagations to a smaller slab than the device allows."""
        scene = self.segmentation_node.GetScene() if self.segmentation_node is not None else None
        if self.session is None or scene is None:
            return
        for key, object_id in list(self._objects.items()):
            node = scene.GetNodeByID(key[0])
            if node is None or node.GetSegmentation().GetSegment(key[1]) is None:
                self.session.forget_object(object_id)
                del self._objects[key]

    def compute(
        self,
        prompts: SlicePrompts | None = None,
        propagate: bool = True,
        direction: str = "both",
        slice_range: tuple[int, int] | None = None,
        target: tuple[tuple[str, str], str, tuple[float, ...]] | None = None,
        mask_prompt: tuple[int, int, np.ndarray] | None = None,
    ) -> Iterator[Any]:
        """The model's results for one action, slice by slice (safe to run in the worker thread).

        With ``prompts`` (or ``mask_prompt``: axis, slice index and the mask drawn there, a frame): segment
        the prompted slice at once, then (``propagate``) propagate. Without: re-propagate the target's
        existing prompts. Closing the generator stops between slices.
        ``target`` (object key, name, colour) is read on the main thread by the ``plan_*`` methods, so
        this generator never touches MRML.
        """
        session_direction = DIRECTION_NAMES.get(direction)
        if session_direction is None:
            raise PromptError(f"direction {direction!r} is unknown", "use both, up or down")
        session = self.ensure_session()
        key, name, color = target if target is not None else self._target_object()
        object_id = self._objects.get(key)
        prompted_now = prompts is not None or mask_prompt is not None
        if object_id is None and prompted_now:
            object_id = self._objects[key] = session.add_object(name, color)
        if object_id is None or (not session.objects[object_id].prompted_slices() and not prompted_now):
            raise PromptError(
                "this segment has no MedSegAny prompt yet", "place a box or a positive point first"
            )
        if prompts is not None:
            yield session.add_prompts(object_id, prompts)
        if mask_prompt is not None:
            yield session.add_mask(object_id, *mask_prompt)
        if prompted_now and not propagate:
            self._unpropagated[object_id] = prompts.slice_index if prompts is not None else mask_prompt[1]
        if propagate:
            # the slab goes around the slice prompted now: the mask's, when the edit is the prompt
            centre = mask_prompt[1] if mask_prompt is not None else None
            slice_range = self.range_that_fits(
                session, object_id, prompts, slice_range, centre, session_direction
            )
            yield from session.propagate([object_id], direction=session_direction, slice_range=slice_range)

    def range_that_fits(
        self,
        session: Any,
        object_id: int,
        prompts: SlicePrompts | None,
        slice_range: tuple[int, int] | None,
        centre: int | None = None,
        direction: str = "both",
    ) -> tuple[int, int] | None:
        """``slice_range`` (None: the whole axis), cut to the slab around the prompt that the memory
        plan allows when the propagation along the prompt's axis does not fit whole (SAM 2's memory of
        every tracked slice grows with the range). The session holds the whole volume, so the plan
        counts its windowed copy and masks whole (``crops_slab=False``). Sets :attr:`memory_note`.
        ``centre``: the slice prompted now when ``prompts`` does not say it (an edited slice's mask);
        ``direction``: the session's ("forward": the slab starts at ``centre``)."""
        from .memory_estimate import room_of_a_running_session

        obj = session.objects[object_id]
        if centre is None and prompts is not None:
            centre = prompts.slice_index
        elif centre is None:  # a re-propagation: around a prompt whose runs are still to run
            centre = _stale_prompt(obj, slice_range, self._unpropagated.pop(object_id, None))
        voxels_kji = session.volume.voxels_kji
        estimate = _panel_plan(
            session.model,
            voxels_kji.shape,
            session.device,
            voxels_kji.nbytes,
            obj.axis,
            centre,
            len(session.objects),
            room_of_a_running_session(session.device),
            direction,
        )
        if not estimate.plan.fits:  # nothing to cut to; a run that runs out of memory is caught
            return slice_range
        self.memory_note = memory_note(estimate)  # this action's plan, not the one its session began with
        plan = estimate.plan
        # where this action needs less than the session began with (more objects, another axis), the
        # session tightens to it for this action (the next one's plan sets its own); a plan that caches
        # every slice of its axis sets no cache limit
        gave_way = plan.cached_frames < estimate.num_frames
        cached = plan.session_options["max_cached_frames"] if gave_way else None
        session.limit_memory(cached, plan.offload_features, plan.batch_size, axis=obj.axis)
        slab = plan.slab
        if slab is None:
            return slice_range
        if slice_range is None:
            return slab
        low, high = max(slab[0], slice_range[0]), min(slab[1], slice_range[1])
        return (low, high) if low <= high else slice_range  # a range away from the prompt: the user's

    def finish_action(self, action: AIAction, cancelled: bool = False) -> UndoStep | None:
        """Close an action: snapshot for redo, store provenance, push one undo step (main thread).

        An action that wrote nothing leaves no undo step (and returns None).
        """
        if self.running is action:
            self.running = None
        action.writer.close()  # the 3D surfaces of what was written, built once (mrml_surface)
        step = action.step
        step.cancelled = cancelled
        if step.slices_written == 0:
            return None
        if self.segmentation_node.GetSegmentation().GetSegment(step.segment_id) is None:
            # the user deleted the target meanwhile: no undo step can hold it, so the other segments get
            # back what the action took from them now (as when a run fails)
            self.abort_action(action)
            raise OutputError(
                f"segment {step.segment_id} was deleted while '{action.label}' ran",
                "the other segments got back what it took; choose a target segment and run it again",
            )
        segment = segment_or_error(self.segmentation_node, step.segment_id)
        object_id = self._object_id(create=False) if self.session is not None else None
        provenance = self._provenance(segment, action, object_id, cancelled)
        _set_tag(segment, PROVENANCE_TAG, provenance)
        step.provenance_after = provenance
        step.object_after = (
            ObjectState.of(self.session.objects[object_id]) if object_id is not None else None
        )
        # the session the action ran in (a first action makes it after begin_action)
        step.session_ref = weakref.ref(self.session) if self.session is not None else None
        step.after = snapshot_segment(self.segmentation_node, step.segment_id, action.writer.masking)
        self._undo.append(step)
        del self._undo[:-MAX_UNDO_STEPS]
        self._redo.clear()
        return step

    def abort_action(self, action: AIAction) -> None:
        """Undo what a failed action wrote (it raised before finishing) and forget it."""
        if self.running is action:
            self.running = None
        if action.step.slices_written or action.writer.touched:  # a failed write may have changed some
            # as an undo of the action finished now, keeping what the user edited during the run: the
            # target gets its old voxels back where it still holds what the run wrote, and keeps the rest
            # (the user's painting while it ran: restored whole, it was lost); the other segments get back
            # only the voxels they lost where the run wrote (restored whole, they lost what the user
            # painted there during the run; given back all they lost since it began, a part the user
            # erased from them during the run came back); surfaces rebuilt there; a segment deleted
            # meanwhile stays so
            before = action.step.before
            now = snapshot_segments(self.segmentation_node, before.segment_ids)
            segment_id = action.step.segment_id
            added = action.writer.added_voxels()
            written = SavedSegment(segment_id, *(added or (None, None, None)))
            region, values, *lattice = action.writer.written_voxels() or (None, None, None, None)
            target_written = tuple(SavedSegment(segment_id, mask, *lattice) for mask in (region, values))
            undo_keeping_later_edits(
                self.segmentation_node, before, now, True, written, target_written=target_written
            )
            action.writer.surface.discard()
        action.writer.close()
        self._restore_object(action.step, action.step.object_before)

    def end_failed_action(self, action: AIAction, error: BaseException) -> UndoStep | None:
        """Close an action whose model calls raised ``error``. A model that ran out of memory keeps the
        slices written before it, as one undo step, as a cancelled run does: its message says so, and
        running again goes on from them (they were taken back, against the message). Any other error,
        or one before the first slice, takes the action back (:meth:`abort_action`)."""
        if isinstance(error, RanOutOfMemoryError) and action.step.slices_written:
            return self.finish_action(action, cancelled=True)
        self.abort_action(action)
        return None

    def run_action(
        self,
        action: AIAction,
        results: Iterable[Any],
        should_cancel: Callable[[Any], bool] | None = None,
        on_slice: Callable[[Any], None] | None = None,
    ) -> UndoStep | None:
        """Apply ``results`` one by one in this thread; ``should_cancel(result)`` stops after a slice."""
        iterator = iter(results)
        cancelled = False
        try:
            for result in iterator:
                action.apply(result)
                if on_slice is not None:
                    on_slice(result)
                if should_cancel is not None and should_cancel(result):
                    cancelled = True
                    break
        except BaseException as error:
            self.end_failed_action(action, error)
            raise
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        return self.finish_action(action, cancelled=cancelled)

    # -- the console API (synchronous) ---------------------------------------------------------------
    def segment(
        self,
        roi_node=None,
        positive_points_node=None,
        negative_points_node=None,
        axis: int | None = None,
        propagate: bool = True,
        direction: str = "both",
        slice_range: tuple[int, int] | None = None,
        should_cancel: Callable[[Any], bool] | None = None,
    ) -> UndoStep | None:
        """Prompt from markups and (optionally) propagate, writing into the target segment; one undo step."""
        action, results = self.plan_prompt_action(
            roi_node, positive_points_node, negative_points_node, axis, propagate, direction, slice_range
        )
        return self.run_action(action, results, should_cancel)

    def segment_from_edit(
        self,
        axis: int,
        slice_index: int,
        propagate: bool = True,
        direction: str = "both",
        slice_range: tuple[int, int] | None = None,
        should_cancel: Callable[[Any], bool] | None = None,
    ) -> UndoStep | None:
        """The target segment as edited on one slice becomes its prompt (:meth:`plan_edit_action`), then
        (optionally) propagation; one undo step."""
        action, results = self.plan_edit_action(axis, slice_index, propagate, direction, slice_range)
        return self.run_action(action, results, should_cancel)

    def propagate(
        self,
        direction: str = "both",
        slice_range: tuple[int, int] | None = None,
        should_cancel: Callable[[Any], bool] | None = None,
    ) -> UndoStep | None:
        """Re-propagate the target segment's prompts (e.g. further, or in one direction); one undo step."""
        action, results = self.plan_propagation(direction, slice_range)
        return self.run_action(action, results, should_cancel)

    def plan_prompt_action(
        self,
        roi_node=None,
        positive_points_node=None,
        negative_points_node=None,
        axis: int | None = None,
        propagate: bool = True,
        direction: str = "both",
        slice_range: tuple[int, int] | None = None,
    ) -> tuple[AIAction, Iterator[Any]]:
        """(action, results generator) for a prompt: the main thread applies what the generator yields."""
        prompts = self.prompts_from_nodes(roi_node, positive_points_node, negative_points_node, axis)
        # a correction re-propagates only what it can change: the session re-runs only the runs of the
        # changed prompt (correction_range says which slices); given as a slice range, it also became the
        # object's "last propagation", so a plain Propagate afterwards re-ran the whole object (SAM 2:
        # the far side, with the correction now in its memory)
        correction = self.correction_range(prompts)
        label = (
            "correction" if correction is not None else "prompt" + (" + propagation" if propagate else "")
        )
        details = {"direction": direction, "slice_range": slice_range, "prompt": prompts_to_json(prompts)}
        action = self.begin_action(label, details)
        return action, self.compute(prompts, propagate, direction, slice_range, self._target_object())

    def plan_edit_action(
        self,
        axis: int,
        slice_index: int,
        propagate: bool = True,
        direction: str = "both",
        slice_range: tuple[int, int] | None = None,
    ) -> tuple[AIAction, Iterator[Any]]:
        """(action, results) taking the target segment as it is on one slice (painted or erased with the
        Segment Editor) as that slice's prompt, then propagating from it. On a slice the AI segmented,
        that corrects the run there and re-propagates only what it can change, as a prompt does; on a
        segment painted by hand, it starts the AI from the painting. A 2D model keeps the slice as
        drawn; a SAM 2 model takes it as a mask prompt (its mask there is the drawing, resampled)."""
        self._require_target()
        count = self.volume().voxels_kji.shape[2 - axis]
        if not 0 <= slice_index < count:
            raise PromptError(
                f"slice {AXIS_NAMES[axis]}={slice_index} is outside the volume (0..{count - 1})",
                "show a slice of the volume in the view",
            )
        mask_kji = segment_mask_kji(self.segmentation_node, self.segment_id, self.volume_node)
        mask_frame = np.array(frame_of(mask_kji, axis, slice_index), dtype=bool)
        if not mask_frame.any():
            name = segment_or_error(self.segmentation_node, self.segment_id).GetName()
            raise PromptError(
                f"segment '{name}' is empty on slice {AXIS_NAMES[axis]}={slice_index}",
                "paint the object on that slice (Segment Editor) first, or place a box",
            )
        correction = self.correction_range_of_slice(axis, slice_index)  # re-run alone, as a prompt's
        label = "correction from your edit" if correction is not None else "your edit as a prompt"
        details = {
            "direction": direction,
            "slice_range": slice_range,
            "mask_prompt": {"axis": AXIS_NAMES[axis], "slice": slice_index, "voxels": int(mask_frame.sum())},
        }
        action = self.begin_action(label + (" + propagation" if propagate else ""), details)
        target, mask_prompt = self._target_object(), (axis, slice_index, mask_frame)
        return action, self.compute(None, propagate, direction, slice_range, target, mask_prompt)

    def plan_propagation(
        self, direction: str = "both", slice_range: tuple[int, int] | None = None
    ) -> tuple[AIAction, Iterator[Any]]:
        if self.session is None or self._object_id(create=False) is None:
            self.volume()
            if self.session is None or self._object_id(create=False) is None:
                raise PromptError(
                    "this segment has no MedSegAny prompt yet", "place a box or a positive point first"
                )
        action = self.begin_action(
            f"propagation {direction}", {"direction": direction, "slice_range": slice_range}
        )
        return action, self.compute(None, True, direction, slice_range, self._target_object())

    def start(self, worker, planned: tuple[AIAction, Iterator[Any]]) -> RunningAction:
        """Run a planned action's model calls in ``worker``; poll the result on the main thread."""
        action, results = planned
        try:
            handle = worker.submit(lambda context: results, label=action.label)
        except BaseException:
            self.abort_action(action)
            raise
        return RunningAction(self, action, handle)

    # -- undo / redo (main thread) -------------------------------------------------------------------
    @property
    def can_undo(self) -> bool:
        return bool(self._undo) and self.running is None

    @property
    def can_redo(self) -> bool:
        return bool(self._redo) and self.running is None

    def undo(self) -> UndoStep | None:
        """Put back the segments as they were before the last AI action; None when there is nothing."""
        self._refuse_while_running("undo")
        if not self._undo:
            return None
        step = self._undo[-1]
        node = self._node_of(step, self._undo, "Undo", "before")
        self._apply_state(node, step, undo_keeping_later_edits, step.provenance_before, step.object_before)
        self._redo.append(self._undo.pop())
        return step

    def redo(self) -> UndoStep | None:
        """Apply the last undone AI action again (its saved result, no model call)."""
        self._refuse_while_running("redo")
        if not self._redo:
            return None
        step = self._redo[-1]
        node = self._node_of(step, self._redo, "Redo", "after")
        self._apply_state(node, step, redo_keeping_later_edits, step.provenance_after, step.object_after)
        self._undo.append(self._redo.pop())
        return step

    def _node_of(self, step: UndoStep, stack: list[UndoStep], button: str, side: str) -> Any:
        """The segmentation ``step`` changed. A step whose segmentation or target segment was deleted can
        never be applied again: it is taken off ``stack`` and refused (it stayed on top, and every press
        of ``button`` refused it again, so no action ``side`` it could be undone or redone any more)."""
        scene = self.segmentation_node.GetScene() if self.segmentation_node is not None else None
        node = scene.GetNodeByID(step.segmentation_node_id) if scene is not None else None
        if node is None or (step.segmentation_node is not None and node is not step.segmentation_node):
            problem = f"the segmentation of that action ({step.label}) was deleted"
        elif node.GetSegmentation().GetSegment(step.segment_id) is None:
            problem = f"the segment of that action ({step.label}) was deleted"
        else:
            return node
        stack.remove(step)
        raise OutputError(problem, f"that step is dropped; press {button} again for the actions {side} it")

    def _apply_state(
        self, node: Any, step: UndoStep, apply: Callable, provenance: str | None, object_state
    ) -> None:
        """``apply``: :func:`~.mrml_undo.undo_keeping_later_edits` or ``redo_...`` (the target as the step
        left or found it; the other segments keep the user's later edits)."""
        apply(node, step.before, step.after)
        segment = node.GetSegmentation().GetSegment(step.segment_id)
        if segment is not None:
            _set_tag(segment, PROVENANCE_TAG, provenance)
        self._restore_object(step, object_state)

    def _restore_object(self, step: UndoStep, object_state: ObjectState | None) -> None:
        if self.session is None:
            return
        key = (step.segmentation_node_id, step.segment_id)
        object_id = self._objects.get(key)
        if object_state is None:
            if object_id is not None:
                self.session.forget_object(object_id)
                self._objects.pop(key, None)
            return
        if step.session_ref is None or step.session_ref() is not self.session:
            return  # the session was rebuilt (other volume or model): only the segment is restored
        if object_id is None:
            # the object was forgotten (the undo of the action that created it, or Accept): it comes back
            # with the state the step recorded. Redo of a segment's first action restored its voxels and
            # no object: a negative click on a propagated slice was refused as "not on point 0's slice"
            # (K=9 vs K=6) and Propagate as "no MedSegAny prompt yet"
            segment = segment_or_error(
                self.segmentation_node if step.segmentation_node is None else step.segmentation_node,
                step.segment_id,
            )
            color = tuple(float(c) for c in segment.GetColor())
            object_id = self._objects[key] = self.session.add_object(segment.GetName(), color)
        object_state.restore_into(self.session.objects[object_id])

    def accept(self, prompt_nodes: Iterable[Any] = ()) -> None:
        """Keep the segment as it is, clear the prompts; the next prompt starts a new object."""
        self._refuse_while_running("accept")
        from .mrml_markups import clear_markups

        for node in prompt_nodes:
            if node is not None:
                clear_markups(node)  # an ROI: the next box takes two clicks again
        if self.segmentation_node is not None and self.segment_id is not None:
            object_id = self._objects.pop((self.segmentation_node.GetID(), self.segment_id), None)
            if object_id is not None and self.session is not None:
                self.session.forget_object(object_id)

    # -- internals -----------------------------------------------------------------------------------
    def _provenance(self, segment, action: AIAction, object_id: int | None, cancelled: bool) -> str:
        previous = _get_tag(segment, PROVENANCE_TAG)
        try:
            record = json.loads(previous) if previous else {}
        except json.JSONDecodeError:
            record = {}
        from . import __version__

        window = self.session.intensity if self.session is not None else None
        obj = self.session.objects.get(object_id) if object_id is not None else None
        record.update(
            {
                "tool": f"MedSegAny {__version__}",
                "model_id": str(getattr(self.session.model, "model_id", self.model_id)),
                "intensity": None
                if window is None
                else {"name": window.name, "low": window.low, "high": window.high},
                "volume": {
                    "name": self.volume_node.GetName(),
                    "node_id": self.volume_node.GetID(),
                    "ijk_to_ras": np.round(self._volume.ijk_to_ras, 6).tolist(),
                },
                "prompts": []
                if obj is None
                else [prompts_to_json(obj.prompts[k]) for k in sorted(obj.prompts)],
                "frame_pixels": frame_pixels_record(self.session, None if obj is None else obj.axis),
                # slices whose drawn mask is the prompt (plan_edit_action): where, and how many voxels
                "mask_prompts": []
                if obj is None
                else [
                    {"axis": AXIS_NAMES[obj.axis], "slice": int(k), "voxels": int(mask.sum())}
                    for k, mask in sorted(obj.mask_prompts.items())
                ],
            }
        )
        actions = record.get("actions", [])
        actions.append(
            {
                "action": action.label,
                **{k: v for k, v in action.details.items() if k != "prompt"},
                "slices_written": action.step.slices_written,
                "cancelled": cancelled,
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
        )
        record["actions"] = actions[-50:]  # keep the tag small in long sessions
        return provenance_json(record)

    def _current_key(self) -> _SessionKey:
        image = self.volume_node.GetImageData()
        transform = self.volume_node.GetParentTransformNode()
        mtime = max(
            self.volume_node.GetMTime(),
            image.GetMTime() if image is not None else 0,
            transform.GetMTime() if transform is not None else 0,
        )
        intensity = copy.copy(self.intensity)
        placed = tuple(np.round(world_ijk_to_ras(self.volume_node), 9).ravel().tolist())
        return _SessionKey(self.volume_node.GetID(), mtime, placed, self.model_id, self.device, intensity)

    def _require_target(self) -> None:
        if self.volume_node is None or self.segmentation_node is None or self.segment_id is None:
            raise OutputError(
                "no volume or target segment was chosen", "choose them in the MedSegAny panel"
            )

    def _refuse_while_running(self, what: str) -> None:
        if self.running is not None:
            raise MedSegAnyError(
                f"cannot {what} while '{self.running.label}' is running", "wait or press Cancel"
            )


class RunningAction:
    """An action whose model calls run in the worker; :meth:`poll` applies arriving slices (main thread)."""

    def __init__(self, logic: SlicerSegmentationLogic, action: AIAction, handle) -> None:
        self.logic = logic
        self.action = action
        self.handle = handle
        self.finished = False
        self.step: UndoStep | None = None
        self.error: BaseException | None = None

    def cancel(self) -> None:
        """Stop after the slice being computed; what was written stays, as one undo step."""
        self.handle.cancel()

    def poll(self, max_items: int | None = None) -> bool:
        """Apply the slices that arrived; True once the action is finished (done, cancelled or failed)."""
        if self.finished:
            return True
        events = self.handle.drain(max_items)
        # everything that arrived since the last poll is written at once (a GPU yields several slices
        # per poll); the final event, if any, comes last
        items = [event.payload for event in events if event.kind == "item"]
        if items:
            try:
                self.action.apply_all(items)
            except BaseException as error:  # a write failed: stop the worker, undo this action
                self.handle.cancel()
                self.handle.wait(timeout_s=30)
                return self._end(functools.partial(self.logic.abort_action, self.action), error)
        for event in events:
            if event.kind == "error":
                end = functools.partial(self.logic.end_failed_action, self.action, event.payload)
                return self._end(end, event.payload)
            if event.kind in ("done", "cancelled"):
                finish = functools.partial(
                    self.logic.finish_action, self.action, cancelled=event.kind == "cancelled"
                )
                return self._end(finish, None)
        if items:  # the 3D view: the surface rebuilt every few seconds, drawn before the next slices
            self.action.writer.refresh_surface()
        return False

    def _end(self, close: Callable[[], Any], error: BaseException | None) -> bool:
        """Close the action (``close``: finish or abort it) and mark it finished whatever happens: one that
        raises (the target segment deleted meanwhile) leaves its error, and the panel is not left
        "running" with a worker that has stopped."""
        try:
            step = close()
        except BaseException as close_error:
            if self.logic.running is self.action:
                self.logic.running = None
            step, error = None, error or close_error
        self.step = step if error is None else None
        self.error, self.finished = error, True
        return True

    def wait(self, timeout_s: float = 60.0, poll_interval_s: float = 0.01) -> UndoStep | None:
        """Poll until finished (tests and the console); re-raises a worker error."""
        import time

        deadline = time.monotonic() + timeout_s
        while not self.poll():
            if time.monotonic() > deadline:
                raise TimeoutError(f"'{self.action.label}' did not finish within {timeout_s} s")
            time.sleep(poll_interval_s)
        if self.error is not None:
            raise self.error
        return self.step
