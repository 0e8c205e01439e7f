"""Where the time of a SAM 2 propagation goes, frame by frame, and what compiling its modules buys.

One variant per run (a fresh process each, so a compile's caches and memory are its own), one JSON out:

- ``eager`` and ``graphs``: :class:`medsegany.models.sam2_tracker.Sam2Tracker` without and with its
  tracking steps replayed from CUDA graphs (:mod:`medsegany.models.sam2_step_graphs`) and launched one
  ahead (:mod:`medsegany.models.sam2_lookahead`); ``graphs-strict``: the graphs in strict order (what the
  step launched ahead buys); ``graphs-compiled``: the graphs recorded from the step compiled by
  ``torch.compile`` (:mod:`medsegany.models.sam2_step_compile`: what fusing its kernels buys). Each: the
  image features of all frames first (timed per encoder batch size in ``--feature-batches``), then the
  tracking loop forward and backward from the middle frame, each frame's mask brought to the host as the
  session does;
  then the same through :class:`medsegany.session.SegmentationSession` (its bookkeeping on top); then
  ``torch.profiler`` over ``--profile-frames`` tracking steps: kernels launched and GPU kernel time per
  frame against the wall time per frame (a step whose kernels take far less than its wall time is bound
  by launching them, which CUDA graphs remove).
- ``compile-<mode>``: Meta's own fast path (``SAM2VideoPredictorVOS``: its memory encoder, memory
  attention, prompt encoder and mask decoder through ``torch.compile``, outputs cloned so CUDA graphs may
  reuse their buffers) in ``torch.compile`` mode ``<mode>`` (``reduce-overhead``: CUDA graphs;
  ``max-autotune``: Meta's choice, graphs and kernel autotuning; ``max-autotune-no-cudagraphs``), driven by
  the same tracker; compile seconds (the first propagation minus a later one) and the largest difference
  of its mask logits from the eager model with the same weights.

Example (a GPU)::

    python benchmarks/tracker_profile.py --variant eager --device cuda --slices 300 --output eager.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import SAM2_MODELS, object_prompts, phantom_kji

VOS_CLASS = "sam2.sam2_video_predictor.SAM2VideoPredictorVOS"
# the modules Meta's VOS predictor compiles, and whether with dynamic shapes (the number of memories varies)
# MedSegAny's own step graphs: launched ahead, in strict order, and recorded from the compiled step
GRAPH_VARIANTS = ("graphs", "graphs-strict", "graphs-compiled")
COMPILED_MODULES = {
    "memory_encoder": False,
    "memory_attention": True,
    "sam_prompt_encoder": False,
    "sam_mask_decoder": False,
}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(config: str, device: str, overrides: tuple[str, ...], compile_mode: str | None) -> Any:
    """The model with seed-0 random weights; ``compile_mode``: Meta's VOS class compiled in that mode."""
    import torch
    from medsegany.models.sam2_build import build_sam2_model

    extra: tuple[str, ...] = ()
    if compile_mode is not None:
        import sam2.sam2_video_predictor as video_predictor

        def compile_all(self: Any) -> None:
            # Meta's _compile_all_components with the mode chosen here (Meta: "max-autotune")
            for name, dynamic in COMPILED_MODULES.items():
                module = getattr(self, name)
                module.forward = torch.compile(
                    module.forward, mode=compile_mode, fullgraph=True, dynamic=dynamic
                )

        video_predictor.SAM2VideoPredictorVOS._compile_all_components = compile_all
        extra = (f"++model._target_={VOS_CLASS}",)
    torch.manual_seed(0)
    return build_sam2_model(config, None, device=device, overrides=(*overrides, *extra))


def recompile_copy(model: Any, source: Any) -> None:
    """Under bf16 the tracker runs a copy of the model with bf16 weights (sam2_speedups.shared_bf16_copy).
    The copy keeps the source's compiled instance forwards, which run the source's float32 modules: drop
    them and compile the copy's own."""
    if model is source:
        return
    for name in COMPILED_MODULES:
        getattr(model, name).__dict__.pop("forward", None)
    model._compile_all_components()


def time_features(tracker: Any, frames: np.ndarray, batch_size: int, device: str) -> float:
    tracker.set_frames(frames)
    _sync(device)
    start = time.perf_counter()
    tracker.precompute_features(range(len(frames)), batch_size=batch_size)
    _sync(device)
    return time.perf_counter() - start


