"""The arithmetic a model runs in: precision (float32 or bfloat16 autocast) and a compiled image encoder.

Measured on the 2-core development CPU (AMD EPYC with AVX512-BF16, jemalloc, torch 2.15; see
``benchmarks/README.md``):

- LiteMedSAM's image encoder, one 256 x 256 slice: 2.1 s eager float32, 1.2 s eager bf16 autocast, 0.89 s
  compiled float32 and 0.41 s compiled bf16 (2026-11-24, ``torch.compile`` with inductor's weight
  freezing, which folds the batch norms into the convolutions and fuses the GELUs on the 256 x 256 x 256
  activations of its first stage). One slice at a time beats batches of 4 (0.41 vs 0.46 s a slice): the
  activations of one slice already exceed the caches. Not compiled, it runs a copy prepared for eager
  inference on a CPU (``eager_inference``; 2026-11-28, freed memory kept: 1.04 -> 0.90 s float32, 0.64 ->
  0.52 s bf16). Since 2026-11-28 that copy is what is compiled, without frozen weights
  (``compile_ready``), so inductor's cache keeps it: 20-40 s the first time on a machine, 5 s in every
  later process, against 21-33 s in every process with frozen weights, for a slice 4-7 % slower than
  theirs. Against the prepared copy it gains 1.06-1.25x in float32 and 1.29x in bf16
  (``benchmarks/eager_encoder.py --compiled``): a single float32 run stays eager (:func:`resolve_compile`).
- SAM 2.1 tiny at 512: the image encoder takes 0.50 s float32 and 0.31 s bf16 eager; compiled it takes
  0.67 s (float32) and 0.29 s (bf16), not worth 25-40 s of compiling, so SAM 2 runs eagerly unless asked
  (``sam2_compiled_encoder``, ``sam2_step_compile``; on 2026-11-28 slower compiled here). Its tracking
  step (memory attention over 7 memories of 1024 tokens) takes 0.59 s float32 and 0.36-0.42 s bf16
  (0.18 s with freed memory kept and the attention by bf16 matrix products, sam2_cpu_attention; on an
  Intel Xeon without native bf16, float32 with freed memory kept: 0.465 s, 0.39-0.41 s with the memory
  cross-attention's values projected last).

``precision="auto"`` picks bfloat16 on CUDA (Meta's own setting) and on CPUs with a native bf16 unit
(AVX512-BF16 or AMX), float32 elsewhere (MPS; CPUs without it, where bf16 is emulated and slower).
Masks in bf16 differ from float32 only along the boundary (Dice 0.996 between the two on a random-weight
SAM 2; the benchmarks report it for LiteMedSAM's trained weights). ``precision="float32"`` reproduces the
publishers' float32 numbers (the equivalence tests).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ModelError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16")
COMPILE_CHOICES = ("auto", "on", "off")
COMPILE_ENV = "MEDSEGANY_COMPILE"
# decides what precision "auto" picks when set (float32 or bfloat16): the CPU rehearsal of the GPU runs
# pins float32, whose masks do not depend on the encoder batch (bf16 on AMX: oneDNN's kernels do)
PRECISION_ENV = "MEDSEGANY_PRECISION"
# CPU flags of a native bf16 unit: x86 AVX512-BF16 and Intel AMX. Without one torch emulates bf16 through
# float32 conversions and it runs slower than float32.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """True when this CPU computes bf16 in hardware (Linux x86 flags; False where unknown)."""
    if flags is None:
        from ..cpu_tuning import cpu_flags

        flags = cpu_flags()
    return bool(set(flags) & NATIVE_BF16_FLAGS)


def device_type(device: Any) -> str:
    """The type ("cpu", "cuda", "mps") of a device given as text ("cuda:1") or as a ``torch.device``."""
    return getattr(device, "type", None) or str(device).split(":")[0]


def resolve_precision(device: str, precision: str = "auto", cpu_flags: set[str] | None = None) -> str:
    """ "float32" or "bfloat16" for this device (see the module docstring for what "auto" picks)."""
    if precision not in PRECISIONS:
        raise ModelError(
            f"precision {precision!r} is not one of {PRECISIONS}", "use auto, float32 or bfloat16"
        )
    kind = device_type(device)
    if precision == "auto":
        chosen = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
        if chosen not in PRECISIONS:
            raise ModelError(
                f"{PRECISION_ENV}={chosen!r} is not one of {PRECISIONS}", f"unset {PRECISION_ENV}"
            )
        precision = chosen
    if precision != "auto":
        if precision == "bfloat16" and kind == "mps":
            raise ModelError("bfloat16 is not supported on Apple MPS here", "use --precision float32 or auto")
        return precision
    if kind == "cuda":
        import torch

        # without a GPU here (planning memory for one), assume a current one: bf16 since Ampere (2020)
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return "float32"
        return "bfloat16"
    if kind == "cpu" and cpu_has_native_bf16(cpu_flags):
        return "bfloat16"
    return "float32"


def autocast_context(device: str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device for "bfloat16", nothing for "float32" (a resolved precision)."""
    if precision == "float32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type(device), dtype=torch.bfloat16)


