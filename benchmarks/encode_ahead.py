"""What encoding ahead buys the user: the wait after the prompt, with and without idle time before it.

The user spends some seconds finding the slice and dragging the box; the Slicer panel lets the model
encode slices meanwhile (:meth:`medsegany.session.SegmentationSession.encode_ahead`, from the slice in
view outward). For each ``--idle-seconds`` value T (0: nothing ahead, the cold run; ``inf``: until every
slice is encoded) this script, on a fresh session over the same volume and model:

1. encodes ahead from the prompt's slice for T seconds (stopping between encoder calls, as the panel
   does when the user acts: the call in flight ends first, so the idle time used may exceed T by one
   call; both are reported);
2. places the box and times the prompted slice's mask (``prompt_s``);
3. propagates both ways and times the first propagated slice (``first_slice_s``) and the end
   (``propagation_s``).

The masks of every run are compared with the cold run's (``masks_equal``: bitwise). The wait after the
prompt (``after_prompt_s`` = prompt + propagation) is reported as a ratio against the cold run measured
in the same process. Phantom and prompts are those of ``speed.py`` (one object, the first tube); SAM 2
runs with random weights and its stop rule off (every slice tracked), LiteMedSAM with its trained weights
and the default stop rule.

Example (CPU)::

    LD_PRELOAD=libjemalloc.so.2 .venv/bin/python benchmarks/encode_ahead.py --models litemedsam \\
        --slices 50 --idle-seconds 0 5 15 inf --output benchmarks/results/encode_ahead_cpu.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import (
    SAM2_MODELS,
    PeakMemory,
    _prompt_of,
    _release_freed_memory,
    _volume,
    _write_json,
    machine_info,
    object_prompts,
    phantom_kji,
    rss_bytes,
)

MODELS = ("litemedsam", *SAM2_MODELS)


def load(model_name: str, device: str, log) -> tuple[Any, dict[str, Any]]:
    """The model as MedSegAny loads it (LiteMedSAM: its weights, compiled encoder; SAM 2: random weights)."""
    start = time.perf_counter()
    if model_name == "litemedsam":
        from medsegany.models.registry import load_model

        model = load_model("litemedsam", device=device)
        model.warm_up()
    else:
        from medsegany.models.registry import Sam2VideoModel
        from medsegany.models.sam2_build import build_sam2_model

        config, image_size = SAM2_MODELS[model_name]
        predictor = build_sam2_model(config, None, device=device)
        model = Sam2VideoModel(model_name, predictor, device, image_size, None)
    seconds = time.perf_counter() - start
    log(f"{model_name} loaded in {seconds:.1f} s")
    return model, {"load_s": seconds}


def new_session(model: Any, voxels_kji: np.ndarray) -> Any:
    from medsegany.session import SegmentationSession
    from medsegany.session_sam2 import Sam2StopRule

    never_stop = Sam2StopRule(absent_slices=10**9, area_collapse_fraction=0.0)
    return SegmentationSession(
        _volume(voxels_kji),
        model,
        intensity=(0, 255),
        max_cached_frames=voxels_kji.shape[0],
        sam2_stop=never_stop,
    )


def frames_encoded(session: Any) -> int:
    """Frames the session's encoder has run on, along K (the axis the prompts are on)."""
    return session.tracker(2).frames_encoded if session.is_sam2 else session.embeddings(2).encoded_frames


def one_run(model: Any, voxels_kji: np.ndarray, idle_s: float, cuda: bool = False) -> dict[str, Any]:
    """:func:`timed_run` with its peak memory (RSS; on CUDA also the GPU's)."""
    with PeakMemory(cuda) as memory:
        run = timed_run(model, voxels_kji, idle_s)
    return run | {"peak_rss_bytes": memory.peak_rss, "peak_gpu_bytes": memory.peak_gpu}


