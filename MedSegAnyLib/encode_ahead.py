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