def track_both_ways(tracker: Any, frames: np.ndarray, box: np.ndarray, key: int) -> tuple[list[float], Any]:
    """Per-frame wall seconds of tracking forward then backward from ``key``; the logits of the last frame."""
    tracker.reset()
    tracker.add_prompts(1, key, box_frame_xyxy=box)
    seconds = []
    logits = {}
    for direction in (+1, -1):
        start = time.perf_counter()
        for result in tracker.propagate(key, direction):
            _ = result.mask_logits_frame > 0  # on the host: what the session thresholds
            logits[result.frame_index] = result.mask_logits_frame
            now = time.perf_counter()
            seconds.append(now - start)
            start = now
    return seconds, logits


def profile_steps(tracker: Any, box: np.ndarray, key: int, frames: int, device: str) -> dict[str, Any]:
    """Kernels and GPU time per tracking step, with torch.profiler, over ``frames`` steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    tracker.reset()
    tracker.add_prompts(1, key, box_frame_xyxy=box)
    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    stop = min(tracker.num_frames - 1, key + frames)
    _sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for result in tracker.propagate(key, +1, end_frame=stop):
            _ = result.mask_logits_frame > 0
        _sync(device)
        wall = time.perf_counter() - start
    steps = max(stop - key, 1)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(e.device_time for e in kernels) if kernels else 0.0
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=35)
    return {
        "steps": steps,
        "wall_ms_per_step": 1000 * wall / steps,
        "gpu_kernels_per_step": len(kernels) / steps,
        "gpu_kernel_ms_per_step": gpu_us / 1000 / steps,
        "table": table,
    }


def run_session(
    model: Any, volume_kji: np.ndarray, prompts: list[Any], device: str, cached: int
) -> tuple[float, dict[str, Any] | None]:
    """Seconds per propagated slice through a fresh session (its features encoded first, not timed), and
    its tracker's step graph stats."""
    from medsegany.models.registry import Sam2VideoModel
    from medsegany.prompts import make_slice_prompts
    from medsegany.session import SegmentationSession
    from medsegany.session_sam2 import Sam2StopRule
    from medsegany.volume import Volume

    video = Sam2VideoModel("profile", model, device, int(model.image_size), None)
    volume = Volume(volume_kji, np.eye(4), name="phantom")
    never = Sam2StopRule(absent_slices=10**9, area_collapse_fraction=0.0)
    session = SegmentationSession(
        volume, video, intensity=(0, 255), max_cached_frames=cached, sam2_stop=never
    )
    object_id = session.add_object()
    session.tracker(2).precompute_features(range(volume_kji.shape[0]), batch_size=16)
    x0, y0, x1, y1 = prompts[0].box_frame_xyxy
    k = prompts[0].frame_index
    session.add_prompts(object_id, make_slice_prompts(volume, box_ijk=(x0, y0, k, x1, y1, k)))
    _sync(device)
    start = time.perf_counter()
    count = 0
    for result in session.propagate():
        count += result.source == "propagated"
    _sync(device)
    return (time.perf_counter() - start) / max(count, 1), session.tracker(2).step_graph_stats


