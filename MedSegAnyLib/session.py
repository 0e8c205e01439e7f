"""The segmentation session: a volume, a model, objects and their prompts, and streamed propagation.

>>> session = SegmentationSession(read_volume("ct.nii.gz"))             # doctest: +SKIP
>>> liver = session.add_object("liver")                                    # doctest: +SKIP
>>> session.add_prompts(liver, make_slice_prompts(session.volume, box_ijk=(100, 80, 40, 220, 200, 40)))
>>> for result in session.propagate():                                   # doctest: +SKIP
...     print(result.slice_index, result.mask_frame.sum())

``propagate()`` is a generator: each slice's mask arrives as soon as it is computed, so callers show
progress, write as results arrive and stop between slices (closing the generator leaves every slice
yielded so far in the session, and nothing else changed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .embedding_cache import FrameEmbeddingCache
from .errors import PromptError
from .exporters import SegmentInfo, default_segment_color
from .intensity import IntensityWindow, apply_window, resolve_intensity
from .models.base import FramePrediction, SliceModel
from .propagation import ObjectAppearance, PropagationSettings, propagate_slicewise
from .prompts import SlicePrompts
from .slices import AXIS_NAMES, frame_count, frame_of, set_frame
from .volume import Volume

DIRECTIONS = ("both", "forward", "backward")


@dataclass(frozen=True)
class SliceResult:
    """One slice of one object. ``mask_frame`` is empty where the object is absent or was cleared."""

    object_id: int
    axis: int
    slice_index: int
    mask_frame: np.ndarray  # bool (H, W) in the frame convention of medsegany.slices
    source: str  # "prompt", "propagated" or "cleared"
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


class SegmentationSession:
    """Holds a volume, a 2D SAM-family model and the objects being segmented."""

    def __init__(
        self,
        volume: Volume,
        model: SliceModel | str = "litemedsam",
        intensity: IntensityWindow | str | tuple[float, float] | None = "auto",
        device: str | None = None,
        settings: PropagationSettings | None = None,
        max_cached_frames: int = 256,
    ) -> None:
        self.volume = volume
        if isinstance(model, str):
            from .models.registry import load_slice_model

            model = load_slice_model(model, device=device)
        self.model = model
        if isinstance(intensity, IntensityWindow):
            self.intensity = intensity
        elif isinstance(intensity, tuple):
            self.intensity = resolve_intensity(volume, window=intensity)
        else:
            self.intensity = resolve_intensity(volume, preset=intensity)
        # The windowed copy the model sees; the user's voxels are never modified.
        self.windowed_kji = apply_window(volume.voxels_kji, self.intensity)
        self.settings = settings or PropagationSettings()
        self.max_cached_frames = max_cached_frames
        self.objects: dict[int, SegmentObject] = {}
        self._caches: dict[int, FrameEmbeddingCache] = {}

    # -- objects and prompts -------------------------------------------------------------------------
    def add_object(self, name: str | None = None, color_rgb: tuple[float, float, float] | None = None) -> int:
        object_id = max(self.objects, default=0) + 1
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

    def add_prompts(self, object_id: int, prompts: SlicePrompts) -> SliceResult:
        """Set the prompts of one slice of an object and segment that slice at once (interactive feedback)."""
        obj = self._object(object_id)
        if obj.axis is not None and obj.axis != prompts.axis and obj.prompts:
            raise PromptError(
                f"{obj.name} is prompted on {AXIS_NAMES[obj.axis]} slices, this prompt is on a "
                f"{AXIS_NAMES[prompts.axis]} slice",
                "prompt every slice of one object in the same view, or add a new object",
            )
        obj.axis = prompts.axis
        obj.prompts[prompts.slice_index] = prompts
        prediction = self._predict_prompts(prompts)
        mask = prediction.mask_frame
        set_frame(obj.mask_kji, prompts.axis, prompts.slice_index, mask)
        obj.slice_sources[prompts.slice_index] = "prompt"
        return SliceResult(object_id, prompts.axis, prompts.slice_index, mask, "prompt", prediction.iou_score)

    # -- model calls ---------------------------------------------------------------------------------
    def embeddings(self, axis: int) -> FrameEmbeddingCache:
        if axis not in self._caches:
            windowed = self.windowed_kji
            self._caches[axis] = FrameEmbeddingCache(
                self.model,
                lambda index: frame_of(windowed, axis, index),
                frame_count(windowed.shape, axis),
                max_frames=self.max_cached_frames,
            )
        return self._caches[axis]

    def _predict_prompts(self, prompts: SlicePrompts) -> FramePrediction:
        embedding = self.embeddings(prompts.axis).get(prompts.slice_index)
        points = prompts.points_frame_xy()
        return self.model.predict(
            embedding,
            box_frame_xyxy=prompts.box_frame_xyxy(),
            points_frame_xy=points if len(points) else None,
            point_labels=prompts.labels_array() if len(points) else None,
        )

    # -- propagation ---------------------------------------------------------------------------------
    def propagate(
        self,
        object_ids: list[int] | None = None,
        direction: str = "both",
        slice_range: tuple[int, int] | None = None,
    ) -> Iterator[SliceResult]:
        """Propagate each object from its prompted slices outward; yields one result per slice.

        ``direction``: "both", "forward" (increasing index) or "backward". ``slice_range`` (inclusive)
        limits where propagation may go. Slices between two prompted slices are shared: each side
        propagates up to the midpoint. Slices that a previous run filled beyond where this run stops
        are cleared (yielded with source "cleared"), so the result is always one consistent run.
        """
        if direction not in DIRECTIONS:
            raise PromptError(f"direction {direction!r} is not one of {DIRECTIONS}", "use both, forward or backward")
        ids = list(self.objects) if object_ids is None else object_ids
        for object_id in ids:
            obj = self._object(object_id)
            if not obj.prompts:
                raise PromptError(f"{obj.name} has no prompt", "place a box or a positive point on a slice first")
            yield from self._propagate_object(obj, direction, slice_range)

    def _propagate_object(
        self, obj: SegmentObject, direction: str, slice_range: tuple[int, int] | None
    ) -> Iterator[SliceResult]:
        axis = obj.axis
        assert axis is not None
        count = frame_count(self.windowed_kji.shape, axis)
        low, high = (0, count - 1) if slice_range is None else (max(0, slice_range[0]), min(count - 1, slice_range[1]))
        if low > high:
            raise PromptError(f"slice range {slice_range} is empty", f"give a range within 0..{count - 1}")
        keys = sorted(obj.prompts)
        # Make sure each prompted slice has its mask (prompts may have been set without a prediction).
        for key in keys:
            if obj.slice_sources.get(key) != "prompt":
                yield self.add_prompts(obj.object_id, obj.prompts[key])
        runs = []  # (start key, step, last index) for each direction run
        for position, key in enumerate(keys):
            if direction in ("both", "forward"):
                next_key = keys[position + 1] if position + 1 < len(keys) else None
                last = high if next_key is None else min(high, (key + next_key) // 2)
                if key < last:
                    runs.append((key, +1, last))
            if direction in ("both", "backward"):
                previous_key = keys[position - 1] if position > 0 else None
                last = low if previous_key is None else max(low, (key + previous_key) // 2 + 1)
                if key > last:
                    runs.append((key, -1, last))
        generators = [self._run(obj, key, step, last) for key, step, last in runs]
        # Advance the runs in turn so both sides of a prompt grow together on screen.
        while generators:
            for generator in list(generators):
                result = next(generator, None)
                if result is None:
                    generators.remove(generator)
                else:
                    yield result

    def _run(self, obj: SegmentObject, key: int, step: int, last: int) -> Iterator[SliceResult]:
        axis = obj.axis
        windowed = self.windowed_kji
        cache = self.embeddings(axis)
        key_mask = frame_of(obj.mask_kji, axis, key).copy()
        appearance = ObjectAppearance.from_mask(frame_of(windowed, axis, key), key_mask)

        def predict(index: int, box_frame_xyxy: np.ndarray) -> FramePrediction:
            ahead = range(index + step, index + step * cache.batch_size, step)
            return self.model.predict(cache.get(index, ahead=ahead), box_frame_xyxy=box_frame_xyxy)

        next_index = key + step  # first slice this run has not written
        if not key_mask.any():
            obj.stop_reasons[step] = f"slice {key}: the prompted slice's mask is empty"
        for outcome in propagate_slicewise(
            predict, lambda i: frame_of(windowed, axis, i), key, key_mask, step, last, appearance, self.settings
        ):
            if outcome.stop_reason is not None:
                obj.stop_reasons[step] = f"slice {outcome.slice_index}: {outcome.stop_reason}"
                break
            set_frame(obj.mask_kji, axis, outcome.slice_index, outcome.mask_frame)
            obj.slice_sources[outcome.slice_index] = "propagated"
            next_index = outcome.slice_index + step
            yield SliceResult(obj.object_id, axis, outcome.slice_index, outcome.mask_frame, "propagated", outcome.score)
        else:
            if key_mask.any():
                obj.stop_reasons.pop(step, None)
        # Clear what an earlier run left between where this one ended and its limit.
        for index in range(next_index, last + step, step):
            if obj.slice_sources.get(index) != "prompt" and frame_of(obj.mask_kji, axis, index).any():
                set_frame(obj.mask_kji, axis, index, False)
                obj.slice_sources.pop(index, None)
                yield SliceResult(obj.object_id, axis, index, np.zeros_like(key_mask), "cleared")

    # -- results -------------------------------------------------------------------------------------
    def mask_kji(self, object_id: int) -> np.ndarray:
        return self._object(object_id).mask_kji

    def labelmap_kji(self) -> np.ndarray:
        """Object n gets label value n; where objects overlap, the later object wins."""
        dtype = np.uint8 if len(self.objects) < 256 else np.uint16
        labelmap = np.zeros(self.volume.voxels_kji.shape, dtype=dtype)
        for object_id, obj in self.objects.items():
            labelmap[obj.mask_kji] = object_id
        return labelmap

    def segments(self) -> list[SegmentInfo]:
        return [SegmentInfo(oid, obj.name, obj.color_rgb) for oid, obj in self.objects.items()]
