"""SAM 2 image encoding on a CUDA stream of its own, beside the tracking steps (opt-in; no gain measured).

Why: on an H200 a tracking step of SAM 2.1 tiny at 512 px keeps the GPU busy 2.2 ms with about 600
small kernels, most of which occupy a fraction of its multiprocessors, while encoding 300 frames in
batches takes 0.24 s of a 300-slice run (benchmarks/README.md). On one stream the two take turns. With
the encoder's batches on a second stream, a batch of frames ahead encodes while the steps of frames
already encoded run, and the run needs the first batch only before its first step.

How: :meth:`EncoderStream.encoding` runs a batch on the side stream (after what the main stream queued
so far) and records an event for its frames; :meth:`EncoderStream.ready` makes the main stream wait for
that event, without the host waiting, before a frame's features are first read there, and marks the
features as used by the main stream (``record_stream``: the allocator then never hands their memory to
the side stream's next batch while main-stream work may still read them).

Off unless asked for (``Sam2Tracker(encode_stream=True)`` or ``MEDSEGANY_ENCODE_STREAM=1``); CUDA only
(a CPU or MPS runs the encoder where it is asked, as before). Measured on an H200 (2026-11-28,
benchmarks/README.md), 300 slices at 512 px, all features first: 1.114 s against 1.107 s without it,
the same masks. With the session encoding each run's frames a batch ahead of its steps on it: 1.119 s,
against 1.104 s for all features first without it. The steps now keep the GPU busy (2.3 of their
2.7 ms), so the encoder's batches only move into their time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from .compute import cuda_side_stream

# "1" turns the side stream on for SAM 2 trackers on CUDA
ENCODE_STREAM_VARIABLE = "MEDSEGANY_ENCODE_STREAM"


class EncoderStream:
    """The side stream of one tracker (shared with the device's other trackers) and the events of the
    frames it encoded."""

    def __init__(self, device: Any) -> None:
        self.stream = cuda_side_stream(device)  # shared by the device's trackers
        self._pending: dict[int, Any] = {}  # frame -> event recorded after its batch
        self.batches = 0

    @contextlib.contextmanager
    def encoding(self, frame_indices: Iterable[int]) -> Iterator[None]:
        """Run the body (one encoder batch and its caching) on the side stream; its frames' features are
        ready on the main stream once :meth:`ready` has been called for them."""
        import torch

        main = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(main)  # the frames, weights and earlier work the batch may read
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            # also after a failed batch: frames it cached before failing must still be waited for
            event = torch.cuda.Event()
            event.record(self.stream)
            for frame_index in frame_indices:
                self._pending[int(frame_index)] = event
            self.batches += 1

    def ready(self, frame_index: int, tensors: Iterable[Any]) -> None:
        """Before the main stream first reads a frame's features: wait there (not on the host) for its
        batch, and mark its tensors as used by the main stream."""
        event = self._pending.pop(int(frame_index), None)
        if event is None:
            return
        import torch

        main = torch.cuda.current_stream(self.stream.device)
        main.wait_event(event)
        for tensor in tensors:  # host bookkeeping only; a set insertion for the shared encodings
            tensor.record_stream(main)

    def forget(self) -> None:
        """New frames: no batch of the old ones is waited for any more."""
        self._pending.clear()