def _compare(expected: dict[int, np.ndarray], got: dict[int, np.ndarray]) -> dict[str, Any]:
    """How far two runs' per-frame mask logits are apart."""
    frames = sorted(expected)
    diffs = [float(np.abs(expected[i] - got[i]).max()) for i in frames]
    agree = [float(((expected[i] > 0) == (got[i] > 0)).mean()) for i in frames]
    return {
        "frames": len(frames),
        "same_frames": sorted(got) == frames,
        "max_abs_logit_diff": max(diffs),
        "min_mask_agreement": min(agree),
        "identical": all(d == 0 for d in diffs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variant",
        default="eager",
        help="eager, graphs, graphs-strict, graphs-compiled or compile-<torch.compile mode>",
    )
    parser.add_argument("--model", default="sam2.1_hiera_t512", choices=list(SAM2_MODELS))
    parser.add_argument("--image-size", type=int, default=0, help="override the input size (smoke tests)")
    parser.add_argument("--size", type=int, default=512, help="slice height and width (px)")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--feature-batches", type=int, nargs="+", default=[4, 16, 32])
    parser.add_argument("--profile-frames", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    from medsegany.models.sam2_build import image_size_overrides
    from medsegany.models.sam2_step_compile import COMPILE_STEP_VARIABLE
    from medsegany.models.sam2_tracker import Sam2Tracker

    config, native = SAM2_MODELS[args.model]
    image_size = args.image_size or native
    overrides = () if image_size == native else image_size_overrides(image_size)
    volume = phantom_kji(args.slices, args.size)
    prompts = object_prompts(volume, 1)
    key, box = prompts[0].frame_index, np.asarray(prompts[0].box_frame_xyxy, np.float32)
    report: dict[str, Any] = {
        "variant": args.variant,
        "model": args.model,
        "image_size": image_size,
        "slices": args.slices,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
    }

    def write() -> None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")

    start = time.perf_counter()
    eager_model = build(config, args.device, overrides, None)
    report["build_s"] = time.perf_counter() - start
    graphs = args.variant in GRAPH_VARIANTS
    ahead = args.variant != "graphs-strict"  # graphs-strict: the graphs without a step launched ahead
    eager = Sam2Tracker(
        eager_model,
        feature_cache_mb=8192,
        step_graphs=graphs,
        lookahead=graphs and ahead,
        compile_step=args.variant == "graphs-compiled",
    )
    if args.variant == "eager" or graphs:
        report["features_s"] = {
            str(b): time_features(eager, volume, b, args.device) for b in args.feature_batches
        }
        runs = [track_both_ways(eager, volume, box, key)[0] for _ in range(args.repeats)]
        report["tracking_ms_per_frame"] = [1000 * statistics.median(r) for r in runs]
        report["tracking_s_total"] = [sum(r) for r in runs]
        report["step_graphs"] = eager.step_graph_stats
        if graphs:  # the graphs must give the eager steps' numbers (compiled: close to them)
            _, graph_logits = track_both_ways(eager, volume, box, key)
            # eager steps, launched ahead alike (masks resized where they are), so only the graphs differ
            reference = Sam2Tracker(eager_model, feature_cache_mb=8192, step_graphs=False, lookahead=ahead)
            reference.set_frames(volume)
            reference.precompute_features(range(args.slices), batch_size=16)
            _, eager_logits = track_both_ways(reference, volume, box, key)
            report["graphs_vs_eager"] = _compare(eager_logits, graph_logits)
            del reference
        write()
        # the session makes its trackers with the defaults: the compiled step's variant sets the variable
        compiled_step = {COMPILE_STEP_VARIABLE: "1" if args.variant == "graphs-compiled" else "0"}
        with mock.patch.dict(os.environ, compiled_step):
            session_s, report["session_step_graphs"] = run_session(
                eager_model, volume, prompts, args.device, 10**6
            )
        report["session_ms_per_slice"] = 1000 * session_s
        write()
        profiled = profile_steps(eager, box, key, args.profile_frames, args.device)
        report["profile"] = {k: v for k, v in profiled.items() if k != "table"}
        args.output.with_suffix(".txt").write_text(profiled["table"] + "\n")
        print(profiled["table"], flush=True)
    elif args.variant.startswith("compile-"):
        mode = args.variant.removeprefix("compile-")
        compiled_model = build(config, args.device, overrides, mode)
        compiled_model.load_state_dict(eager_model.state_dict())
        compiled = Sam2Tracker(compiled_model, feature_cache_mb=8192, step_graphs=False, lookahead=False)
        recompile_copy(compiled.model, compiled_model)
        for tracker in (eager, compiled):
            tracker.set_frames(volume)
            tracker.precompute_features(range(args.slices), batch_size=16)
        first = time.perf_counter()
        track_both_ways(compiled, volume, box, key)
        report["first_run_s"] = time.perf_counter() - first
        write()
        runs = [track_both_ways(compiled, volume, box, key) for _ in range(args.repeats)]
        report["tracking_ms_per_frame"] = [1000 * statistics.median(r[0]) for r in runs]
        report["tracking_s_total"] = [sum(r[0]) for r in runs]
        report["compile_s"] = report["first_run_s"] - min(report["tracking_s_total"])
        _, eager_logits = track_both_ways(eager, volume, box, key)
        compiled_logits = runs[-1][1]
        report.update(_compare(eager_logits, compiled_logits))
        write()
        # the compiled modules' kernels and GPU time a step: what fusing the step would leave a graph
        profiled = profile_steps(compiled, box, key, args.profile_frames, args.device)
        report["profile"] = {k: v for k, v in profiled.items() if k != "table"}
        args.output.with_suffix(".txt").write_text(profiled["table"] + "\n")
    else:
        parser.error(f"unknown variant {args.variant}")
    if args.device.startswith("cuda"):
        report["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
    write()
    print(json.dumps({k: v for k, v in report.items() if k != "profile"}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
