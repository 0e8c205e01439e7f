"""LiteMedSAM's CPU encoder with and without row strips, on the main thread and on Slicer's model thread.

The Slicer module runs every session on one model thread of its own (``medsegany.slicer_worker``), where
glibc cannot keep a block above 64 MiB from slice to slice; ``medsegany.models.row_strips`` keeps the
encoder's activations under that. Two LiteMedSAM models (the same ``--precision`` and ``--compile``), one
with its strips and one whose strips are turned off before its first call, embed ``--frames`` slices of
``speed.py``'s phantom on the main thread and as jobs on one ``ModelWorker`` thread. The four variants
alternate in one process, their order reversed every repeat, with freed memory kept as a session keeps
it. The JSON has the median seconds a slice, the process's minor page faults a slice (``ru_minflt``:
the other variants run in between, never at the same time) and the largest difference between the two
models' features.

Example::

    .venv/bin/python benchmarks/thread_encoder.py --compile on \\
        --output benchmarks/results/thread_encoder_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eager_encoder import time_embeddings
from speed import PhaseTimer, _write_json, machine_info, on_worker_thread, phantom_kji

VARIANTS = ("strips_main", "strips_worker", "whole_main", "whole_worker")


def strip_blocks_of(model: Any) -> list[Any]:
    """The row-strip blocks of ``model``'s encoders: the eager one and the copy it compiles."""
    encoders = {id(encoder): encoder for encoder in (model.encoder.eager, model.encoder.module)}
    return [
        block
        for encoder in encoders.values()
        for block in getattr(encoder, "module", encoder).modules()
        if type(block).__name__ == "RowStripMBConv"
    ]


def turn_strips_off(model: Any) -> int:
    """Make every row-strip block of ``model``'s encoders run whole, as before the strips; returns how
    many. Before the first call: a compiled graph keeps its strips."""
    blocks = strip_blocks_of(model)
    for block in blocks:
        block.strip_bytes = sys.maxsize
    return len(blocks)


def strips_a_slice(model: Any) -> list[int]:
    """The strip counts of ``model``'s row-strip blocks for a 256 x 256 input in its precision."""
    import torch

    dtype = torch.bfloat16 if model.precision == "bfloat16" else torch.float32
    image = torch.empty((1, 1, 256, 256), dtype=dtype)
    return sorted({block.strips(image) for block in strip_blocks_of(model)})


def run(frames: int, size: int, repeats: int, precision: str, compile_mode: str) -> dict[str, Any]:
    from medsegany.allocator import retained_freed_memory
    from medsegany.cpu_tuning import tune_cpu_once
    from medsegany.models.litemedsam import LiteMedSamModel
    from medsegany.slicer_worker import ModelWorker

    tuning = tune_cpu_once()
    volume = phantom_kji(frames, size)
    models = {
        name: LiteMedSamModel(device="cpu", precision=precision, compile=compile_mode)
        for name in ("strips", "whole")
    }
    strip_blocks = models["strips"].encoder.eager.strip_blocks
    turned_off = turn_strips_off(models["whole"])
    strips = {name: strips_a_slice(model) for name, model in models.items()}
    compile_s = {name: model.warm_up() for name, model in models.items()}
    worker = ModelWorker()
    seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    timers = {variant: PhaseTimer(cuda=False) for variant in VARIANTS}  # their page faults
    features: dict[str, Any] = {}

    def embedding(variant: str, warm_up: bool) -> Callable[[PhaseTimer], dict[str, Any]]:
        """One pass of ``variant``'s model over the slices (the first one only to warm up)."""

        def embed(timer: PhaseTimer) -> dict[str, Any]:
            with retained_freed_memory(), timer("embed"):
                taken, features[variant] = time_embeddings(
                    models[variant.split("_")[0]], volume[:1] if warm_up else volume
                )
            if not warm_up:
                seconds[variant].extend(taken)
            return {}

        return embed

    def on_thread(variant: str, warm_up: bool) -> None:
        run = embedding(variant, warm_up)
        if variant.endswith("_worker"):
            run = on_worker_thread(worker, run)
        run(PhaseTimer(cuda=False) if warm_up else timers[variant])

    try:
        for variant in VARIANTS:  # oneDNN picks its kernels, and each thread's arena grows, at a first call
            on_thread(variant, warm_up=True)
        for repeat in range(repeats):
            for variant in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:
                on_thread(variant, warm_up=False)
    finally:
        worker.shutdown()
    slices = frames * repeats
    medians = {variant: statistics.median(seconds[variant]) for variant in VARIANTS}
    difference = (features["strips_main"].float() - features["whole_main"].float()).abs().max()
    return {
        "benchmark": "thread_encoder",
        "machine": machine_info("cpu"),
        "cpu_tuning": tuning.as_dict(),
        "precision": models["strips"].precision,
        "compiled": {name: model.encoder.report.compiled for name, model in models.items()},
        "compile_s": compile_s,
        "frames": frames,
        "frame_size": size,
        "repeats": repeats,
        "strip_blocks": strip_blocks,
        "strips_turned_off": turned_off,
        "strips_a_slice": strips,
        "s_per_slice": medians,
        "minor_faults_per_slice": {
            variant: timers[variant].minor_faults["embed"] / slices for variant in VARIANTS
        },
        "worker_speedup_from_strips": medians["whole_worker"] / medians["strips_worker"],
        "main_speedup_from_strips": medians["whole_main"] / medians["strips_main"],
        "max_abs_feature_diff": float(difference),
        "max_abs_feature": float(features["whole_main"].float().abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "auto"])
    parser.add_argument("--compile", default="on", choices=["on", "off"])
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    report = run(args.frames, args.size, args.repeats, args.precision, args.compile)
    _write_json(args.output, report)
    for variant in VARIANTS:
        print(
            f"{variant}: {report['s_per_slice'][variant]:.3f} s a slice, "
            f"{report['minor_faults_per_slice'][variant]:.0f} page faults a slice"
        )
    print(
        f"strips: {report['worker_speedup_from_strips']:.2f}x on the model thread, "
        f"{report['main_speedup_from_strips']:.2f}x on the main thread; features differ by "
        f"{report['max_abs_feature_diff']:.2g} (of {report['max_abs_feature']:.2g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
