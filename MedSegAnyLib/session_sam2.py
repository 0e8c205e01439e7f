"""The SAM 2 side of the session: one tracker per volume axis and the stop rule of a tracked direction.

One :class:`~medsegany.models.sam2_tracker.Sam2Tracker` per IJK axis holds the frames of that axis and
their image features (computed once per slice, reused by every object, correction and re-propagation);
session object ``n`` is tracker object ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sam2StopRule:
    """When a SAM 2 direction ends (outer runs only; between two prompts the model goes on to the prompt).

    - ``absent_slices``: the model's object score is <= 0 (it says the object is not there, and its mask
      is empty) on this many consecutive slices; those slices end empty. 2 tolerates one missed slice.
    - ``area_collapse_fraction``: the mask shrinks below this fraction of the largest mask of the run so
      far (a remnant at the object's end, or the model latching onto a speck); that slice ends empty.
    - ``max_slices``: at most this many slices per direction (None: no limit).
    """

    absent_slices: int = 2
    area_collapse_fraction: float = 0.02
    max_slices: int | None = None


class StopTracker:
    """The stop rule applied slice by slice along one run."""

    def __init__(self, rule: Sam2StopRule, start_area: int) -> None:
        self.rule = rule
        self.max_area = int(start_area)
        self.absent_streak = 0
        self.count = 0

    def check(self, mask_frame: np.ndarray, object_score_logit: float) -> tuple[str | None, int]:
        """(reason to stop or None, how many slices back the stop starts: 0 = this slice)."""
        self.count += 1
        area = int(mask_frame.sum())
        if object_score_logit <= 0 or area == 0:
            self.absent_streak += 1
            if self.absent_streak >= self.rule.absent_slices:
                reason = f"object score <= 0 on {self.absent_streak} consecutive slices"
                return reason, self.absent_streak - 1
            return None, 0
        self.absent_streak = 0
        if self.max_area > 0 and area < self.rule.area_collapse_fraction * self.max_area:
            return (
                f"area {area} px collapsed below {self.rule.area_collapse_fraction:g} of {self.max_area} px",
                0,
            )
        self.max_area = max(self.max_area, area)
        if self.rule.max_slices is not None and self.count > self.rule.max_slices:
            return f"{self.rule.max_slices} slices reached", 0
        return None, 0

