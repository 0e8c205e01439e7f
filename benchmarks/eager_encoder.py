"""LiteMedSAM's image encoder where it is not compiled: as trained against prepared for eager inference.

A CPU without a C++ compiler for inductor (most Windows machines, Macs without Xcode's tools) or a run
with ``--compile off`` runs the encoder eagerly. MedSegAny then runs a copy prepared for inference
(``medsegany.models.eager_inference``: batch norms folded into the convolutions, channels-last layout,
bf16 weights under bf16). For each precision (float32, and bfloat16 where this CPU has a native bf16
unit) both encoders embed the same ``--frames`` slices of ``speed.py``'s phantom, alternating, with freed
memory kept as a session runs them; medians of the per-slice seconds in the JSON, with the largest
difference between their features. ``--compiled`` adds the compiled encoder (MedSegAny's default under
bf16 on a CPU with a C++ compiler) to the alternation, with its one-time compile and the number of slices
after which that compile has paid for itself against the prepared encoder; also the encoder compiled as
MedSegAny compiled it until 2026-11-28 (``frozen``: the encoder as trained, inductor with frozen weights,
which its cache cannot keep), and each compile once more in a fresh process (``*_compile_again_s``: what
every later ``medsegany`` process pays, from inductor's cache). ``--fresh-compile-cache`` points inductor
at an empty cache folder first, so the first compile is what a new machine pays.

Example::

    LD_PRELOAD=libjemalloc.so.2 .venv/bin/python benchmarks/eager_encoder.py \\
        --output benchmarks/results/eager_encoder_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
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


class FrozenCompiledEncoder:
    """LiteMedSAM's encoder as MedSegAny compiled it until 2026-11-28: the encoder as trained through
    ``torch.compile`` with inductor's frozen weights (norms folded, oneDNN-packed weights, which its cache
    cannot store), so each process compiles it in full. Called as a model's ``encoder`` (one slice a call,
    compiled on the first)."""

    active = True

    def __init__(self, model: Any) -> None:
        import torch
        from medsegany.models.compute import CompileReport

        self.compiled = torch.compile(model.net.image_encoder, dynamic=False)
        self.report = CompileReport()

    def __call__(self, images: Any) -> Any:
        import torch._inductor.config as inductor_config

        start = time.perf_counter()
        with inductor_config.patch(freezing=True):
            out = self.compiled(images)
        if not self.report.compiled:
            self.report.compiled, self.report.seconds = True, time.perf_counter() - start
        return out


def frozen_model(precision: str) -> tuple[Any, float]:
    """A LiteMedSAM whose encoder is a :class:`FrozenCompiledEncoder`, and its compile seconds."""
    from medsegany.models.litemedsam import LiteMedSamModel

    model = LiteMedSamModel(device="cpu", precision=precision, compile="off", eager_speedups=False)
    model.encoder = FrozenCompiledEncoder(model)
    return model, model.warm_up()


def compile_seconds(precision: str, frozen: bool) -> float | None:
    """In this process: the seconds a fresh LiteMedSAM takes to compile its encoder (``--compile-only``)."""
    if frozen:
        return frozen_model(precision)[1]
    from medsegany.models.litemedsam import LiteMedSamModel

    return LiteMedSamModel(device="cpu", precision=precision, compile="on").warm_up()


def compile_again_s(precision: str, frozen: bool) -> float | None:
    """The compile in a fresh process, as every later ``medsegany`` process pays it (same inductor cache)."""
    command = [sys.executable, __file__, "--compile-only", "--precisions", precision, "--output", os.devnull]
    done = subprocess.run(command + (["--frozen"] if frozen else []), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"compiling in a fresh process failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["compile_s"]


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
        compile_s = frozen_s = None
        if compiled:
            models["compiled"] = LiteMedSamModel(device="cpu", precision=precision, compile="on")
            compile_s = models["compiled"].warm_up()  # None: the compile failed and it runs eagerly
            models["frozen"], frozen_s = frozen_model(precision)
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
            compiled_s, frozen = (statistics.median(times[name]) for name in ("compiled", "frozen"))
            again_s = compile_again_s(precision, frozen=False)
            cases[precision].update(
                compiled_s_per_slice=compiled_s,
                compile_s=compile_s,
                compile_again_s=again_s,
                compiled_over_prepared=prepared / compiled_s,
                compile_break_even_slices=break_even_slices(compile_s, prepared, compiled_s),
                compile_again_break_even_slices=break_even_slices(again_s, prepared, compiled_s),
                compiled_max_abs_feature_diff=float(
                    (features["compiled"].float() - features["as_trained"].float()).abs().max()
                ),
                rerouted_layers=getattr(models["compiled"].encoder.module, "rerouted", None),
                frozen_s_per_slice=frozen,
                frozen_compile_s=frozen_s,
                frozen_compile_again_s=compile_again_s(precision, frozen=True),
                frozen_over_compiled=compiled_s / frozen,
                frozen_max_abs_feature_diff=float(
                    (features["frozen"].float() - features["as_trained"].float()).abs().max()
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


def _took(seconds: float | None) -> str:
    """A compile's seconds as printed; None: it failed, and that encoder ran eagerly."""
    return "failed" if seconds is None else f"took {seconds:.1f} s"


def main(argv: list[str] | None = None) -> int:
    from medsegany.models.compute import cpu_has_native_bf16

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument(
        "--precisions", nargs="+", choices=["float32", "bfloat16"], help="default: bfloat16 where native too"
    )
    parser.add_argument("--compiled", action="store_true", help="add the compiled encoders")
    parser.add_argument(
        "--fresh-compile-cache", action="store_true", help="start from an empty inductor cache folder"
    )
    parser.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)  # compile_again_s
    parser.add_argument("--frozen", action="store_true", help=argparse.SUPPRESS)  # with --compile-only
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    precisions = args.precisions or ["float32", *(["bfloat16"] if cpu_has_native_bf16() else [])]
    if args.compile_only:
        print(json.dumps({"compile_s": compile_seconds(precisions[0], args.frozen)}))
        return 0
    if args.fresh_compile_cache:  # read by inductor when it first compiles, and inherited by the children
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="medsegany_inductor_")
    report = run(args.frames, args.size, args.repeats, precisions, args.compiled)
    report["fresh_compile_cache"] = args.fresh_compile_cache
    _write_json(args.output, report)
    for precision, case in report["cases"].items():
        print(
            f"{precision}: as trained {case['as_trained_s_per_slice']:.3f} s a slice, prepared "
            f"{case['prepared_s_per_slice']:.3f} s ({case['speedup']:.2f}x), features differ by "
            f"{case['max_abs_feature_diff']:.2g} (of {case['max_abs_feature']:.2g})"
        )
        if "compiled_s_per_slice" in case:
            slices = case["compile_break_even_slices"]
            pays = "no number of" if slices is None else f"{slices:.0f}"
            compile_s, again_s = _took(case["compile_s"]), _took(case["compile_again_s"])
            print(
                f"  compiled {case['compiled_s_per_slice']:.3f} s a slice "
                f"({case['compiled_over_prepared']:.2f}x the prepared); its compile {compile_s}, paid for "
                f"after {pays} slices; in a fresh process {again_s}"
            )
            compile_s, again_s = _took(case["frozen_compile_s"]), _took(case["frozen_compile_again_s"])
            print(
                f"  frozen (until 2026-11-28) {case['frozen_s_per_slice']:.3f} s a slice "
                f"({case['frozen_over_compiled']:.2f}x the compiled); its compile {compile_s}, in a fresh "
                f"process {again_s}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
