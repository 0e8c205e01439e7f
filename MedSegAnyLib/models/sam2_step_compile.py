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
signs agree on at least 99.39 % of each frame's pixels, logits within 0.21; in float32 within 1e-6,
``Testing/Python/test_sam2_step_compile.py``). Hence opt-in (``Sam2Tracker(compile_step=True)`` or
``MEDSEGANY_COMPILE_STEP=1``) until a GPU run measures what it buys (``benchmarks/run_gpu.sh fused
fusedspeed``). On that CPU it costs: a step with the memory full took 0.29-0.30 s compiled against
0.16-0.19 s eager (bf16, median of steps 9-15, two runs each, alternating; why was not profiled), after
38 s of compiling. So nothing compiles the step by default.

A compiler failure runs the step eagerly from then on (:class:`~medsegany.models.compiled_call.
CompiledCall`): speed is lost, never a result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .compiled_call import CompiledCall

# "1" compiles the tracking step of SAM 2 trackers that split it (CUDA by default; see Sam2Tracker)
COMPILE_STEP_VARIABLE = "MEDSEGANY_COMPILE_STEP"


def compiled_step(step: Callable[..., Any]) -> CompiledCall:
    """``step`` (:func:`~medsegany.models.sam2_step_graphs.step_from_gathered`) through ``torch.compile``."""
    return CompiledCall(step, "the tracking step")
