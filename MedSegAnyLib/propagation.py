"""Slice-wise propagation for 2D SAM-family models: prompt each next slice from its neighbour's mask.

The naive scheme (next box = previous mask's bounding box + 3 px, stop at an empty mask) runs past the
object's end: given any box, a SAM-family decoder segments *something* in it. Measured on the shared
cases with LiteMedSAM it overruns by 12-28 slices on average (benchmarks/README.md). This module adds:

- a stop rule that looks at what the model found, not only whether it found anything: the new mask's
  intensities compared with the prompted slice's object (an object keeps its grey level across slices;
  what the model latches onto past the end usually does not), the decoder's own confidence (IoU
  estimate and mean logit), the overlap with the previous mask and the area collapse typical of
  an object's end;
- mask hygiene: only the connected components that touch the previous slice's mask are kept;
- a prompt box grown in proportion to the object (``box_margin_fraction``), so a slightly
  under-segmented slice does not shrink the next box and the object with it.

Every number here was chosen by ``benchmarks/accuracy.py`` on the shared cases; see benchmarks/README.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .mask_ops import bbox_xyxy, components_touching
from .models.base import FramePrediction


@dataclass(frozen=True)
class PropagationSettings:
    """How each next slice is prompted and when propagation stops. Defaults are the benchmarked ones."""

    box_margin_px: float = 3.0
    box_margin_fraction: float = 0.0
    keep_touching_components: bool = True
    # Stop rule (any condition ends the direction; the slice that triggered it is left empty).
    stop_rule: str = "appearance"  # "appearance" (ours) or "empty" (naive: only an empty mask stops)
    min_area_px: int = 4
    # Fraction of the new mask's pixels inside the prompted object's 5th-95th percentile grey band.
    # Inside the 30 logged objects >= 0.2 on 96 % of slices; past their ends < 0.2 on most (README).
    min_intensity_agreement: float = 0.2
    # Mean decoder logit inside the mask: 5-11 on slices of the object, 0.1-2.5 on most slices past it.
    min_confidence_logit: float = 2.5
    # ... unless the model is unsure of the object even on its prompted slice (a smooth MRI template's
    # brain: 1.6): then the limit is this fraction of the prompted slice's mean logit.
    min_confidence_fraction_of_key: float = 0.5
    # Fraction of the new mask on the previous one: a jump to another structure overlaps little.
    min_overlap_with_previous: float = 0.3
    # An object ends by shrinking: below 5 % of the largest area seen in this run, stop.
    min_area_fraction_of_peak: float = 0.05
    max_slices: int | None = None

    @classmethod
    def naive(cls) -> PropagationSettings:
        """The reference scheme: bbox + 3 px, stop at an empty mask, no hygiene."""
        return cls(
            box_margin_px=3.0, box_margin_fraction=0.0, keep_touching_components=False, stop_rule="empty"
        )


@dataclass(frozen=True)
class ObjectAppearance:
    """The object on its prompted slice: the 5th-95th percentile band of its grey levels in the windowed
    frame, and the decoder's mean logit inside its mask there (None when the mask was drawn, not decoded)."""

    low: float
    high: float
    confidence: float | None = None

    @classmethod
    def from_mask(
        cls, frame: np.ndarray, mask_frame: np.ndarray, confidence: float | None = None
    ) -> ObjectAppearance | None:
        values = frame[mask_frame]
        if values.size < 4:
            return None
        low, high = np.percentile(values, [5, 95])
        return cls(float(low), float(high), confidence)

    def agreement(self, frame: np.ndarray, mask_frame: np.ndarray) -> float:
        """Fraction of the mask's pixels whose grey level lies in the prompted object's band."""
        values = frame[mask_frame]
        if values.size == 0:
            return 0.0
        return float(((values >= self.low) & (values <= self.high)).mean())


@dataclass(frozen=True)
class StepOutcome:
    """One propagated slice: its mask (empty when stopped) and why the direction stopped, if it did."""

    slice_index: int
    mask_frame: np.ndarray
    score: float
    stop_reason: str | None = None


def next_box(previous_mask: np.ndarray, settings: PropagationSettings) -> np.ndarray | None:
    box = bbox_xyxy(previous_mask)
    if box is None:
        return None
    size = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1])
    margin = settings.box_margin_px + settings.box_margin_fraction * size
    height, width = previous_mask.shape
    grown = box + np.array([-margin[0], -margin[1], margin[0], margin[1]])
    return np.clip(grown, 0, [width - 1, height - 1, width - 1, height - 1])


def stop_reason(
    prediction: FramePrediction,
    mask_frame: np.ndarray,
    previous_mask: np.ndarray,
    frame: np.ndarray,
    appearance: ObjectAppearance | None,
    settings: PropagationSettings,
    peak_area: int = 0,
) -> str | None:
    """Why this slice ends the object, or None to keep it and go on (``peak_area``: largest area so far)."""
    area = int(mask_frame.sum())
    if area == 0:
        return "empty mask"
    if settings.stop_rule == "empty":
        return None
    if area < settings.min_area_px:
        return f"area {area} px below {settings.min_area_px}"
    if appearance is not None:
        agreement = appearance.agreement(frame, mask_frame)
        if agreement < settings.min_intensity_agreement:
            return f"intensity agreement {agreement:.2f} below {settings.min_intensity_agreement}"
    confidence = float(prediction.logits_frame[mask_frame].mean())
    limit = settings.min_confidence_logit
    if appearance is not None and appearance.confidence is not None:
        limit = min(limit, settings.min_confidence_fraction_of_key * appearance.confidence)
    if confidence < limit:
        return f"low confidence (mean logit {confidence:.1f} below {limit:.1f})"
    overlap = int((mask_frame & previous_mask).sum()) / area
    if overlap < settings.min_overlap_with_previous:
        return f"overlap with the previous slice {overlap:.2f} below {settings.min_overlap_with_previous}"
    if area < settings.min_area_fraction_of_peak * peak_area:
        return f"area {area} px below {settings.min_area_fraction_of_peak:.0%} of the peak {peak_area} px"
    return None


def propagate_slicewise(
    predict: Callable[[int, np.ndarray], FramePrediction],
    frame_at: Callable[[int], np.ndarray],
    start_index: int,
    start_mask: np.ndarray,
    step: int,
    last_index: int,
    appearance: ObjectAppearance | None,
    settings: PropagationSettings,
) -> Iterator[StepOutcome]:
    """Yield slices ``start_index + step, ...`` up to ``last_index`` (inclusive) until the object ends.

    ``predict(index, box_frame_xyxy)`` decodes a mask on a frame. The last outcome of a stopped direction
    carries ``stop_reason`` and an empty mask; nothing is yielded after it.
    """
    previous = start_mask
    peak_area = int(start_mask.sum())
    index = start_index + step
    count = 0
    while (index <= last_index) if step > 0 else (index >= last_index):
        if settings.max_slices is not None and count >= settings.max_slices:
            return
        box = next_box(previous, settings)
        if box is None:
            return
        prediction = predict(index, box)
        mask = prediction.mask_frame
        if settings.keep_touching_components and mask.any():
            mask = components_touching(mask, previous)
        reason = stop_reason(prediction, mask, previous, frame_at(index), appearance, settings, peak_area)
        if reason is not None:
            yield StepOutcome(index, np.zeros_like(mask), prediction.iou_score, reason)
            return
        yield StepOutcome(index, mask, prediction.iou_score)
        previous = mask
        peak_area = max(peak_area, int(mask.sum()))
        index += step
        count += 1
