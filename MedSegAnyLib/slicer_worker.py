"""One persistent worker thread that owns the model; the main thread drains its results.

Slicer's main thread alone may touch MRML and Qt, and must stay responsive while the model runs
(1-3 s per slice on a CPU). The worker runs one *job* at a time: a callable that returns an iterable
(typically the session's propagation generator). Each item it yields is put on the job's queue; the
main thread drains the queue from a timer (``qt.QTimer``, every ~50 ms) and writes each slice into the
segment as it arrives. Tests drain synchronously with :meth:`JobHandle.wait`.

The thread is created on the first job, not at import or construction, and lives until
:meth:`ModelWorker.shutdown`: the model (and its GPU memory) stays with that one thread, so CUDA
contexts and torch thread pools are not re-created per run.

>>> worker = ModelWorker()
>>> handle = worker.submit(lambda context: (n * n for n in range(3)))
>>> [event.payload for event in handle.wait() if event.kind == "item"]
[0, 1, 4]
>>> worker.shutdown()
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .cpu_tuning import flush_denormals_if_tuned
from .errors import MedSegAnyError

log = logging.getLogger(__name__)

#: Event kinds: "item" (one yielded value), then exactly one of "done", "cancelled" or "error".
EVENT_KINDS = ("item", "done", "cancelled", "error")
FINAL_KINDS = frozenset({"done", "cancelled", "error"})


@dataclass(frozen=True)
class WorkerEvent:
    kind: str
    job_id: int
    payload: Any = None


class JobContext:
    """What a running job may use: :attr:`cancelled` and :meth:`post` (e.g. download progress)."""

    def __init__(self, handle: JobHandle) -> None:
        self._handle = handle

    @property
    def cancelled(self) -> bool:
        return self._handle.cancel_requested

    def post(self, item: Any) -> None:
        """Send an extra item to the main thread (for progress of long steps inside one item)."""
        self._handle._put("item", item)


class JobHandle:
    """The main thread's view of one job: cancel it, drain its events."""

    def __init__(self, job_id: int, label: str) -> None:
        self.job_id = job_id
        self.label = label
        self._events: queue.Queue[WorkerEvent] = queue.Queue()
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self.final_kind: str | None = None

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        """The worker is done with this job (its final event may still be waiting to be drained)."""
        return self._finished.is_set()

    def cancel(self) -> None:
        """Ask the job to stop after the item being computed (a slice is never cut in half)."""
        self._cancel.set()

    def drain(self, max_items: int | None = None) -> list[WorkerEvent]:
        """Events that arrived so far, oldest first, without blocking."""
        events: list[WorkerEvent] = []
        while max_items is None or len(events) < max_items:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        return events

    def wait(self, timeout_s: float | None = 60.0) -> list[WorkerEvent]:
        """Block until the job ends; all its remaining events (for tests and the console)."""
        if not self._finished.wait(timeout_s):
            raise TimeoutError(f"job '{self.label}' did not finish within {timeout_s} s")
        return self.drain()

    def _put(self, kind: str, payload: Any = None) -> None:
        self._events.put(WorkerEvent(kind, self.job_id, payload))


Job = Callable[[JobContext], "Iterable[Any] | None"]


class ModelWorker:
    """A single background thread running jobs in order; see the module docstring."""

    def __init__(self, name: str = "MedSegAny model worker") -> None:
        self.name = name
        self._jobs: queue.Queue[tuple[JobHandle, Job] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._current: JobHandle | None = None
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._current is not None and not self._current.finished

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def submit(self, job: Job, label: str = "job") -> JobHandle:
        """Queue ``job``; one job at a time (a second one while busy is refused)."""
        with self._lock:
            if self._current is not None and not self._current.finished:
                raise MedSegAnyError(
                    f"'{self._current.label}' is still running", "wait for it or press Cancel first"
                )
            handle = JobHandle(next(self._ids), label)
            self._current = handle
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
        self._jobs.put((handle, job))
        return handle

    def run_sync(self, job: Job, label: str = "job", timeout_s: float | None = None) -> list[Any]:
        """Run ``job`` on the worker and wait: its items (re-raises its error). For model loading."""
        events = self.submit(job, label).wait(timeout_s)
        for event in events:
            if event.kind == "error":
                raise event.payload
        return [event.payload for event in events if event.kind == "item"]

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Cancel the current job and stop the thread (module cleanup, Slicer exit)."""
        with self._lock:
            if self._current is not None:
                self._current.cancel()
            thread = self._thread
        if thread is not None and thread.is_alive():
            self._jobs.put(None)
            thread.join(timeout_s)
        self._thread = None

    def _loop(self) -> None:
        # before this thread's first parallel operation, whose OpenMP workers copy its flag: a thread made
        # after a model was loaded on another one (a module reload) would run unflushed. A speed setting
        # only: the jobs run without it if it fails.
        try:
            flush_denormals_if_tuned()
        except Exception as error:
            log.warning("denormals are not flushed on the model thread: %s", error)
        while True:
            entry = self._jobs.get()
            if entry is None:
                return
            handle, job = entry
            self._run(handle, job)

    @staticmethod
    def _run(handle: JobHandle, job: Job) -> None:
        iterator = None
        kind, payload = "done", None
        try:
            if handle.cancel_requested:
                kind = "cancelled"
            else:
                items = job(JobContext(handle))
                iterator = iter(items) if items is not None else iter(())
                for item in iterator:
                    handle._put("item", item)
                    if handle.cancel_requested:
                        kind = "cancelled"
                        break
        except BaseException as error:  # reported to the main thread, which shows it
            kind, payload = "error", error
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()  # stops a generator between slices; its finally blocks run here
                except BaseException as error:
                    kind, payload = "error", error
            handle.final_kind = kind
            handle._put(kind, payload)
            handle._finished.set()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.005) -> bool:
    """Poll ``predicate`` until true or timeout (tests); returns its last value."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True
