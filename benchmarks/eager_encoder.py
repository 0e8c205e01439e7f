"""LiteMedSAM's image encoder where it is not compiled: as trained against prepared for eager inference.

A CPU without a C++ compiler for inductor (most Windows machines, Macs without Xcode's tools) or a run
with ``--compile off`` runs the encoder eagerly. MedSegAny then runs a copy prepared for inference
(``medsegany.models.eager_inference``: batch norms folded into the convolutions, channels-last layout,
bf16 weights under bf16). For each precision (float32, and bfloat16 where this CPU has a native bf16
unit) both encoders embed the same ``--frames`` slices of ``speed.py``'s phantom, alternating, with freed
memory kept as a session runs them; medians of the per-slice seconds in the JSON, with the largest
difference between their features. ``--compiled`` adds the compiled encoder (MedSegAny's default under
bf16 on a CPU with a C++ compiler) to the alternation, with its one-time compile and the number of slices
after which that compile has paid for itself against the prepared encoder.

Example::

    LD_PRELOAD=libjemalloc.so.2 .venv/bin/python benchmarks/eager_encoder.py \\
        --output benchmarks/results/eager_encoder_cpu.json
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

from speed import _write_json, machine_info, phantom_kji


def time_embeddings(model: Any, frames: np.ndarray) -> tuple[list[float], Any]:
    """Seconds of each slice's embedding (one slice a call, as on a CPU), and the last slice's features."""
    seconds, features = [], None
    for frame in frames:
        start = time.perf_counter()
        (embedding,) = model.embed_frames([frame])
        seconds.append(time.perf_counter() - start)
        features = embedding.features
    return seconds, features


def break_even_slices(compile_s: float | None, prepared_s: float, compiled_s: float) -> float | None:
    """Slices after which compiling (``compile_s`` once) has paid for itself: None when it never does (or
    the compile failed: ``compile_s`` None)."""
    saved = prepared_s - compiled_s
    return compile_s / saved if compile_s is not None and saved > 0 else None


def run(
    frames: int, size: int, repeats: int, precisions: list[str], compiled: bool = False
) -> dict[str, Any]:
    from medsegany.allocator import retained_freed_memory
    from medsegany.cpu_tuning import tune_cpu_once
    from medsegany.models.litemedsam import LiteMedSamModel

    tuning = tune_cpu_once()
    volume = phantom_kji(frames, size)
    cases = {}
    for precision in precisions:
        models = {
            name: LiteMedSamModel(device="cpu", precision=precision, compile="off", eager_speedups=speedups)
            for name, speedups in (("as_trained", False), ("prepared", True))
        }
        compile_s = None
        if compiled:
            models["compiled"] = LiteMedSamModel(device="cpu", precision=precision, compile="on")
            compile_s = models["compiled"].warm_up()  # None: the compile failed and it runs eagerly
        times: dict[str, list[float]] = {name: [] for name in models}
        features = {}
        with retained_freed_memory():
            for model in models.values():  # warm-up: oneDNN's first call picks its kernels
                time_embeddings(model, volume[:1])
            for repeat in range(repeats):  # alternating, the order swapped every repeat
                order = list(models) if repeat % 2 == 0 else list(models)[::-1]
                for name in order:
                    seconds, features[name] = time_embeddings(models[name], volume)
                    times[name].extend(seconds)
        trained, prepared = (statistics.median(times[name]) for name in ("as_trained", "prepared"))
        difference = (features["prepared"].float() - features["as_trained"].float()).abs().max()
        cases[precision] = {
            "as_trained_s_per_slice": trained,
            "prepared_s_per_slice": prepared,
            "speedup": trained / prepared,
            "max_abs_feature_diff": float(difference),
            "max_abs_feature": float(features["as_trained"].float().abs().max()),
            "folded_batch_norms": models["prepared"].encoder.eager.folded,
        }
        if compiled:
            compiled_s = statistics.median(times["compiled"])
            cases[precision].update(
                compiled_s_per_slice=compiled_s,
                compile_s=compile_s,
                compiled_over_prepared=prepared / compiled_s,
                compile_break_even_slices=break_even_slices(compile_s, prepared, compiled_s),
                compiled_max_abs_feature_diff=float(
                    (features["compiled"].float() - features["as_trained"].float()).abs().max()
                ),
            )
    return {
        "benchmark": "eager_encoder",
        "machine": machine_info("cpu"),
        "cpu_tuning": tuning.as_dict(),
        "frames": frames,
        "frame_size": size,
        "repeats": repeats,
        "cases": cases,
    }


def main(argv: list[str] | None = None) -> int:
    from medsegany.models.compute import cpu_has_native_bf16

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument(
        "--precisions", nargs="+", choices=["float32", "bfloat16"], help="default: bfloat16 where native too"
    )
    parser.add_argument("--compiled", action="store_true", help="add the compiled encoder")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    precisions = args.precisions or ["float32", *(["bfloat16"] if cpu_has_native_bf16() else [])]
    report = run(args.frames, args.size, args.repeats, precisions, args.compiled)
    _write_json(args.output, report)
    for precision, case in report["cases"].items():
        print(
            f"{precision}: as trained {case['as_trained_s_per_slice']:.3f} s a slice, prepared "
            f"{case['prepared_s_per_slice']:.3f} s ({case['speedup']:.2f}x), features differ by "
            f"{case['max_abs_feature_diff']:.2g} (of {case['max_abs_feature']:.2g})"
        )
        if "compiled_s_per_slice" in case:
            compile_s, slices = case["compile_s"], case["compile_break_even_slices"]
            took = "failed" if compile_s is None else f"took {compile_s:.1f} s"
            print(
                f"  compiled {case['compiled_s_per_slice']:.3f} s a slice "
                f"({case['compiled_over_prepared']:.2f}x the prepared); its compile {took}, paid for after "
                f"{'no number of' if slices is None else f'{slices:.0f}'} slices"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
