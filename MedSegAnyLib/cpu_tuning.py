"""Settings that make PyTorch inference faster on a CPU, and advice for the ones a process cannot set itself.

Measured on the 2-core development machine: a large matrix product runs at 134 GFLOP/s in float32 and
352 GFLOP/s in bfloat16 (AVX512-BF16). The allocator matters as much as the arithmetic: see
:mod:`medsegany.allocator`, which keeps freed memory while a model runs. What :func:`tune_cpu` does:

- flush denormals to zero (``torch.set_flush_denormal``): tiny weights and activations otherwise take
  the slow microcode path of x86 floating point units;
- one thread per physical core (hyper-threads share one core's vector units and only add contention),
  never more than the cores this process may run on; where /proc/cpuinfo does not say (Windows, macOS),
  PyTorch's own default, which counts physical cores, and only the performance cores of Apple silicon;
- probe bfloat16 with a tiny matrix product: supported when it runs and agrees with float32, fast when
  it is also quicker (CPUs with AVX512-BF16 or AMX), so callers may choose bf16 autocast;
- report whether jemalloc is preloaded; an allocator cannot be switched once Python runs, so the advice
  is ``LD_PRELOAD=libjemalloc.so.2`` before starting the process. With freed memory kept it helps the
  eager float32 models only (LiteMedSAM's plain loop 0.91 s a slice against 1.12 s with glibc); the
  compiled bf16 LiteMedSAM ran as fast on glibc (0.377 against 0.395 s a slice, 2026-11-27).

Loading a model on a CPU (``medsegany.models.registry.load_model``: the CLI, Slicer) applies these
settings once per process (:func:`tune_cpu_once`), except the denormal flag, which is per thread: each
thread that loads or runs a model sets it again (:func:`flush_denormals_if_tuned`). While a model runs,
the allocator keeps the memory it frees (:mod:`medsegany.allocator`).

Example::

    >>> tuning = tune_cpu()            # doctest: +SKIP
    >>> print(tuning.message)          # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

JEMALLOC_NAME = "libjemalloc.so.2"
# Where Debian/Ubuntu, Fedora/RHEL and Homebrew/conda put the library.
JEMALLOC_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/opt/homebrew/lib",
)
# A bf16 product of two N(0, 1) 64 x 64 matrices differs from float32 by ~1 % of its scale (8-bit mantissa);
# 5 % tells a working bf16 kernel from a broken one without flagging rounding.
BF16_TOLERANCE = 0.05
# bf16 is called fast when it beats float32 by this factor on the probe (timing noise on a busy machine is
# about 10 %).
BF16_FAST_FACTOR = 1.2


@dataclass(frozen=True)
class CpuTuning:
    """What :func:`tune_cpu` set and found. ``advice``: what the user could still do, one line each."""

    threads: int
    physical_cores: int
    logical_cores: int
    flush_denormal: bool
    bf16_supported: bool
    bf16_fast: bool
    bf16_speedup: float | None
    jemalloc_preloaded: bool
    jemalloc_path: str | None
    advice: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        lines = [
            f"CPU: {self.threads} threads "
            f"({self.physical_cores} physical / {self.logical_cores} logical cores), "
            f"denormals flushed: {'yes' if self.flush_denormal else 'no'}, "
            f"bf16: {'fast' if self.bf16_fast else 'supported' if self.bf16_supported else 'no'}"
            + (f" ({self.bf16_speedup:.2f}x float32)" if self.bf16_speedup else "")
            + f", jemalloc: {'preloaded' if self.jemalloc_preloaded else 'not preloaded'}"
        ]
        return "\n".join(lines + self.advice)

    def as_dict(self) -> dict:
        return {
            "threads": self.threads,
            "physical_cores": self.physical_cores,
            "logical_cores": self.logical_cores,
            "flush_denormal": self.flush_denormal,
            "bf16_supported": self.bf16_supported,
            "bf16_fast": self.bf16_fast,
            "bf16_speedup": self.bf16_speedup,
            "jemalloc_preloaded": self.jemalloc_preloaded,
            "jemalloc_path": self.jemalloc_path,
            "advice": list(self.advice),
        }


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def parse_physical_cores(cpuinfo_text: str) -> int | None:
    """Distinct (physical id, core id) pairs in a /proc/cpuinfo text; None when it names no cores."""
    cores: set[tuple[str, str]] = set()
    physical, core = "0", None
    for line in [*cpuinfo_text.splitlines(), ""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            physical = value
        elif key == "core id":
            core = value
        elif not key:  # a blank line ends one logical CPU's block
            if core is not None:
                cores.add((physical, core))
            physical, core = "0", None
    return len(cores) or None


def physical_core_count() -> int:
    """Physical cores available to this process: /proc/cpuinfo's cores (Linux x86), else PyTorch's own
    default thread count, at most the usable CPUs."""
    usable = usable_cpus()
    text = _cpuinfo_text()
    physical = None if text is None else parse_physical_cores(text)
    if physical is None:
        # no /proc/cpuinfo (Windows, macOS) or no core ids in it (ARM): os.cpu_count() counts SMT
        # threads, and Apple silicon's efficiency cores, which slow every parallel region to their pace;
        # PyTorch's default counts physical cores (cpuinfo), only the performance ones on Apple silicon
        physical = torch_default_threads()
    if physical is None:
        return usable
    # cpuinfo lists the whole machine; a container may be limited to fewer CPUs than its physical cores
    return max(1, min(physical, usable))


def torch_default_threads() -> int | None:
    """PyTorch's intra-op thread count as this process found it, read once, before :func:`tune_cpu` sets
    its own (None before torch is imported)."""
    global _TORCH_DEFAULT_THREADS
    if _TORCH_DEFAULT_THREADS is None:
        torch = sys.modules.get("torch")  # never import torch only for this
        if torch is None:
            return None
        _TORCH_DEFAULT_THREADS = int(torch.get_num_threads())
    return _TORCH_DEFAULT_THREADS


_TORCH_DEFAULT_THREADS: int | None = None


def _cpuinfo_text() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_flags() -> set[str]:
    """The CPU feature flags of the first processor in /proc/cpuinfo (empty outside Linux x86)."""
    for line in (_cpuinfo_text() or "").splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def jemalloc_preloaded(maps_text: str | None = None) -> bool:
    """True when jemalloc is mapped into this process (LD_PRELOAD or linked), from /proc/self/maps."""
    if maps_text is None:
        try:
            maps_text = Path("/proc/self/maps").read_text()
        except OSError:
            return "jemalloc" in os.environ.get("LD_PRELOAD", "")
    return "libjemalloc" in maps_text


def find_jemalloc(directories: tuple[str, ...] = JEMALLOC_DIRS) -> str | None:
    """The path of an installed libjemalloc.so.2, or None."""
    for directory in directories:
        candidate = Path(directory) / JEMALLOC_NAME
        if candidate.is_file():
            return str(candidate)
    return None


def probe_bf16(size: int = 256, repeats: int = 5) -> tuple[bool, float | None]:
    """(bf16 matrix products work and agree with float32, measured speedup of bf16 over float32).

    A ``size`` x ``size`` product, best of ``repeats``: about 30 MFLOP, a few milliseconds.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    try:
        exact = a @ b
        approx = (a.bfloat16() @ b.bfloat16()).float()
    except RuntimeError:  # no bf16 kernel on this build/CPU
        return False, None
    error = float((approx - exact).abs().max() / exact.abs().max())
    if not error <= BF16_TOLERANCE:
        return False, None

    def best_time(x: torch.Tensor, y: torch.Tensor) -> float:
        x @ y  # warm-up: the first call picks a kernel
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)

    fp32 = best_time(a, b)
    bf16 = best_time(a.bfloat16(), b.bfloat16())
    return True, fp32 / max(bf16, 1e-9)


