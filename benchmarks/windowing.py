"""The intensity window applied to a whole volume: on one thread against the threads MedSegAny uses.

Every session windows its volume once, before the first slice (``medsegany.intensity.apply_window``: a
uint8 copy the model sees). On a GPU that is part of the run's end to end time: the H200 run of
2026-11-27 spent 0.55-0.80 s in its "load" phase against 3.2 s of propagation, and the target for 300
slices is 1.0 s in all. The window is a table lookup for 8/16-bit voxels and float32 arithmetic for the
rest, both in NumPy calls that release the GIL, so blocks of slices run on threads
(``_MAX_WINDOW_THREADS``, at most the CPUs this process may use).

For each voxel type (int16 as CT, uint8, float32 as a resampled MR), a random ``--slices`` x ``--size``²
volume is windowed ``--repeats`` times each way, alternating; medians in the JSON, with the threads
used and whether the two outputs are identical.

Example::

    .venv/bin/python benchmarks/windowing.py --output benchmarks/results/windowing_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import _write_json, machine_info


def time_window(voxels: np.ndarray, threads: int) -> tuple[float, np.ndarray]:
    """Seconds of one windowing with at most ``threads`` threads, and its output."""
    import medsegany.intensity as intensity

    window = intensity.IntensityWindow(-160.0, 240.0, "ct-soft-tissue")
    saved = intensity._MAX_WINDOW_THREADS
    intensity._MAX_WINDOW_THREADS = threads
    try:
        start = time.perf_counter()
        out = intensity.apply_window(voxels, window)
        return time.perf_counter() - start, out
    finally:
        intensity._MAX_WINDOW_THREADS = saved


def run(slices: int, size: int, repeats: int) -> dict[str, Any]:
    import medsegany.intensity as intensity
    from medsegany.cpu_tuning import usable_cpus

    rng = np.random.default_rng(0)
    threads = min(usable_cpus(), intensity._MAX_WINDOW_THREADS)
    cases = {}
    for dtype in ("int16", "uint8", "float32"):
        voxels = rng.integers(-1000, 2000, (slices, size, size)).astype(dtype)
        one, many = [], []
        for _ in range(repeats):  # alternating, so both see the same machine
            seconds, serial = time_window(voxels, 1)
            one.append(seconds)
            seconds, threaded = time_window(voxels, threads)
            many.append(seconds)
        cases[dtype] = {
            "one_thread_s": statistics.median(one),
            "threads_s": statistics.median(many),
            "speedup": statistics.median(one) / statistics.median(many),
            "outputs_identical": bool(np.array_equal(serial, threaded)),
        }
    return {
        "benchmark": "windowing",
        "machine": machine_info("cpu"),
        "shape_kji": [slices, size, size],
        "repeats": repeats,
        "threads": threads,  # at most: a volume of fewer blocks uses fewer
        "cases": cases,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    report = run(args.slices, args.size, args.repeats)
    _write_json(args.output, report)
    for dtype, case in report["cases"].items():
        print(
            f"{dtype}: one thread {case['one_thread_s']:.3f} s, {report['threads']} threads "
            f"{case['threads_s']:.3f} s ({case['speedup']:.2f}x), identical {case['outputs_identical']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
