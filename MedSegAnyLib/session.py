"""The segmentation session: a volume, a model, objects and their prompts, streamed propagation, undo.

>>> session = SegmentationSession(read_volume("ct.nii.gz"), "medsam2_latest")  # doctest: +SKIP
>>> liver = session.add_object("liver")                                         # doctest: +SKIP
>>> session.add_prompts(liver, make_slice_prompts(session.volume, box_ijk=(100, 80, 40, 220, 200, 40)))
>>> for result in session.propagate():                                   # doctest: +SKIP
...     print(result.slice_index, result.mask_frame.sum())

``propagate()`` is a generator: each slice's mask arrives as soon as it is computed, so callers show
progress, write as results arrive and stop between slices (closing the generator leaves every slice
yielded so far in the session, and nothing else changed; the interrupted run is one undo step).

Two model families run behind the same interface:

- a 2D SAM-family :class:`~medsegany.models.base.SliceModel` (LiteMedSAM, MedSAM, SAM): each next slice is
  prompted from its neighbour's mask (:mod:`medsegany.propagation`);
- a SAM 2-family model (SAM 2 / 2.1, MedSAM2): one :class:`~medsegany.models.sam2_tracker.Sam2Tracker`
  per volume axis tracks every object with the model's memory, forward then backward from the prompted
  slice as Meta's predictor does, and stops a direction by :class:`~medsegany.session_sam2.Sam2StopRule`.

Corrections: ``add_prompts`` (points, box) or ``add_mask`` on any slice after a propagation. A slice that
a run had propagated to becomes a prompt that *corrects that run*: the next ``propagate()`` re-runs only
the runs that start at changed prompts (see :mod:`medsegany.session_runs`), i.e. from the corrected slice
away from the prompt it was propagated from, up to the next prompt or the stop; every other slice keeps
its mask. A fresh prompt placed past where a SAM 2 run stopped also re-runs that run, which now carries
on to the new prompt. ``repropagate_from(object_id, slice_index)`` forces the runs of one prompted slice.
For an object with nothing changed, ``propagate()`` re-runs everything when asked for another direction or
slice range than its last complete run, and nothing otherwise.

For a 2D model a correction without a box keeps the slice's current mask box (its bounding box plus the
propagation margin), so a negative click removes a part instead of starting from nothing; the box is grown
over the positive clicks, so one on a part the mask missed adds it.

Undo/redo (:meth:`SegmentationSession.undo`, :meth:`~SegmentationSession.redo`) restore masks and prompts
exactly from per-slice differences (:mod:`medsegany.session_history`). After an undo the SAM 2 memory of
the objects involved is rebuilt from their prompted slices' masks the next time it is needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .allocator import retained_freed_memory
from .cpu_tuning import flush_denormals_if_tuned
from .embedding_cache import FrameEmbeddingCache
from .encode_ahead import EncodeAheadInRun, EncodeAheadProgress, outward_order
from .errors import PromptError
from .exporters import SegmentInfo, default_segment_color
from .intensity import IntensityWindow, apply_window, window_for
from .models.base import FramePrediction
from .models.compute import device_type
from .out_of_memory import RanOutOfMemoryError, out_of_memory_as_model_error
from .prompts import SlicePrompts
from .propagation import ObjectAppearance, PropagationSettings, next_box, propagate_slicewise
from .session_history import History, ObjectRecord, SliceState, Transaction, capture_slice_state, pack_mask
from .session_overlap import resolve_exclusive, stored_logits
from .session_runs import Run, clip_runs, plan_runs
from .session_sam2 import Sam2StopRule, StopTracker
from .slices import AXIS_NAMES, clip_slice_range, frame_count, frame_of, frame_shape, set_frame
from .volume import Volume

DIRECTIONS = ("both", "forward", "backward")
# what became of a prompt or drawn mask when the model ran out of memory on it
NOT_APPLIED = "{what} was not applied: nothing changed"
OVERLAPS = ("independent", "exclusive")


def _object_id_list(object_ids: Iterable[int] | int | None, objects: dict[int, Any]) -> list[int]:
    """The ids ``propagate`` was given: all objects (None), one id, or an iterable of ids."""
    if object_ids is None:
        return list(objects)
    if isinstance(object_ids, (int, np.integer)) and not isinstance(object_ids, bool):
        return [int(object_ids)]  # one id: list(5) was a TypeError traceback
    not_ids = PromptError(
        f"object_ids {object_ids!r} is not an object id or a list of them",
        f"give one id or a list of ids from {sorted(objects)}",
    )
    if isinstance(object_ids, (str, bytes)):  # "1" was the ids "1": "there is no object 1. use one of [1]"
        raise not_ids
    try:
        return list(object_ids)
    except TypeError:
        raise not_ids from None


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise PromptError(
            f"direction {direction!r} is not one of {DIRECTIONS}", "use both, forward or backward"
        )


@dataclass(frozen=True)
class SliceResult:
    """One slice of one object. ``mask_frame`` is empty where the object is absent or was cleared.

    ``source``: "prompt", "propagated", "cleared", "overlap" (another object's change took or gave back
    pixels, exclusive mode), "undo" or "redo".
    """

    object_id: int
    axis: int
    slice_index: int
    mask_frame: np.ndarray  # bool (H, W) in the frame convention of medsegany.slices
    source: str
    score: float | None = None
    stop_reason: str | None = None


@dataclass
class SegmentObject:
    """One object being segmented: its prompts (by slice) and its mask on the volume grid."""

    object_id: int
    name: str
    color_rgb: tuple[float, float, float]
    mask_kji: np.ndarray
    axis: int | None = None
    prompts: dict[int, SlicePrompts] = field(default_factory=dict)
    slice_sources: dict[int, str] = field(default_factory=dict)  # slice index -> "prompt" / "propagated"
    stop_reasons: dict[int, str] = field(default_factory=dict)  # direction (+1/-1) -> why it ended
    mask_prompts: dict[int, np.ndarray] = field(default_factory=dict)  # slice -> drawn bool mask
    roles: dict[int, int] = field(default_factory=dict)  # prompted slice -> 0 fresh, +1/-1 correction
    dirty: set[int] = field(default_factory=set)  # prompted slices changed since their runs last ran
    origins: dict[int, tuple[int, int]] = field(default_factory=dict)  # propagated slice -> (key, step)
    logits_frames: dict[int, np.ndarray] = field(default_factory=dict)  # exclusive mode: raw float16 logits
    # mean decoder logit inside each decoded slice's mask: the 2D stop rule scales by the prompted slice's
    confidences: dict[int, float] = field(default_factory=dict)
    last_run: tuple[str, tuple[int, int]] | None = None  # (direction, range) of the last complete propagation
    # (key, step) of the runs that ran to their end since their prompt last changed: a run not among them
    # (its direction never asked for, or cut by a range) runs with the next propagation that plans it
    ran: set[tuple[int, int]] = field(default_factory=set)

    def prompted_slices(self) -> list[int]:
        return sorted(set(self.prompts) | set(self.mask_prompts))


class SegmentationSession:
    """Holds a volume, a model (2D SAM-family or SAM 2-family) and the objects being segmented.

    ``overlap``: "independent" (objects may overlap) or "exclusive" (a voxel belongs to the object with
    the highest logit; every object must then be prompted in the same view). ``sam2_stop``: the stop rule
    of SAM 2 directions. ``max_cached_frames``: slices of image features kept over all axes (both
    families; when the axis in use needs room, the other axes' slices go first).
    ``offload_features``: keep them in host memory, copied to the GPU when used (the memory plan's
    choice when the GPU cannot hold them all; see :mod:`medsegany.feature_offload`). ``encoder_batch``:
    at most this many slices per encoder call (None: the model's own choice). The memory plan's
    ``session_options`` give these three (:mod:`medsegany.memory_estimate`). ``square_pixels``: a 2D
    model whose resize keeps the aspect sees frames with non-square pixels (a coronal or sagittal view of
    thick slices) resampled to square ones, its masks mapped back (:mod:`medsegany.frame_aspect`).
    ``whole_shape_ijk``: when ``volume`` is a slab of a larger volume (:mod:`medsegany.slab`), that
    volume's IJK shape, which a SAM 2 model's memory is told so that the slab gets the whole volume's
    numbers (see ``Sam2Tracker.set_frames``); None: ``volume`` is whole.
    """

    def __init__(
        self,
        volume: Volume,
        model: Any = "litemedsam",
        intensity: IntensityWindow | str | tuple[float, float] | None = "auto",
        device: str | None = None,
        settings: PropagationSettings | None = None,
        max_cached_frames: int = 256,
        overlap: str = "independent",
        sam2_stop: Sam2StopRule | None = None,
        offload_features: bool = False,
        encoder_batch: int | None = None,
        square_pixels: bool = True,
        whole_shape_ijk: tuple[int, int, int] | None = None,
    ) -> None:
        from .models.registry import is_sam2_model

        if overlap not in OVERLAPS:
            raise PromptError(f"overlap {overlap!r} is not one of {OVERLAPS}", "use independent or exclusive")
        self.volume = volume
        if isinstance(model, str):
            from .models.registry import load_model

            model = load_model(model, device=device)
        self.model = model
        self.is_sam2 = is_sam2_model(model)
        self.intensity = window_for(volume, intensity)
        # The windowed copy the model sees; the user's voxels are never modified.
        self.windowed_kji = apply_window(volume.voxels_kji, self.intensity)
        self.settings = settings or PropagationSettings()
        self.sam2_stop = sam2_stop or Sam2StopRule()
        self.max_cached_frames = max_cached_frames
        self.offload_features = bool(offload_features)
        self.encoder_batch = None if encoder_batch is None else max(1, int(encoder_batch))
        # what the session was made with (its plan for the device): limit_memory tightens from these
        self._own_limits = (self.max_cached_frames, self.encoder_batch)
        self.square_pixels = bool(square_pixels)
        self.whole_shape_ijk = tuple(volume.shape_ijk) if whole_shape_ijk is None else tuple(whole_shape_ijk)
        self._frame_models: dict[tuple[int, bool], Any] = {}
        self.overlap = overlap
        self.objects: dict[int, SegmentObject] = {}
        self._caches: dict[int, FrameEmbeddingCache] = {}
        self._trackers: dict[int, Any] = {}
        self._synced: dict[int, tuple[Any, Any, Any]] = {}  # object id -> what its tracker state reflects
        self._history = History()
        # ids are never given twice: undoing remove_object brings its id back, and a new object holding it
        # became the removed one (the caller's handle on the new object then changed the old one)
        self._last_object_id = 0

    # -- objects -------------------------------------------------------------------------------------
    def add_object(self, name: str | None = None, color_rgb: tuple[float, float, float] | None = None) -> int:
        object_id = self._last_object_id = max(self._last_object_id, *self.objects, 0) + 1
        self.objects[object_id] = SegmentObject(
            object_id=object_id,
            name=name or f"object {object_id}",
            color_rgb=color_rgb or default_segment_color(object_id - 1),
            mask_kji=np.zeros(self.volume.voxels_kji.shape, dtype=bool),
        )
        return object_id

    def _object(self, object_id: int) -> SegmentObject:
        if object_id not in self.objects:
            raise PromptError(f"there is no object {object_id}", f"use one of {sorted(self.objects)}")
        return self.objects[object_id]

    def remove_object(self, object_id: int) -> list[SliceResult]:
        """Delete an object (one undo step); in exclusive mode the others take back the pixels it held."""
        obj = self._object(object_id)
        tx = self._begin("remove object")
        results = []
        try:
            tx.touch_object(object_id)
            indices = self._slices_with_content(obj) if obj.axis is not None else []
            for index in indices:
                tx.touch_slice(object_id, obj.axis, index)
            del self.objects[object_id]
            self._forget_tracker_object(object_id)
            if self.overlap == "exclusive":
                for index in indices:
                    results += self._resolve(tx, obj.axis, index, primary=None)
        finally:
            self._commit(tx)
        return results

    def forget_object(self, object_id: int) -> None:
        """Drop an object without an undo step (the Slicer panel, which keeps its own undo, when a segment
        is accepted or its creation undone): its mask, prompts and SAM 2 memory are freed."""
        self.objects.pop(object_id, None)
        self._forget_tracker_object(object_id)

    def _slices_with_content(self, obj: SegmentObject) -> list[int]:
        assert obj.axis is not None
        other = tuple(a for a in range(3) if a != 2 - obj.axis)
        filled = np.flatnonzero(obj.mask_kji.any(axis=other))
        return sorted(set(filled.tolist()) | set(obj.slice_sources) | set(obj.logits_frames))

    def _check_axis(self, obj: SegmentObject, axis: int) -> None:
        if obj.axis is not None and obj.axis != axis and obj.prompted_slices():
            raise PromptError(
                f"{obj.name} is prompted on {AXIS_NAMES[obj.axis]} slices, this prompt is on a "
                f"{AXIS_NAMES[axis]} slice",
                "prompt every slice of one object in the same view, or add a new object",
            )
        if self.overlap == "exclusive":
            for other in self.objects.values():
                if (
                    other is not obj
                    and other.axis is not None
                    and other.axis != axis
                    and other.prompted_slices()
                ):
                    raise PromptError(
                        f"exclusive overlap needs every object in one view; {other.name} is on "
                        f"{AXIS_NAMES[other.axis]} slices, this prompt is on a {AXIS_NAMES[axis]} slice",
                        "prompt all objects in the same view, or use overlap='independent'",
                    )

    def _role_for(self, obj: SegmentObject, index: int) -> int:
        """0 for a fresh prompt; the run direction for a correction on a propagated slice."""
        if index in obj.roles and index in obj.prompted_slices():
            return obj.roles[index]
        if obj.slice_sources.get(index) == "propagated" and index in obj.origins:
            return obj.origins[index][1]
        return 0

    @property
    def device(self) -> str:
        """Where the model computes ("cpu", "cuda", "cuda:1", "mps"), for messages."""
        return str(getattr(self.model, "device", "cpu"))

    @contextlib.contextmanager
    def _computing(self, outcome: str | None = None) -> Iterator[None]:
        """Around every model call: an out-of-memory error becomes a ModelError (``outcome``: what became of
        the work, for a call that writes one slice or nothing), and on a CPU the memory
        freed between slices stays in the process until the call ends (medsegany.allocator: LiteMedSAM
        0.497 -> 0.359 s a slice on the 2-core development CPU with jemalloc). On a CPU the calling thread
        also flushes denormals, as the thread that loaded the model does (the flag is per thread, and stays
        set after the call: medsegany.cpu_tuning)."""
        on_cpu = device_type(self.device) == "cpu"
        if on_cpu:
            flush_denormals_if_tuned()
        make_room = None if on_cpu else self._features_to_host_memory
        try:
            with out_of_memory_as_model_error(self.device, make_room), retained_freed_memory(on_cpu):
                yield
        except RanOutOfMemoryError as error:
            if outcome is None:
                raise
            # the error's own outcome ("what was segmented before is kept; undo removes it") fits a
            # propagation; after a prompt that changed nothing, that undo would take back the action before
            raise RanOutOfMemoryError(error.where, error.ways_out, error.done, outcome) from None

    def _features_to_host_memory(self) -> str | None:
        """After the GPU ran out of memory: keep every axis's image features in host memory from now on,
        those cached included (copied back per use: :mod:`medsegany.feature_offload`); None when they
        were there already."""
        if self.offload_features:
            return None
        self.keep_features_in_host_memory()
        return "the session now keeps the image features in host memory, which frees the GPU's share"

    def keep_features_in_host_memory(self) -> None:
        """Keep every axis's image features in host memory, those already cached included; each is
        copied to the model's device when used (the memory plan's ``offload_features``)."""
        self.offload_features = True
        for tracker in list(self._trackers.values()):
            tracker.offload_features = True
        for cache in list(self._caches.values()):
            cache.move_to_host()

    def limit_memory(
        self,
        max_cached_frames: int | None = None,
        offload_features: bool = False,
        encoder_batch: int | None = None,
        axis: int | None = None,
    ) -> None:
        """The memory settings of the coming action, at most the session's own (those it was made with):
        fewer slices of features (evicted now, those of ``axis``, the one about to be used, last), features
        in host memory, a smaller encoder batch; None leaves the session's own. The Slicer panel's plan
        for each action, which may need less than the session began with (more objects, another axis, a
        GPU whose room another program took).

        Each call replaces the last one's limits: they only ever tightened, so after one action whose plan
        gave way (3 slices of features) every later one of the session kept evicting and encoding again
        what its own plan caches whole. Features in host memory stay there (copied to the device per use;
        moving them back could run the GPU out of memory), and so do those of later slices.
        """
        own_frames, own_batch = self._own_limits
        if offload_features and not self.offload_features:
            self.keep_features_in_host_memory()
        self.encoder_batch = own_batch
        if encoder_batch is not None:
            self.encoder_batch = min(own_batch or encoder_batch, max(1, int(encoder_batch)))
        self.max_cached_frames = own_frames
        if max_cached_frames is not None:
            self.max_cached_frames = min(own_frames, max(1, int(max_cached_frames)))
        preferred = getattr(self.model, "preferred_batch_size", 4)
        for cache in list(self._caches.values()):
            cache.limit(self.max_cached_frames, self._encoder_batch(preferred))
        for tracker in list(self._trackers.values()):
            tracker.feature_cache_bytes = self.max_cached_frames * tracker.feature_bytes_per_frame()
        self._fit_feature_budget(axis)

    def _encoder_batch(self, preferred: int) -> int:
        """Slices per encoder call: the model's ``preferred`` batch, at most the session's limit."""
        limit = int(preferred) if self.encoder_batch is None else self.encoder_batch
        return max(1, min(int(preferred), limit))

    def _fit_feature_budget(self, axis: int | None) -> None:
        """Keep the image features of all axes within ``max_cached_frames`` (the memory plan counts that
        many): beyond it, the slices of the axes other than ``axis`` go, axis by axis from the lowest
        index, each axis's least recently used first (``axis``, the one in use, keeps its own within the
        budget: its cache evicts by itself). Called as slices are written and encoded ahead, so the total
        may pass the budget for a moment, by the frames one encoder call adds."""
        over = self.cached_frames() - self.max_cached_frames
        if over <= 0:
            return
        stores = [
            (other, store.evict_features if self.is_sam2 else store.evict_oldest)
            for other, store in sorted((self._trackers if self.is_sam2 else self._caches).items())
            if other != axis
        ]
        for _, evict in stores:
            over -= evict(over)
            if over <= 0:
                return

    # -- prompts -------------------------------------------------------------------------------------
    def add_prompts(self, object_id: int, prompts: SlicePrompts) -> SliceResult:
        """Set the prompts of one slice of an object and segment that slice at once (interactive feedback).

        On a slice that a propagation reached, this is a correction (see the module docstring). One undo step.
        """
        obj = self._object(object_id)
        self._check_axis(obj, prompts.axis)
        if prompts.box_ijk is None and 1 not in prompts.point_labels:
            # negative points alone remove a part of the slice's mask: without one they say nothing
            index = prompts.slice_index
            if obj.axis is None or not self._raw_mask(obj, index).any():
                raise PromptError(
                    f"only negative points on slice {AXIS_NAMES[prompts.axis]}={index}, where "
                    f"'{obj.name}' has no mask: nothing says where the object is",
                    "add a box or a positive point, or place negative points on a slice the object covers",
                )
        tx = self._begin("add_prompts")
        try:
            with self._computing(outcome=NOT_APPLIED.format(what="the prompt")):
                results = self._prompt_slice(tx, obj, prompts)
        finally:
            self._commit(tx)
        return results[0]

    def add_mask(self, object_id: int, axis: int, slice_index: int, mask_frame: np.ndarray) -> SliceResult:
        """Give an object's mask on one slice (drawn or edited by the user) as a prompt. One undo step.

        ``mask_frame``: bool (H, W) in the frame convention of :mod:`medsegany.slices`. A SAM 2 model takes
        it as a mask prompt (its output becomes the slice's mask); a 2D model keeps it as drawn.
        """
        obj = self._object(object_id)
        if axis not in (0, 1, 2):  # -1 read as K and 3 failed with an IndexError
            raise PromptError(f"axis {axis!r} is not 0, 1 or 2", "use the slice view's IJK axis: 0, 1 or 2")
        shape = frame_shape(self.volume.voxels_kji.shape, axis)
        mask_frame = np.asarray(mask_frame, dtype=bool)
        if mask_frame.shape != shape:
            raise PromptError(
                f"mask has shape {mask_frame.shape}, {AXIS_NAMES[axis]} slices are {shape}",
                "give a mask of one slice of the volume",
            )
        if not 0 <= slice_index < frame_count(self.volume.voxels_kji.shape, axis):
            raise PromptError(f"slice {slice_index} is outside the volume", "give a slice of the volume")
        self._check_axis(obj, axis)
        tx = self._begin("add_mask")
        try:
            tx.touch_object(object_id)
            role = self._role_for(obj, slice_index)
            score = None
            if self.is_sam2:
                # the tracker's state is rebuilt by model calls too (after an undo): under the same guard
                with self._computing(outcome=NOT_APPLIED.format(what="the mask")):
                    tracker = self._tracker(axis)
                    self._sync_tracker(obj, tracker)
                    logits = tracker.add_prompts(object_id, slice_index, mask_frame=mask_frame)
                score = tracker.result(object_id, slice_index).object_score_logit
                mask = logits > 0
            else:
                logits, mask = None, mask_frame
            obj.axis = axis  # after the model call: one that fails changes nothing (and is no undo step)
            obj.prompts.pop(slice_index, None)
            obj.mask_prompts[slice_index] = mask_frame.copy()
            obj.roles[slice_index] = role
            obj.dirty.add(slice_index)
            obj.ran -= {(slice_index, 1), (slice_index, -1)}
            self._mark_synced(obj)
            results = self._set_slice(tx, obj, slice_index, mask, logits, "prompt", None, score)
        finally:
            self._commit(tx)
        return results[0]

    def _prompt_slice(self, tx: Transaction, obj: SegmentObject, prompts: SlicePrompts) -> list[SliceResult]:
        index = prompts.slice_index
        tx.touch_object(obj.object_id)
        role = self._role_for(obj, index)
        axis_before, obj.axis = obj.axis, prompts.axis
        try:
            if self.is_sam2:
                logits, score = self._sam2_prompt(obj, prompts)
            else:
                current = self._raw_mask(obj, index)
                prediction = self._predict_prompts(prompts, current if current.any() else None)
                logits, score = prediction.logits_frame, prediction.iou_score
        except Exception:
            obj.axis = axis_before  # a prompt the model failed on changes nothing (and is no undo step)
            # SAM 2: the tracker may hold part of it (the slice's mask, given before the clicks): rebuilt
            self._synced.pop(obj.object_id, None)
            raise
        obj.prompts[index] = prompts
        obj.mask_prompts.pop(index, None)
        obj.roles[index] = role
        obj.dirty.add(index)
        obj.ran -= {(index, 1), (index, -1)}
        self._mark_synced(obj)
        return self._set_slice(tx, obj, index, logits > 0, logits, "prompt", None, score)

    # -- 2D model calls ------------------------------------------------------------------------------
    def frame_model(self, axis: int) -> Any:
        """The 2D model as the frames of ``axis`` reach it: ``self.model``, or it seeing square pixels
        (:func:`~medsegany.frame_aspect.frames_for_model`); its ``predict`` takes the frames' own pixels."""
        key = (axis, self.square_pixels)
        if key not in self._frame_models:
            from .frame_aspect import frames_for_model

            square = self.square_pixels and not self.is_sam2
            model = frames_for_model(self.model, self.volume.spacing_ijk, axis) if square else self.model
            self._frame_models[key] = model
        return self._frame_models[key]

    def embeddings(self, axis: int) -> FrameEmbeddingCache:
        """The embedding cache of one axis (2D models). Its features are those of its model, resampling
        included: when ``square_pixels`` has changed since, the axis starts a new cache."""
        model = self.frame_model(axis)
        if axis not in self._caches or self._caches[axis].model is not model:
            windowed = self.windowed_kji
            self._caches[axis] = FrameEmbeddingCache(
                model,
                lambda index: frame_of(windowed, axis, index),
                frame_count(windowed.shape, axis),
                max_frames=self.max_cached_frames,
                # 1 on a CPU: no batch gain
                batch_size=self._encoder_batch(getattr(self.model, "preferred_batch_size", 4)),
                offload=self.offload_features,
            )
        return self._caches[axis]

    def _predict_prompts(
        self, prompts: SlicePrompts, current_mask: np.ndarray | None = None
    ) -> FramePrediction:
        cache = self.embeddings(prompts.axis)
        embedding = cache.get(prompts.slice_index)
        points = prompts.points_frame_xy()
        box = prompts.box_frame_xyxy()
        if box is None and current_mask is not None:
            # a correction keeps the slice's mask box, grown over its positive clicks: one placed on a part
            # the mask missed is outside that box, and a box that leaves it out makes the model ignore it
            covered = current_mask.copy()
            height, width = covered.shape
            for x, y in points[prompts.labels_array() == 1]:
                covered[min(max(round(y), 0), height - 1), min(max(round(x), 0), width - 1)] = True
            box = next_box(covered, self.settings)
        return cache.model.predict(
            embedding,
            box_frame_xyxy=box,
            points_frame_xy=points if len(points) else None,
            point_labels=prompts.labels_array() if len(points) else None,
        )

    # -- image features ahead of the prompt ------------------------------------------------------------
    def cached_frames(self) -> int:
        """Slices whose image features the session holds, over all axes."""
        # copies: another thread may add an axis meanwhile (the Slicer panel's worker)
        if self.is_sam2:
            return sum(tracker.cached_frame_count for tracker in list(self._trackers.values()))
        return sum(len(cache) for cache in list(self._caches.values()))

    def encode_ahead(self, axis: int, slice_index: int) -> Iterator[EncodeAheadProgress]:
        """Encode the image features of ``axis``'s slices before any prompt: ``slice_index`` first, then
        outward (see :mod:`medsegany.encode_ahead`); a generator, one item per encoder call, so a caller
        shows progress and stops between calls (closing it keeps what was encoded). A wrong axis or slice
        is refused here, before anything runs.

        Stops when every slice of the axis is cached or when the session's caches hold
        ``max_cached_frames`` frames over all axes: nothing cached is evicted for it. Masks computed
        later are the same as without it (the same encoder on the same frames).
        """
        if axis not in (0, 1, 2):
            raise PromptError(f"axis {axis!r} is not 0, 1 or 2", "use the slice view's IJK axis: 0, 1 or 2")
        count = frame_count(self.windowed_kji.shape, axis)
        if not 0 <= int(slice_index) < count:
            raise PromptError(
                f"slice {slice_index} is outside the {count} slices along {AXIS_NAMES[axis]}",
                f"use 0..{count - 1}",
            )
        return self._encode_ahead(axis, int(slice_index), count)

    def _encode_ahead(self, axis: int, slice_index: int, count: int) -> Iterator[EncodeAheadProgress]:
        if self.is_sam2:
            tracker = self._tracker(axis)
            is_cached, batch_size = tracker.has_features, self._encoder_batch(tracker.preferred_batch_size)

            def encode(batch: list[int]) -> None:
                tracker.precompute_features(batch, batch_size=len(batch))

            def cached_on_axis() -> int:
                return tracker.cached_frame_count
        else:
            cache = self.embeddings(axis)
            is_cached, batch_size, encode = cache.__contains__, cache.batch_size, cache.encode

            def cached_on_axis() -> int:
                return len(cache)

        # what is missing is decided when the first item is asked for (a prompt may have come in between)
        room = max(0, self.max_cached_frames - self.cached_frames())
        todo = [index for index in outward_order(slice_index, count) if not is_cached(index)][:room]
        with self._computing():
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                encode(batch)
                self._fit_feature_budget(axis)
                done = min(start + batch_size, len(todo))
                yield EncodeAheadProgress(axis, tuple(batch), done, len(todo), cached_on_axis(), count)

    # -- SAM 2 ---------------------------------------------------------------------------------------
    def tracker(self, axis: int) -> Any:
        """The Sam2Tracker of one axis (SAM 2 models), created with all frames of that axis."""
        return self._tracker(axis)

    def _tracker(self, axis: int) -> Any:
        if axis not in self._trackers:
            tracker = self.model.new_tracker()
            # the cache holds max_cached_frames frames at the tracker's precision (bf16 features are smaller)
            tracker.feature_cache_bytes = self.max_cached_frames * tracker.feature_bytes_per_frame()
            tracker.offload_features = self.offload_features
            tracker.set_frames(
                np.moveaxis(self.windowed_kji, 2 - axis, 0), stack_length=int(self.whole_shape_ijk[axis])
            )
            self._trackers[axis] = tracker
        return self._trackers[axis]

    def _mark_synced(self, obj: SegmentObject) -> None:
        if self.is_sam2:
            self._synced[obj.object_id] = (obj, obj.prompts, obj.mask_prompts)

    def _forget_tracker_object(self, object_id: int) -> None:
        self._synced.pop(object_id, None)
        # a copy: encoding ahead may add an axis's tracker from the worker thread meanwhile (Slicer)
        for tracker in list(self._trackers.values()):
            tracker.remove_object(object_id)

    def _sync_tracker(self, obj: SegmentObject, tracker: Any) -> None:
        """Rebuild the object's tracker state from its prompted slices' masks when it no longer matches the
        session (after undo/redo, or when the Slicer logic restored the object's prompts)."""
        synced = self._synced.get(obj.object_id)
        if (
            synced is not None
            and synced[0] is obj
            and synced[1] is obj.prompts
            and synced[2] is obj.mask_prompts
        ):
            return
        tracker.remove_object(obj.object_id)
        for index in obj.prompted_slices():
            tracker.add_prompts(obj.object_id, index, mask_frame=self._raw_mask(obj, index))
        self._mark_synced(obj)

    def _sam2_prompt(self, obj: SegmentObject, prompts: SlicePrompts) -> tuple[np.ndarray, float]:
        tracker = self._tracker(prompts.axis)
        self._sync_tracker(obj, tracker)
        index, oid = prompts.slice_index, obj.object_id
        current = self._raw_mask(obj, index)
        known = oid in tracker.object_ids and tracker.result(oid, index) is not None
        if not known and current.any():
            # the tracker lost this slice's output (rebuilt after an undo): start from the session's mask
            tracker.add_prompts(oid, index, mask_frame=current)
        points = prompts.points_frame_xy()
        logits = tracker.add_prompts(
            oid,
            index,
            box_frame_xyxy=prompts.box_frame_xyxy(),
            points_frame_xy=points if len(points) else None,
            point_labels=prompts.labels_array() if len(points) else None,
        )
        return logits, tracker.result(oid, index).object_score_logit

    # -- propagation ---------------------------------------------------------------------------------
    def propagate(
        self,
        object_ids: Iterable[int] | int | None = None,
        direction: str = "both",
        slice_range: tuple[int, int] | None = None,
    ) -> Iterator[SliceResult]:
        """Propagate each object from its prompted slices outward; yields one result per slice.

        ``object_ids``: one object's id, a list of ids, or None for every object.
        ``direction``: "both", "forward" (increasing index) or "backward". ``slice_range`` (inclusive)
        limits what changes: runs start only at prompted slices inside it and end at its edges, and no
        slice outside it is written or cleared (a range holding no prompt of an object is a PromptError);
        a later propagation without a range finishes the runs the range cut. Only the runs of prompts
        changed since the last propagation are re-run, with the runs that never ran to their end (a
        direction not asked for before, a range that cut them) and SAM 2 runs whose gap grew
        (:meth:`_stale_runs`); an object with no change is re-run whole when the direction or range differ
        from its last complete run, and skipped otherwise (a re-run would give the same masks). Slices that
        a previous run filled beyond where this run stops are cleared (yielded with source "cleared"). The
        whole call is one undo step.
        """
        _check_direction(direction)
        ids = _object_id_list(object_ids, self.objects)
        for object_id in ids:
            obj = self._object(object_id)
            if not obj.prompted_slices():
                raise PromptError(
                    f"{obj.name} has no prompt", "place a box or a positive point on a slice first"
                )
        if slice_range is not None and len(ids) > 1:
            # several objects: a range goes to those with a prompt in it (an error only if none has one)
            inside = [i for i in ids if self._has_prompt_within(self.objects[i], slice_range)]
            ids = inside or ids[:1]
        tx = self._begin("propagate")
        try:
            with self._computing():
                for object_id in ids:
                    obj = self.objects[object_id]
                    yield from self._propagate_object(tx, obj, direction, slice_range, None)
        finally:
            self._commit(tx)

    @staticmethod
    def _has_prompt_within(obj: SegmentObject, slice_range: tuple[int, int]) -> bool:
        return any(slice_range[0] <= key <= slice_range[1] for key in obj.prompted_slices())

    def repropagate_from(
        self,
        object_id: int,
        slice_index: int,
        direction: str = "both",
        slice_range: tuple[int, int] | None = None,
    ) -> Iterator[SliceResult]:
        """Re-run the runs that start at one prompted slice (whatever changed); a generator, one undo step."""
        _check_direction(direction)  # an unknown one ran both ways, rewriting the side meant to be kept
        obj = self._object(object_id)
        if slice_index not in obj.prompted_slices():
            raise PromptError(
                f"slice {slice_index} of {obj.name} has no prompt",
                f"use one of its prompted slices {obj.prompted_slices()}",
            )
        if slice_range is not None:  # an empty or reversed range is that, whatever the slice
            clip_slice_range(slice_range, frame_count(self.windowed_kji.shape, obj.axis))
        if slice_range is not None and not slice_range[0] <= slice_index <= slice_range[1]:
            # its runs start at the slice: a range without it ran nothing, silently
            raise PromptError(
                f"slice {slice_index} lies outside the slice range {slice_range}",
                "include the slice in the range, or re-propagate without a range",
            )
        tx = self._begin("propagate")
        try:
            with self._computing():
                yield from self._propagate_object(tx, obj, direction, slice_range, {slice_index})
        finally:
            self._commit(tx)

    def _plan(self, obj: SegmentObject, direction: str = "both", new_key: int | None = None) -> list[Run]:
        """The whole volume's run plan of an object's prompted slices (and ``new_key``, with the role a
        prompt there would take), for this session's model family."""
        roles = {key: obj.roles.get(key, 0) for key in obj.prompted_slices()}
        if new_key is not None:
            roles[new_key] = self._role_for(obj, new_key)
        count = frame_count(self.windowed_kji.shape, obj.axis)
        return plan_runs(roles, 0, count - 1, direction, "sam2" if self.is_sam2 else "slice")

    def runs_of_prompt(self, object_id: int, slice_index: int) -> list[Run]:
        """The runs (direction "both") that the next ``propagate()`` runs for a prompt on ``slice_index``
        of the object's axis, whether the slice is prompted already or would be by a new prompt (with the
        role it would take: a correction, or fresh): the runs it owns, and for a SAM 2 model a run that
        stopped short of it and now carries on up to it (:meth:`_stale_runs`; not one whose own prompt
        changed since it ran: that prompt's propagation runs it). Empty when the object has no axis yet."""
        obj = self._object(object_id)
        if obj.axis is None:
            return []
        planned = self._plan(obj, "both", slice_index)
        stale = {key_step for key_step in self._stale_runs(obj, planned) if key_step[0] not in obj.dirty}
        return [run for run in planned if run.key == slice_index or (run.key, run.step) in stale]

    def _propagate_object(
        self,
        tx: Transaction,
        obj: SegmentObject,
        direction: str,
        slice_range: tuple[int, int] | None,
        only_keys: set[int] | None,
    ) -> Iterator[SliceResult]:
        axis = obj.axis
        assert axis is not None
        count = frame_count(self.windowed_kji.shape, axis)
        low, high = clip_slice_range(slice_range, count)
        keys = obj.prompted_slices()
        if not any(low <= key <= high for key in keys):
            raise PromptError(
                f"slices {low}..{high} hold no prompt of {obj.name} (prompted: {keys})",
                "include a prompted slice in the range, or propagate without a range",
            )
        tx.touch_object(obj.object_id)
        # Prompts set without a prediction (e.g. restored by the Slicer logic) get their mask first.
        for key in sorted(obj.prompts):
            if low <= key <= high and obj.slice_sources.get(key) != "prompt":
                yield from self._prompt_slice(tx, obj, obj.prompts[key])
        # the whole volume's plan, cut to the range: nothing outside low..high is written or cleared
        planned = self._plan(obj, direction)
        runs, cut_keys = clip_runs(planned, low, high)
        selected = only_keys if only_keys is not None else (obj.dirty & set(keys)) or None
        # runs of unchanged prompts whose extent grew since they ran (SAM 2), and those that never ran to
        # their end (a direction not asked for before, a range that cut them), run with the changed ones
        stale = self._stale_runs(obj, runs) if only_keys is None else set()
        if only_keys is None:
            stale |= {(run.key, run.step) for run in runs if (run.key, run.step) not in obj.ran}
        if selected is None and obj.last_run == (direction, (low, high)):
            if not stale:
                return  # nothing changed since the same propagation ran to its end: it would give the same
            selected = set()
        if selected is not None:
            runs = [run for run in runs if run.key in selected or (run.key, run.step) in stale]
        whole_runs = {(run.key, run.step, run.last) for run in planned}
        if self.is_sam2:
            yield from self._sam2_runs(tx, obj, runs, count)
        else:
            generators = [
                self._slice_run(tx, obj, run, count) for run in sorted(runs, key=lambda r: (r.key, -r.step))
            ]
            # Advance the runs in turn so both sides of a prompt grow together on screen.
            while generators:
                for generator in list(generators):
                    result = next(generator, None)
                    if result is None:
                        generators.remove(generator)
                    else:
                        yield result
        obj.ran |= {(run.key, run.step) for run in runs if (run.key, run.step, run.last) in whole_runs}
        # keys whose runs the range cut, or that lie outside it, still have work: they stay "changed"
        done = (set(keys) if selected is None else selected) - cut_keys
        obj.dirty -= {key for key in done if low <= key <= high}
        obj.last_run = (direction, (low, high)) if only_keys is None else None

    def _stale_runs(self, obj: SegmentObject, runs: list[Run]) -> set[tuple[int, int]]:
        """(key, step) of each SAM 2 run between two prompts that did not write every slice of its extent.

        Such a run carries on to the next prompt with no stop rule, so once it has run, every slice up to
        its ``last`` came from it. One that did not reach its ``last`` ran as an outer run and stopped (or
        never ran that way, or was interrupted), and a fresh prompt has since been placed past the stop:
        the run now goes on to that prompt (the plan gives it the gap), so it must re-run although its
        own prompt did not change. A 2D run applies its stop rule up to the next prompt as well and
        remembers nothing, and a new prompt only shortens it: what it wrote is still what it would write,
        so it never needs this.
        """
        if not self.is_sam2:
            return set()
        return {
            (run.key, run.step)
            for run in runs
            if not run.outer
            and any(
                obj.origins.get(index) != (run.key, run.step)
                for index in range(run.key + run.step, run.last + run.step, run.step)
            )
        }

    def _clear_beyond(
        self, tx: Transaction, obj: SegmentObject, start: int, run: Run
    ) -> Iterator[SliceResult]:
        """Clear non-prompt slices from ``start`` to the end of the run (an outer run ends at the volume's end
        or at the edge of the slice range)."""
        end = run.last
        prompted = set(obj.prompted_slices())
        for index in range(start, end + run.step, run.step):
            if index in prompted:
                continue
            if obj.slice_sources.get(index) or self._raw_mask(obj, index).any():
                yield from self._set_slice(tx, obj, index, None, None, "cleared", None, None)

    def _slice_run(self, tx: Transaction, obj: SegmentObject, run: Run, count: int) -> Iterator[SliceResult]:
        axis = obj.axis
        key, step, last = run.key, run.step, run.last
        windowed = self.windowed_kji
        cache = self.embeddings(axis)
        key_mask = self._raw_mask(obj, key).copy()
        key_frame = frame_of(windowed, axis, key)
        appearance = ObjectAppearance.from_mask(key_frame, key_mask, obj.confidences.get(key))
        logits_at: dict[int, np.ndarray] = {}

        def predict(index: int, box_frame_xyxy: np.ndarray) -> FramePrediction:
            ahead = range(index + step, index + step * cache.batch_size, step)
            prediction = cache.model.predict(cache.get(index, ahead=ahead), box_frame_xyxy=box_frame_xyxy)
            logits_at[index] = prediction.logits_frame
            return prediction

        next_index = key + step  # first slice this run has not written
        # a direction ends with its outer run: a run between two prompts neither gives nor clears its reason
        # (one that ended in the gap cleared the reason the outer run of its direction had given)
        reasons = obj.stop_reasons if run.outer else {}
        if not key_mask.any():
            reasons[step] = f"slice {key}: the prompted slice's mask is empty"
        for outcome in propagate_slicewise(
            predict,
            lambda i: frame_of(windowed, axis, i),
            key,
            key_mask,
            step,
            last,
            appearance,
            self.settings,
        ):
            if outcome.stop_reason is not None:
                reasons[step] = f"slice {outcome.slice_index}: {outcome.stop_reason}"
                break
            index = outcome.slice_index
            yield from self._set_slice(
                tx,
                obj,
                index,
                outcome.mask_frame,
                logits_at.pop(index, None),
                "propagated",
                (key, step),
                outcome.score,
            )
            next_index = index + step
        else:
            if key_mask.any():
                reasons.pop(step, None)
        yield from self._clear_beyond(tx, obj, next_index, run)

    def _sam2_runs(
        self, tx: Transaction, obj: SegmentObject, runs: list[Run], count: int
    ) -> Iterator[SliceResult]:
        tracker = self._tracker(obj.axis)
        self._sync_tracker(obj, tracker)
        # Meta's order: every forward run first, then backward (a backward run's memory may use the
        # frames just ahead of its prompt, which the forward run has tracked).
        forward = sorted((r for r in runs if r.step > 0), key=lambda r: r.key)
        backward = sorted((r for r in runs if r.step < 0), key=lambda r: -r.key)
        for run in forward + backward:
            yield from self._sam2_run(tx, obj, tracker, run, count)

    def _sam2_run(
        self, tx: Transaction, obj: SegmentObject, tracker: Any, run: Run, count: int
    ) -> Iterator[SliceResult]:
        key, step, last, oid = run.key, run.step, run.last, obj.object_id
        stopper = StopTracker(self.sam2_stop, int(self._raw_mask(obj, key).sum())) if run.outer else None
        stop_at, reason, next_index = None, None, key + step
        in_run = range(key, last + step, step)
        batch = self._encoder_batch(tracker.preferred_batch_size)
        ahead = EncodeAheadInRun(tracker, in_run, self.max_cached_frames, batch)
        generator = tracker.propagate(key, step, end_frame=last, object_ids=[oid])
        try:
            for position, result in enumerate(generator):
                ahead.reached(position)
                index = result.frame_index
                if index == key:
                    continue
                mask = result.mask_frame
                if stopper is not None:
                    reason, back = stopper.check(mask, result.object_score_logit)
                    if reason is not None:
                        stop_at = index - back * step
                        break
                yield from self._set_slice(
                    tx,
                    obj,
                    index,
                    mask,
                    result.mask_logits_frame,
                    "propagated",
                    (key, step),
                    result.object_score_logit,
                )
                next_index = index + step
        finally:
            generator.close()
        if stop_at is not None:
            obj.stop_reasons[step] = f"slice {stop_at}: {reason}"
            end = count - 1 if step > 0 else 0
            tracker.clear_outputs(oid, range(stop_at, end + step, step))
            yield from self._clear_beyond(tx, obj, stop_at, run)
        else:
            if run.outer:
                obj.stop_reasons.pop(step, None)
            yield from self._clear_beyond(tx, obj, next_index, run)

    # -- writing slices ------------------------------------------------------------------------------
    def _raw_mask(self, obj: SegmentObject, index: int) -> np.ndarray:
        """The object's own mask on a slice (before exclusive resolution)."""
        if self.overlap == "exclusive" and index in obj.logits_frames:
            return obj.logits_frames[index] > 0
        return frame_of(obj.mask_kji, obj.axis, index)

    def _set_slice(
        self,
        tx: Transaction,
        obj: SegmentObject,
        index: int,
        mask: np.ndarray | None,
        logits: np.ndarray | None,
        source: str,
        origin: tuple[int, int] | None,
        score: float | None,
    ) -> list[SliceResult]:
        """Write one slice of an object (``mask`` None: clear it); returns the results to stream."""
        axis = obj.axis
        tx.touch_slice(obj.object_id, axis, index)
        self._fit_feature_budget(axis)  # a slice written: its features may have taken room
        shape = frame_shape(self.volume.voxels_kji.shape, axis)
        mask = np.zeros(shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if source == "cleared":
            obj.slice_sources.pop(index, None)
        else:
            obj.slice_sources[index] = source
        if origin is None:
            obj.origins.pop(index, None)
        else:
            obj.origins[index] = origin
        if logits is not None and mask.any():
            obj.confidences[index] = float(logits[mask].mean())
        else:
            obj.confidences.pop(index, None)
        if self.overlap != "exclusive":
            set_frame(obj.mask_kji, axis, index, mask)
            return [SliceResult(obj.object_id, axis, index, mask, source, score)]
        if mask.any():
            obj.logits_frames[index] = stored_logits(logits, mask)
        else:
            obj.logits_frames.pop(index, None)
        results = self._resolve(tx, axis, index, primary=obj)
        shown = frame_of(obj.mask_kji, axis, index).copy()
        return [SliceResult(obj.object_id, axis, index, shown, source, score), *results]

    def _resolve(
        self, tx: Transaction, axis: int, index: int, primary: SegmentObject | None
    ) -> list[SliceResult]:
        """Exclusive mode: recompute every object's mask on one slice; results for the others that changed."""
        same_axis = [o for o in self.objects.values() if o.axis == axis]
        shape = frame_shape(self.volume.voxels_kji.shape, axis)
        masks = resolve_exclusive({o.object_id: o.logits_frames.get(index) for o in same_axis}, shape)
        results = []
        for other in same_axis:
            new = masks[other.object_id]
            if np.array_equal(frame_of(other.mask_kji, axis, index), new):
                continue
            tx.touch_slice(other.object_id, axis, index)
            set_frame(other.mask_kji, axis, index, new)
            if other is not primary:
                results.append(SliceResult(other.object_id, axis, index, new.copy(), "overlap"))
        return results

    # -- undo / redo ---------------------------------------------------------------------------------
    def _begin(self, label: str) -> Transaction:
        return Transaction(label, self._capture_slice, self._capture_object)

    def _commit(self, tx: Transaction) -> None:
        self._history.push(tx.finish())

    def _capture_slice(self, object_id: int, axis: int, index: int) -> SliceState:
        obj = self.objects.get(object_id)
        if obj is None:
            return capture_slice_state(
                np.zeros(frame_shape(self.volume.voxels_kji.shape, axis), bool), None, None, None
            )
        return capture_slice_state(
            frame_of(obj.mask_kji, axis, index),
            obj.slice_sources.get(index),
            obj.origins.get(index),
            obj.logits_frames.get(index),
            obj.confidences.get(index),
        )

    def _capture_object(self, object_id: int) -> ObjectRecord | None:
        obj = self.objects.get(object_id)
        if obj is None:
            return None
        return ObjectRecord(
            obj.name,
            tuple(obj.color_rgb),
            obj.axis,
            dict(obj.prompts),
            {k: (v.shape, pack_mask(v).tobytes()) for k, v in obj.mask_prompts.items()},
            dict(obj.roles),
            frozenset(obj.dirty),
            dict(obj.stop_reasons),
            frozenset(obj.ran),
            obj.last_run,
        )

    @property
    def can_undo(self) -> bool:
        return bool(self._history.undo_stack)

    @property
    def can_redo(self) -> bool:
        return bool(self._history.redo_stack)

    @property
    def history(self) -> list[str]:
        """Labels of the undoable interactions, oldest first ("add_prompts", "add_mask", "propagate", ...)."""
        return self._history.entries()

    def undo(self) -> list[SliceResult]:
        """Undo the last interaction; returns the slices it restored (source "undo"), [] when none."""
        if not self._history.undo_stack:
            return []
        entry = self._history.undo_stack.pop()
        self._history.redo_stack.append(entry)
        return self._apply(entry, 0, "undo")

    def redo(self) -> list[SliceResult]:
        """Redo the last undone interaction (its saved result, no model call); [] when none."""
        if not self._history.redo_stack:
            return []
        entry = self._history.redo_stack.pop()
        self._history.undo_stack.append(entry)
        return self._apply(entry, 1, "redo")

    def _apply(self, entry, which: int, source: str) -> list[SliceResult]:
        # each object's last complete run comes back with its prompts, runs and masks: an object the entry
        # did not touch keeps its own, so the next propagate() skips what is complete (undoing one object's
        # correction re-ran every object whole, and a SAM 2 object with its memory rebuilt changed masks)
        for object_id, states in entry.objects.items():
            record = states[which]
            self._forget_tracker_object(object_id)
            if record is None:
                self.objects.pop(object_id, None)
                continue
            obj = self.objects.get(object_id)
            if obj is None:
                obj = SegmentObject(
                    object_id,
                    record.name,
                    record.color_rgb,
                    np.zeros(self.volume.voxels_kji.shape, dtype=bool),
                )
                self.objects[object_id] = obj
                self.objects = dict(sorted(self.objects.items()))
            obj.name, obj.color_rgb, obj.axis = record.name, record.color_rgb, record.axis
            obj.prompts = dict(record.prompts)
            obj.mask_prompts = {
                k: np.unpackbits(np.frombuffer(bits, np.uint8), count=shape[0] * shape[1])
                .reshape(shape)
                .astype(bool)
                for k, (shape, bits) in record.mask_prompts.items()
            }
            obj.roles, obj.dirty, obj.stop_reasons, obj.ran, obj.last_run = (
                dict(record.roles),
                set(record.dirty),
                dict(record.stop_reasons),
                set(record.ran),
                record.last_run,
            )
        results = []
        for (object_id, axis, index), states in entry.slices.items():
            obj = self.objects.get(object_id)
            if obj is None:
                continue
            self._synced.pop(object_id, None)
            state = states[which]
            mask = state.mask()
            set_frame(obj.mask_kji, axis, index, mask)
            for store, value in (
                (obj.slice_sources, state.source),
                (obj.origins, state.origin),
                (obj.logits_frames, state.logits()),
                (obj.confidences, state.confidence),
            ):
                if value is None:
                    store.pop(index, None)
                else:
                    store[index] = value
            results.append(SliceResult(object_id, axis, index, mask, source))
        return results

    # -- results -------------------------------------------------------------------------------------
    def mask_kji(self, object_id: int) -> np.ndarray:
        return self._object(object_id).mask_kji

    def labelmap_kji(self) -> np.ndarray:
        """Object n gets label value n; where objects overlap, the later object wins."""
        dtype = np.uint8 if max(self.objects, default=0) < 256 else np.uint16
        labelmap = np.zeros(self.volume.voxels_kji.shape, dtype=dtype)
        for object_id, obj in self.objects.items():
            labelmap[obj.mask_kji] = object_id
        return labelmap

    def segments(self) -> list[SegmentInfo]:
        return [SegmentInfo(oid, obj.name, obj.color_rgb) for oid, obj in self.objects.items()]