def tune_cpu(threads: int | None = None, probe: bool = True, flush_denormal: bool = True) -> CpuTuning:
    """Apply the CPU settings to this process's torch and report them (see the module docstring).

    ``threads``: None = one per physical core. ``probe``: run the bf16 probe (a few milliseconds).
    """
    import torch

    physical = physical_core_count()  # reads PyTorch's default before it is changed below
    wanted = physical if threads is None else max(1, int(threads))
    torch.set_num_threads(wanted)
    flushed = flush_denormals_on_this_thread() if flush_denormal else False
    supported, speedup = probe_bf16() if probe else (False, None)
    flags = cpu_flags()
    # a native bf16 unit makes bf16 pay; without it torch emulates bf16 through float32 (slower)
    native = bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    fast = supported and speedup is not None and speedup >= BF16_FAST_FACTOR
    preloaded = jemalloc_preloaded()
    path = find_jemalloc()
    advice = []
    if not preloaded:
        if path is not None:
            advice.append(
                f"for eager float32 models start Python with LD_PRELOAD={path} "
                "(jemalloc: about 20 % faster than glibc's allocator there)"
            )
        else:
            advice.append(
                "for eager float32 models install jemalloc (apt install libjemalloc2) and start Python with "
                "LD_PRELOAD=libjemalloc.so.2 (about 20 % faster than glibc's allocator there)"
            )
    if supported and native and not fast and speedup is not None:
        advice.append(f"bf16 ran only {speedup:.2f}x float32 on the probe: keep float32 on this CPU")
    return CpuTuning(
        threads=torch.get_num_threads(),
        physical_cores=physical,
        logical_cores=os.cpu_count() or 1,
        flush_denormal=flushed,
        bf16_supported=supported,
        bf16_fast=fast,
        bf16_speedup=None if speedup is None else round(speedup, 3),
        jemalloc_preloaded=preloaded,
        jemalloc_path=path,
        advice=advice,
    )


