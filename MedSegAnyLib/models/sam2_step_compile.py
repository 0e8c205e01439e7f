"""SAM 2's tracking step through ``torch.compile`` (inductor), for the CUDA graphs to replay (opt-in).

Why: on an H200 (2026-11-28, ``benchmarks/README.md``) a tracking step of SAM 2.1 tiny at 512 px,
replayed from a CUDA graph (:mod:`~medsegany.models.sam2_step_graphs`), is bound by the GPU: 672
kernels, 2.33 ms of GPU work, most of them small element-wise ones (the temporal encodings added to the
memory, layer norms, activations, residual adds, the hole filling's 8 rounds of pooling). The graph
removed their launch cost, not their number. Inductor fuses such chains into single kernels; its
generated kernels are recorded into the same graph, so a replay runs fewer, larger kernels.

What is compiled: :func:`~medsegany.models.sam2_step_graphs.step_from_gathered`, the step from the
gathered memory on (the memory's encodings, memory attention, mask decoder, object pointer, memory
encoder, the holes filled on the device), as one graph (no graph breaks on PyTorch 2.14). Shapes change
only while the memory fills; the first compile is for the first memory length, the next one makes that
length symbolic (PyTorch's automatic dynamic shapes), so a run compiles twice and every later length
reuses the second graph. Compiling happens in the warm-up before a graph is recorded, never inside a
recording. Inductor's cache keeps the compiled graphs for the next process.

The numbers: inductor fuses what eager rounds between kernels, so under bf16 the masks are close to the
eager step's, not bitwise (SAM 2.1 tiny at 512 px, random weights, on the 2-core development CPU: mask
signs agree on at least 99.4 % of each frame's pixels, logits within 0.21; in float32 within 1e-6,
``Testing/Python/test_sam2_step_compile.py``). Hence opt-in (``Sam2Tracker(compile_step=True)`` or
``MEDSEGANY_COMPILE_STEP=1``) until a GPU run measures what it buys (``benchmarks/run_gpu.sh fused
fusedspeed``). On that CPU it costs: a step with the memory full took 0.29 s compiled against
0.16-0.19 s eager (bf16, median of steps 9-15, two runs each, alternating; why was not profiled), after
38 s of compiling. So nothing compiles the step by default.

Any compiler failure (no Triton on the platform, no C++ compiler on a CPU, an unsupported operation in
another PyTorch) logs one warning and the step runs eagerly from then on: speed is lost, never a result.
Running out of memory while compiling is raised, as everywhere else (the run reports it).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ..out_of_memory import is_out_of_memory
from .compute import CompileReport

log = logging.getLogger(__name__)

# "1" compiles the tracking step of SAM 2 trackers that split it (CUDA by default; see Sam2Tracker)
COMPILE_STEP_VARIABLE = "MEDSEGANY_COMPILE_STEP"


def compile_step_requested(choice: bool | None) -> bool:
    """``choice``, or when None the environment's ``MEDSEGANY_COMPILE_STEP`` ("1": on; default off)."""
    if choice is not None:
        return bool(choice)
    return os.environ.get(COMPILE_STEP_VARIABLE, "0").strip() == "1"


def _graphs_compiled() -> int | None:
    """How many graphs dynamo compiled in this process so far (None where PyTorch does not count them)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    return int(counters["stats"]["unique_graphs"])


class CompiledStep:
    """Calls ``step`` through ``torch.compile`` (inductor, no CUDA graphs of its own: the caller records
    them), eagerly once compiling failed.

    :attr:`report`: compiled or not, the seconds spent in the calls that compiled (each such call also
    runs one step: milliseconds against seconds of compiling), and why it fell back. :attr:`compiles`:
    the calls that compiled a graph.
    """

    def __init__(self, step: Callable[..., Any]) -> None:
        self.step = step
        self.report = CompileReport()
        self.compiles = 0
        self._compiled: Callable[..., Any] | None = None
        self._failed = False

    @property
    def active(self) -> bool:
        """False once compiling failed and the step runs eagerly."""
        return not self._failed

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._failed:
            return self.step(*args, **kwargs)
        import torch

        if self._compiled is None:
            # "default": inductor's kernels without its CUDA graph trees; the step graphs record them
            self._compiled = torch.compile(self.step, mode="default", fullgraph=False)
        before = _graphs_compiled()
        start = time.perf_counter()
        try:
            out = self._compiled(*args, **kwargs)
        except Exception as error:
            if is_out_of_memory(error):
                raise
            self._fall_back(error)
            return self.step(*args, **kwargs)
        after = _graphs_compiled()
        # where PyTorch does not count its graphs, only the first call is taken for the compile
        compiled_now = (after > before) if before is not None and after is not None else self.compiles == 0
        if compiled_now:
            self.compiles += 1
            seconds = (self.report.seconds or 0.0) + time.perf_counter() - start
            self.report = CompileReport(True, seconds)
            log.info("tracking step compiled (%d graphs, %.1f s in all)", self.compiles, seconds)
        return out

    def _fall_back(self, error: BaseException) -> None:
        self._failed = True
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = f"{type(error).__name__}: {first_line}"[:300]
        self.report = CompileReport(False, self.report.seconds, reason)
        log.warning("compiling the tracking step failed (%s); running it eagerly", reason)
