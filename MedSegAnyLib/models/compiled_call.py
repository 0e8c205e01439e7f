"""A function called through ``torch.compile`` as its shapes change, and eagerly once compiling failed.

For the SAM 2 parts MedSegAny can compile on request (the tracking step,
:mod:`~medsegany.models.sam2_step_compile`; the image encoder,
:mod:`~medsegany.models.sam2_compiled_encoder`). Unlike
:class:`~medsegany.models.compute.CompiledModule` (LiteMedSAM's encoder: one input shape, compiled at its
first call), their shapes change during a run (memory lengths, the last encoder batch), so every call
that makes dynamo compile a graph is counted and timed: PyTorch's automatic dynamic shapes compile the
first shape statically and make the dimension that changed symbolic at the next compile, so a run
compiles about twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..out_of_memory import is_out_of_memory
from .compute import CompileReport, compile_failure_reason

log = logging.getLogger(__name__)


def _graphs_compiled() -> int | None:
    """How many graphs dynamo compiled in this process so far (None where PyTorch does not count them)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    return int(counters["stats"]["unique_graphs"])


class CompiledCall:
    """Calls ``function`` through ``torch.compile`` (inductor, mode "default": no CUDA graph trees of its
    own, so a caller may record its kernels into a CUDA graph), eagerly once compiling failed.

    :attr:`report`: compiled or not, the seconds spent in the calls that compiled (each such call also
    runs the function once: milliseconds against seconds of compiling), and why it fell back.
    :attr:`compiles`: the calls that compiled; :attr:`graphs`: the graphs they compiled (more than
    ``compiles`` when dynamo broke the function into pieces; None where PyTorch does not count them).
    ``what`` names the function in the log.

    Any compiler failure (no Triton on the platform, no C++ compiler on a CPU, an operation another
    PyTorch cannot compile) logs one warning and every later call runs ``function`` eagerly: speed is lost,
    never a result. Running out of memory while compiling is raised, as everywhere else (the run reports
    it), and the next call compiles again.
    """

    def __init__(self, function: Callable[..., Any], what: str) -> None:
        self.function = function
        self.what = what
        self.report = CompileReport()
        self.compiles = 0
        self.graphs: int | None = 0
        self._compiled: Callable[..., Any] | None = None
        self._failed = False

    @property
    def active(self) -> bool:
        """False once compiling failed and the function runs eagerly."""
        return not self._failed

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._failed:
            return self.function(*args, **kwargs)
        import torch

        if self._compiled is None:
            # said before the wait: a first compile on a machine takes tens of seconds (38-51 s for the
            # step on the 2-core development CPU), later processes a few from inductor's cache
            log.info("compiling %s (the first time on a machine: up to a minute)", self.what)
            self._compiled = torch.compile(self.function, mode="default", fullgraph=False)
        before = _graphs_compiled()
        start = time.perf_counter()
        try:
            out = self._compiled(*args, **kwargs)
        except Exception as error:
            if is_out_of_memory(error):
                raise
            self._fall_back(error)
            return self.function(*args, **kwargs)
        after = _graphs_compiled()
        counted = before is not None and after is not None
        # where PyTorch does not count its graphs, only the first call is taken for the compile
        compiled_now = after > before if counted else self.compiles == 0
        if counted and self.graphs is not None:
            self.graphs += after - before
        elif not counted:
            self.graphs = None
        if compiled_now:
            self.compiles += 1
            seconds = (self.report.seconds or 0.0) + time.perf_counter() - start
            self.report = CompileReport(True, seconds)
            log.info("%s compiled (%d graphs, %.1f s in all)", self.what, self.compiles, seconds)
        return out

    def _fall_back(self, error: BaseException) -> None:
        self._failed = True
        reason = compile_failure_reason(error)
        self.report = CompileReport(False, self.report.seconds, reason)
        log.warning("compiling %s failed (%s); running it eagerly", self.what, reason)
