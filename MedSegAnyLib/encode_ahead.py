"""Image features encoded ahead of the prompt: the order of the slices, and what each step reports.

Why: the image encoder is most of what a slice costs and it needs no prompt. On the 2-core development
CPU LiteMedSAM's encoder takes 0.33 of the 0.39 s a slice costs, SAM 2.1 tiny at 512 px 0.25-0.30 of
0.48 s (``benchmarks/README.md``). While the user scrolls to the structure, drags a box or looks at a
result, the model's worker is idle. Every slice it encodes then is a slice the user no longer waits for
after the prompt. The masks are the same numbers: the same encoder runs on the same frame, only earlier
(``Testing/Python/test_session_encode_ahead.py`` checks them equal).

Which slices: the one in view first (its mask is the first one asked for), then its neighbours
outward, one on each side in turn, the order in which propagation reaches them. Encoding ahead never
evicts a cached frame: it stops when the session's caches hold ``max_cached_frames`` frames over all
axes, the budget the memory plan gave the session
(:meth:`medsegany.session.SegmentationSession.encode_ahead`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


def outward_order(center: int, count: int) -> Iterator[int]:
    """``center``, then ``center + 1``, ``center - 1``, ``center + 2``, ... within ``0 .. count - 1``.

    >>> list(outward_order(2, 6))
    [2, 3, 1, 4, 0, 5]
    """
    if not 0 <= center < count:
        raise ValueError(f"center {center} is outside 0..{count - 1}")
    yield center
    for distance in range(1, max(center + 1, count - center)):
        if center + distance < count:
            yield center + distance
        if center - distance >= 0:
            yield center - distance


@dataclass(frozen=True)
class EncodeAheadProgress:
    """One encoder call of :meth:`~medsegany.session.SegmentationSession.encode_ahead`.

    ``frames``: the slice indices this call encoded (along ``axis``); ``encoded`` of ``planned``: how far
    the whole request is; ``cached`` of ``frame_count``: the slices of ``axis`` whose features the
    session now holds.
    """

    axis: int
    frames: tuple[int, ...]
    encoded: int
    planned: int
    cached: int
    frame_count: int

    @property
    def message(self) -> str:
        """One line for a status bar."""
        return (
            f"Encoding slices ahead: {self.encoded}/{self.planned} "
            f"({self.cached} of {self.frame_count} slices ready)"
        )


class EncodeAheadInRun:
    """Asks a SAM 2 tracker for one propagation run's image features a batch ahead of its steps.

    Why a whole batch ahead: on CUDA the tracking step of the next frame is launched before a frame's
    result is yielded (:mod:`medsegany.models.sam2_lookahead`). Asking for the next batch only once the
    last frame encoded was yielded made that step encode its frame alone, and the next batch one frame
    short: on a 60-slice run from slice 30 with batches of 16 the encoder was called with 1, 16, 1, 12,
    16, 1 and 13 frames (the key slice first; CPU run with the step launched ahead). With a batch still
    ahead when the next is asked for: 1, 16, 13, 16 and 14. With the encoder on its own CUDA stream
    (:mod:`medsegany.models.sam2_encode_stream`) each batch then runs beside the steps of the one before.

    ``batch``: the tracker's encoder batch (16 on a GPU, 1 on a CPU; ``batch_limit``, the session's
    memory plan, may lower it), at most half of what the feature cache keeps less the 2 frames a step
    reads, so that what is asked for ahead never evicts a frame the run is about to read. A run that
    stops (the object ended) leaves at most two batches encoded beyond its last slice: on an H200 32
    slices at 512 px, about 25 ms.
    """

    def __init__(
        self, tracker: Any, in_run: range, max_cached_frames: int, batch_limit: int | None = None
    ) -> None:
        self.tracker = tracker
        self.in_run = in_run
        batch = int(tracker.preferred_batch_size if batch_limit is None else batch_limit)
        self.batch = max(1, min(batch, (int(max_cached_frames) - 2) // 2))
        self.asked = 0  # positions in the run whose frames were asked for
        self._ask(self.batch + 1)  # the key frame (cached once prompted) and a batch after it

    def reached(self, position: int) -> None:
        """The run yielded its frame at ``position`` (0: the key frame): ask for the next batch when no
        more than one batch is left ahead of it."""
        if self.asked < len(self.in_run) and self.asked - position <= self.batch:
            self._ask(self.batch)

    def _ask(self, count: int) -> None:
        frames = self.in_run[self.asked : self.asked + count]
        self.asked += len(frames)
        self.tracker.precompute_features(frames, batch_size=self.batch)