_PROCESS_TUNING: CpuTuning | None = None
# a thread count the user chose in the environment is kept
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def tune_cpu_once() -> CpuTuning:
    """:func:`tune_cpu` for this process, once, without the probe: what loading a model on a CPU does (the
    CLI, Slicer, the library's ``load_model``). A thread count set by ``OMP_NUM_THREADS`` or
    ``MKL_NUM_THREADS`` is kept."""
    global _PROCESS_TUNING
    if _PROCESS_TUNING is None:
        import torch

        chosen = any(os.environ.get(name, "").strip() for name in THREAD_VARIABLES)
        _PROCESS_TUNING = tune_cpu(threads=torch.get_num_threads() if chosen else None, probe=False)
    else:  # the flush is per thread: a model loaded on another thread than the first one needs it too
        flush_denormals_if_tuned()
    return _PROCESS_TUNING


def flush_denormals_on_this_thread() -> bool:
    """Flush denormals to zero in the calling thread. Returns whether the CPU supports it.

    The flag lives in a per-thread register (x86's MXCSR, ARM's FPCR), so ``torch.set_flush_denormal``
    reaches only the thread that calls it, and the OpenMP workers that thread creates afterwards: they
    copy the register when its first parallel operation creates them. Workers that exist already keep
    IEEE arithmetic, so a thread should call this before its first parallel operation. Measured on the
    2-core development CPU: a second Slicer model thread (after a module reload) ran both its OpenMP
    threads unflushed, while the tuning said "denormals flushed: yes"."""
    import torch

    return bool(torch.set_flush_denormal(True))


def flush_denormals_if_tuned() -> bool:
    """In a thread about to run a model: flush denormals as :func:`tune_cpu_once` did for this process.
    Does nothing (False) before a model was loaded on a CPU, so torch is not imported for it."""
    tuning = _PROCESS_TUNING
    if tuning is None or not tuning.flush_denormal:
        return False
    return flush_denormals_on_this_thread()