def timed_run(model: Any, voxels_kji: np.ndarray, idle_s: float) -> dict[str, Any]:
    """Encode ahead for ``idle_s`` seconds, then prompt and propagate; times and the mask."""
    prompt = object_prompts(voxels_kji, 1)[0]
    session = new_session(model, voxels_kji)
    calls: list[float] = []
    encoded = 0
    start = time.perf_counter()
    if idle_s > 0:
        generator = session.encode_ahead(2, prompt.frame_index)
        last = start
        for progress in generator:
            now = time.perf_counter()
            calls.append(now - last)
            last, encoded = now, progress.encoded
            if now - start >= idle_s:
                break
        generator.close()
    idle_used = time.perf_counter() - start
    object_id = session.add_object()
    start = time.perf_counter()
    session.add_prompts(object_id, _prompt_of(session.volume, prompt))
    prompt_s = time.perf_counter() - start
    first_slice_s, slices = None, 0
    start = time.perf_counter()
    for result in session.propagate():
        if first_slice_s is None:
            first_slice_s = time.perf_counter() - start
        slices += result.source == "propagated"
    propagation_s = time.perf_counter() - start
    return {
        "slices_encoded_after_prompt": frames_encoded(session) - encoded,
        "idle_s_asked": None if math.isinf(idle_s) else idle_s,  # null: until every slice was encoded
        "idle_s_used": idle_used,
        "slices_encoded_ahead": encoded,
        "encoder_call_s_median": statistics.median(calls) if calls else None,
        "encoder_call_s_max": max(calls) if calls else None,
        "prompt_s": prompt_s,
        "first_slice_s": first_slice_s,
        "propagation_s": propagation_s,
        "after_prompt_s": prompt_s + propagation_s,
        "slices_propagated": slices,
        "mask": session.mask_kji(object_id).copy(),
    }


def memory_estimate(model: Any, args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The estimator's plan for the case against the largest peak of its runs (every run ends with the
    same features cached: those encoded ahead, or those the propagation encoded)."""
    from medsegany.memory_estimate import plan_memory

    cuda = str(args.device).startswith("cuda")
    estimate = plan_memory(
        model,
        (args.size, args.size),
        args.slices,
        1,
        device=args.device,
        batch_size=getattr(model, "preferred_batch_size", 1),
        runtime_bytes=None if cuda else args.baseline_rss,
        volume_bytes=args.slices * args.size * args.size,
    )
    measured = max(run["peak_gpu_bytes" if cuda else "peak_rss_bytes"] or 0 for run in runs)
    return estimate.as_dict() | {
        "measured_peak_bytes": measured,
        "predicted_over_measured": estimate.device_bytes / measured if measured else None,
    }


def run_model(args: argparse.Namespace, model_name: str, log) -> dict[str, Any]:
    model, info = load(model_name, args.device, log)
    voxels = phantom_kji(args.slices, args.size)
    cuda = str(args.device).startswith("cuda")
    one_run(model, phantom_kji(3, args.size), math.inf, cuda)  # warm-up: first calls, allocator pools
    runs = []
    for idle in args.idle_seconds:
        run = one_run(model, voxels, idle, cuda)
        log(
            f"  idle {idle:g} s (used {run['idle_s_used']:.1f}, {run['slices_encoded_ahead']} slices ahead): "
            f"prompt {run['prompt_s']:.2f} s, propagation {run['propagation_s']:.1f} s "
            f"({run['slices_propagated']} slices)"
        )
        runs.append(run)
    masks = [run.pop("mask") for run in runs]
    if runs and runs[0]["idle_s_asked"] == 0:  # the cold run: every other run is compared with it
        cold = runs[0]
        for run, mask in zip(runs, masks):
            run["masks_equal_cold"] = bool(np.array_equal(mask, masks[0]))
            run["after_prompt_ratio_cold_over_this"] = cold["after_prompt_s"] / run["after_prompt_s"]
            run["prompt_ratio_cold_over_this"] = cold["prompt_s"] / run["prompt_s"]
    return {
        "model": model_name,
        "slices": args.slices,
        "size": args.size,
        "precision": getattr(model, "precision", None),
        **info,
        "runs": runs,
        "memory_estimate": memory_estimate(model, args, runs),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["litemedsam"], choices=MODELS)
    parser.add_argument("--slices", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--idle-seconds",
        nargs="+",
        type=float,
        default=[0.0, 5.0, 15.0, math.inf],
        help="idle time before the prompt; 0 (the cold run) comes first",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/encode_ahead.json"))
    args = parser.parse_args(argv)
    args.idle_seconds = sorted(set(args.idle_seconds))  # the cold run (0) first: the others compare to it
    args.baseline_rss = None  # set by main() before any model is loaded
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from medsegany.cpu_tuning import tune_cpu_once

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    tune_cpu_once()
    _release_freed_memory()
    args.baseline_rss = rss_bytes()  # the runtime before any model: the estimator's "runtime" term
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(args.device),
        "threads": torch.get_num_threads(),
        "cases": [],
    }
    for model_name in args.models:
        report["cases"].append(run_model(args, model_name, log))
        _write_json(args.output, report)
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