def without_cudnn_attention(device: Any) -> contextlib.AbstractContextManager:
    """On CUDA: PyTorch's attention without its cuDNN backend (flash, memory-efficient or plain math
    instead); elsewhere, and on a PyTorch without ``torch.nn.attention.sdpa_kernel`` (before 2.3, which
    has no cuDNN attention either), nothing.

    Why, for SAM 2's image encoder on an H200 (torch 2.11, 2026-11-28,
    ``benchmarks/encoder_batch_shapes.py``): the first batch of a size the process had not run took
    0.49-0.60 s longer than later ones with the cuDNN backend (its plan for each new shape, no new memory
    taken from CUDA), 0.05-0.06 s without; a batch of 16 at 512 px took 13.4 ms without it, 13.7 ms with.
    """
    if device_type(device) != "cuda":
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return contextlib.nullcontext()
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(backends)


# CUDA device index -> its one side stream (see cuda_side_stream)
_SIDE_STREAMS: dict[int, Any] = {}


def cuda_side_stream(device: Any) -> Any:
    """The one CUDA stream beside the default one on ``device`` (None: the current device), shared by all
    work that needs one (SAM 2's encoder batches, the warm-up of step graph recordings): cuBLAS keeps a
    workspace for every stream it has seen, for good; a stream per recorded graph left about 1 GB of
    them on an H200 (19 graphs; benchmarks/README.md)."""
    import torch

    index = None if device is None else torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _SIDE_STREAMS[index]


def switch_from_environment(choice: bool | None, variable: str, default: bool) -> bool:
    """``choice``, or when None the environment's ``variable``: a switch that is on by ``default`` is off
    only for "0", one that is off by default is on only for "1" (the SAM 2 tracker's options)."""
    if choice is not None:
        return bool(choice)
    value = os.environ.get(variable, "").strip()
    return value != "0" if default else value == "1"


def cpp_compiler_available() -> bool:
    """Inductor's CPU backend builds C++ kernels: it needs g++/clang (Linux, macOS) or cl.exe (Windows)."""
    names = ("cl",) if sys.platform == "win32" else ("g++", "c++", "clang++")
    return any(shutil.which(name) for name in names)


def resolve_compile(
    device: str, compile_choice: str | bool = "auto", *, precision: str, single_run: bool = False
) -> bool:
    """Whether to compile a 2D model's image encoder. "auto": on a CPU with a C++ compiler, except for a
    ``single_run`` (one ``medsegany segment`` command) in float32.

    ``precision``: the resolved one (:func:`resolve_precision`). Against the copy prepared for eager
    inference (``eager_inference``; LiteMedSAM on the 2-core development CPU, 2026-11-28,
    ``benchmarks/eager_encoder.py --compiled``; the compile takes 20-40 s the first time on a machine,
    about 5 s from inductor's cache after that):

    - float32: the compiled encoder is 1.06-1.25x faster, which pays for the compile after some 120
      slices from the cache and 1000 the first time; its masks are the prepared encoder's (both within
      5e-6 of the trained encoder's features). A single run rarely tracks that many slices, so it
      stays eager; a batch and a Slicer session compile.
    - bf16: 1.29x (pays after about 50 slices from the cache, 280 the first time), but eager and
      compiled bf16 round differently and their masks differ a little, so every run compiles:
      ``segment``, ``batch`` and Slicer then give the same masks.

    ``MEDSEGANY_COMPILE=on|off`` in the environment decides "auto" (e.g. inside Slicer, or for tests that
    do not measure speed). CUDA stays eager until it is measured on a GPU (bf16 autocast already uses its
    tensor cores).
    """
    if isinstance(compile_choice, bool):
        return compile_choice
    if compile_choice not in COMPILE_CHOICES:
        raise ModelError(f"compile {compile_choice!r} is not one of {COMPILE_CHOICES}", "use auto, on or off")
    if compile_choice == "auto":
        compile_choice = os.environ.get(COMPILE_ENV, "auto").strip().lower()
        if compile_choice not in COMPILE_CHOICES:
            raise ModelError(
                f"{COMPILE_ENV}={compile_choice!r} is not one of {COMPILE_CHOICES}", f"unset {COMPILE_ENV}"
            )
    if compile_choice != "auto":
        return compile_choice == "on"
    pays = precision == "bfloat16" or not single_run
    return device_type(device) == "cpu" and pays and cpp_compiler_available()


