"""The panel's encoding ahead: image features computed on the model worker while the user is not waiting.

The panel asks for it when the model has loaded, when the user starts placing a box or points (the view
and its slice are known then: that slice is encoded first), and when an action has ended (the rest of
the volume, for the next object or correction). Before anything else uses the worker (an action, a model
change) the panel stops it. An action is started once the encoder call in flight has ended
(:meth:`EncodeAhead.cancel`, the panel polling meanwhile): up to one slice, 0.3-0.6 s on the 2-core
development CPU but seconds for a ViT-B encoder there, so the panel does not freeze for it. Rarer changes
(the model, the volume) wait for it (:meth:`EncodeAhead.stop`).

Main thread only, like the rest of the panel; the worker runs the session's generator
(:meth:`medsegany.slicer_logic.SlicerSegmentationLogic.plan_encode_ahead`).
"""

from __future__ import annotations

import logging
from typing import Any

from .errors import MedSegAnyError

log = logging.getLogger(__name__)

JOB_LABEL = "encode ahead"


class EncodeAhead:
    """Starts, restarts and stops the encoding-ahead job of one panel (``logic`` and ``worker`` are the
    panel's :class:`~medsegany.slicer_logic.SlicerSegmentationLogic` and
    :class:`~medsegany.slicer_worker.ModelWorker`)."""

    def __init__(self, logic: Any, worker: Any) -> None:
        self.logic = logic
        self.worker = worker
        self.handle: Any = None
        self.target: tuple[int, int] | None = None  # (axis, slice) of the running job
        self.pending: tuple[int, int] | None = None  # asked for while another job was ending
        self.progress: Any = None  # the last EncodeAheadProgress of the running job
        self.error: BaseException | None = None  # why the last job failed (logged; a head start only)

    @property
    def running(self) -> bool:
        return self.handle is not None and not self.handle.finished

    def request(self, axis: int, slice_index: int) -> bool:
        """Encode ``axis``'s slices from ``slice_index`` outward as soon as the worker is free; True
        when a job runs or waits for that. A job started from another slice is stopped first."""
        target = (int(axis), int(slice_index))
        if self.running:
            # back at the running job's slice while another waits: that job was cancelled already, so
            # it starts again once it ends (the waiting one is no longer wanted)
            if self.target != target or self.pending is not None:
                self.handle.cancel()
                self.pending = target
            return True
        if self.worker.busy:  # another job (loading the model, an action): not now
            return False
        return self._start(target)

    def poll(self) -> str | None:
        """Drain the job's progress (call from a timer): the status line while encoding, None when idle.
        A request that waited for the previous job to end starts here."""
        if self.handle is not None:
            for event in self.handle.drain():
                if event.kind == "item":
                    self.progress = event.payload
                elif event.kind == "error":
                    log.warning("encoding slices ahead stopped: %s", event.payload)
                    self.error = _without_tracebacks(event.payload)
        if not self.running and self.pending is not None and not self.worker.busy:
            target, self.pending = self.pending, None
            self._start(target)
        if self.running and self.progress is not None:
            return str(self.progress.message)
        return None

    def cancel(self) -> None:
        """Ask the job to stop after its encoder call, without waiting (``running`` turns False then)."""
        self.pending = None
        if self.handle is not None:
            self.handle.cancel()

    def stop(self, timeout_s: float | None = 60.0) -> None:
        """Cancel the job and wait until its encoder call has ended (the worker is free afterwards)."""
        self.cancel()
        if self.handle is not None:
            if not self.handle.finished:
                self.handle.wait(timeout_s)
            self.poll()
            self.handle = None

    def _start(self, target: tuple[int, int]) -> bool:
        try:
            plan = self.logic.plan_encode_ahead(*target)
        except MedSegAnyError as error:  # e.g. a volume that does not fit: the first action says so
            self.error = error
            return False
        if plan is None:
            return False
        self.handle = self.worker.submit(lambda context: plan, label=JOB_LABEL)
        self.target, self.progress, self.error = target, None, None
        return True


def _without_tracebacks(error: BaseException) -> BaseException:
    """``error`` with the tracebacks of it and of the errors it was raised from dropped. Why: their frames
    hold the job's session (its windowed volume, every slice's image features, on the GPU there), and
    :attr:`EncodeAhead.error` outlives the job: the next session's memory plan, made when the volume,
    window or model changed, then counted those as taken (and the old session stayed in memory)."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending += [current.__cause__, current.__context__]
    return error
