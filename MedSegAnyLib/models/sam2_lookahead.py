"""One tracking step ahead on a GPU: step k+1 runs on the device while the host finishes step k.

Why: with its steps replayed from CUDA graphs, SAM 2.1 tiny at 512 px keeps an H200 busy 2.2 ms a step
and the host 7 ms (benchmarks/README.md): bringing the mask to the host, filling its holes, resizing it,
the session's bookkeeping. In strict order the two add up; with the next step launched before the host
waits for the current one's mask, the host's work overlaps the device's.

What a step leaves for the host: its mask logits at the frame's resolution and its object score, copied
into page-locked host memory behind the step (one transfer, no synchronisation), with an event that
fires when they have arrived. The mask's holes were filled where the step ran (inside its graph with
step graphs, :func:`~medsegany.models.sam2_holes.fill_holes_without_host`; SciPy's labelling on a CPU)
and it was resized to the frame there, so the host only copies the logits out of the page-locked
buffer, and the device is waited for once a step.

A launched step is in the object's memory bank before its result is yielded (the next step needs it). If
the caller stops after step k (the stop rule, a cancel), step k+1 was never seen: closing the generator
puts back what the bank held on that frame (:meth:`LaunchedStep.revert`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .sam2_state import FrameOutput, ObjectTrack

_MISSING = object()


@dataclass
class LaunchedStep:
    """One object's step on one frame, launched; its host copies are valid once ``ready`` fired."""

    track: ObjectTrack
    frame_index: int
    output: FrameOutput
    direction: int
    computed: bool  # False: a conditioning frame (its output was already there)
    previous_output: Any = _MISSING  # what ``track.tracked`` held on the frame before (restored on revert)
    previous_direction: Any = _MISSING
    host_logits: Any = None
    host_score: Any = None
    ready: Any = None  # torch.cuda.Event, None when the copies are plain host tensors

    def wait(self) -> None:
        if self.ready is not None:
            self.ready.synchronize()

    def revert(self) -> None:
        """Undo the step in the memory bank if it is still there (a newer run may have replaced it)."""
        track, frame = self.track, self.frame_index
        if self.computed:
            if track.tracked.get(frame) is not self.output:
                return
            _restore(track.tracked, frame, self.previous_output)
        _restore(track.visited_direction, frame, self.previous_direction)


def record_step(
    track: ObjectTrack, frame_index: int, direction: int, output: FrameOutput, computed: bool
) -> LaunchedStep:
    """File a launched step in the object's memory bank, remembering what it replaces."""
    step = LaunchedStep(
        track,
        frame_index,
        output,
        direction,
        computed,
        previous_output=track.tracked.get(frame_index, _MISSING) if computed else _MISSING,
        previous_direction=track.visited_direction.get(frame_index, _MISSING),
    )
    if computed:
        track.tracked[frame_index] = output
    track.visited_direction[frame_index] = direction
    return step


def _restore(mapping: dict, key: int, value: Any) -> None:
    if value is _MISSING:
        mapping.pop(key, None)
    else:
        mapping[key] = value


def copy_to_host(mask_logits: Any, object_score_logits: Any) -> tuple[Any, Any, Any]:
    """(host logits, host score, event): behind the queued work on CUDA, plain copies elsewhere.
    ``mask_logits`` is any (N, 1, h, w) float tensor: a step's frame logits, or its low-resolution ones."""
    import torch

    if mask_logits.device.type != "cuda":
        # copies, never the tensors themselves: they may be a step graph's buffers, which the step
        # launched next overwrites before this one is finished
        host_logits = mask_logits.detach().to("cpu", torch.float32, copy=True)
        return host_logits, object_score_logits.detach().to("cpu", copy=True), None
    host_logits = torch.empty(mask_logits.shape, dtype=torch.float32, pin_memory=True)
    host_score = torch.empty(object_score_logits.shape, dtype=object_score_logits.dtype, pin_memory=True)
    host_logits.copy_(mask_logits, non_blocking=True)
    host_score.copy_(object_score_logits, non_blocking=True)
    ready = torch.cuda.Event()
    # the copies queue on the logits' device's stream; a bare record() would mark the current device's
    # (another one for cuda:1), and the host could read the buffers before they arrive
    ready.record(torch.cuda.current_stream(mask_logits.device))
    return host_logits, host_score, ready