def bf16_weights_copy(module: Any) -> Any:
    """A copy of ``module`` whose linear and convolution weights and biases are bf16, for bf16 autocast.

    Autocast casts those float32 weights to bf16 at every call (its cast cache lives only as long as the
    autocast region); the copy casts them once. Under ``torch.autocast(dtype=torch.bfloat16)`` it
    computes bitwise what the float32 module computes (the same rounding, done earlier); outside autocast
    it would fail on mixed dtypes. LiteMedSAM's mask decoder: 267 -> 232 ms a call on the 2-core CPU.
    """
    import copy

    return cast_weights_to_bf16(copy.deepcopy(module))


def cast_weights_to_bf16(module: Any) -> Any:
    """:func:`bf16_weights_copy` in place, for a module that is a copy already; returns ``module``."""
    import torch

    # the layers whose weights autocast casts (norms and embeddings it leaves in float32)
    casts = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    with torch.no_grad():
        for child in module.modules():
            if isinstance(child, casts):
                for name in ("weight", "bias"):
                    parameter = getattr(child, name, None)
                    if parameter is not None:
                        parameter.data = parameter.data.to(torch.bfloat16)
    return module


def compile_failure_reason(error: BaseException) -> str:
    """Why compiling failed, in one line for a log and a report: the error's type and first line, and the
    line after it where the first only announces it (dynamo's "backend='inductor' raised:", in front of
    inductor's "InvalidCxxCompiler: No working C++ compiler found ..." for LiteMedSAM's encoder)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return f"{type(error).__name__}: {text}"[:300]


@dataclass
class CompileReport:
    """What happened to a compiled module: compile seconds, or why it fell back to eager."""

    compiled: bool = False
    seconds: float | None = None
    fallback_reason: str | None = None


class CompiledModule:
    """Calls a module through ``torch.compile`` (inductor), eagerly when that fails.

    The weights are not frozen into the graph (see :mod:`~medsegany.models.compile_ready`): inductor's
    cache then keeps the compiled graph for the next process, which compiles in 5-7 s instead of 21-33 s
    (LiteMedSAM's encoder on the 2-core development CPU).

    Compiling happens on the first call (its time is in :attr:`report`); any failure there (no C++
    compiler, an unsupported platform) logs one warning and every later call runs the module eagerly, so a
    missing toolchain costs speed, never a result. Shapes are static: call it with one input shape.
    ``eager``: what runs instead while compiling is off or has failed (default: the module itself; e.g. an
    :class:`~medsegany.models.eager_inference.EagerInferenceEncoder` of it).
    """

    def __init__(self, module: Any, enabled: bool = True, eager: Callable[..., Any] | None = None) -> None:
        self.module = module
        self.report = CompileReport()
        self._compiled: Callable[..., Any] | None = None
        self._enabled = enabled
        self._eager = module if eager is None else eager

    @property
    def eager(self) -> Callable[..., Any]:
        """What runs while compiling is off or has failed."""
        return self._eager

    @property
    def active(self) -> bool:
        """True while it runs (or will run at its first call) compiled; False when off or fallen back."""
        return self._enabled

    def __call__(self, *args: Any) -> Any:
        if not self._enabled:
            return self._eager(*args)
        if self._compiled is None:
            return self._first_call(*args)
        return self._compiled(*args)

    def _first_call(self, *args: Any) -> Any:
        import torch

        start = time.perf_counter()
        try:
            compiled = torch.compile(self.module, dynamic=False)
            out = compiled(*args)
        except Exception as error:  # any compiler failure (toolchain, platform) means: run eagerly
            self._enabled = False
            reason = compile_failure_reason(error)
            self.report = CompileReport(False, None, reason)
            log.warning("compiling the image encoder failed (%s); running it eagerly", reason)
            return self._eager(*args)
        self._compiled = compiled
        self.report = CompileReport(True, time.perf_counter() - start)
        log.info("image encoder compiled in %.1f s", self.report.seconds)
        return out
