"""Speed and memory of MedSegAny's propagation against Meta's reference predictor, in one process.

For each case (model x slices x objects) on a synthetic 512 x 512 x N phantom (bright tubes in noise;
random weights for SAM 2 models, which cost the same time as trained ones):

- ``reference_a``: Meta's ``SAM2VideoPredictor`` on a JPEG folder of the slices (see speed_references.py);
- ``reference_b``: the same predictor fed in-memory frames;
- ``medsegany``: :class:`medsegany.session.SegmentationSession` with the same model object (same
  weights), image features of all slices computed first in batches (the plan of
  :func:`medsegany.memory_estimate.plan_memory`), then the session's propagation, both directions.
  The session's stop rule is off so that every path tracks every slice.
- LiteMedSAM: ``plain`` (the eager float32 model, each slice encoded alone when reached, then decoded:
  the per-slice loop) against ``medsegany`` (the session with the model as MedSegAny loads it: compiled
  encoder, bf16 where the CPU has it, embeddings cached and encoded ahead); same prompts and stop rule,
  so the masks should agree (``mask_agreement`` reports how closely). The compile time is reported apart
  (``compile_s``): it is paid once per process, in the warm-up.
- variants of MedSegAny's SAM 2 path (see ``--paths``: PyTorch's fused attention, the encoder on its own
  CUDA stream, no features phase, the tracking step compiled, the step and the encoder compiled): the
  same session made in the variant's environment; their masks against ``medsegany``'s are in
  ``variant_mask_agreement``, their compile seconds in ``step_graphs`` and ``encoder_compile``.

``--precision`` and ``--compile`` set MedSegAny's path (default auto, as the CLI); the references always
run as Meta ships them (float32 on CPU, bf16 autocast on CUDA). On a CPU MedSegAny's path keeps the memory
it frees until its run ends (:mod:`medsegany.allocator`), as the CLI and Slicer do; the references and the
plain loop run with the allocator's defaults (``--no-kept-memory``: MedSegAny's path too).

Paths run alternately (the order rotates every repeat) after one warm-up run of each on a few slices;
figures are medians over the repeats. Each path's peak RSS is measured alone (Linux: ``VmHWM`` reset via
``/proc/self/clear_refs``), peak GPU memory with ``torch.cuda.max_memory_allocated``; the memory
estimator's prediction for MedSegAny's path is reported next to the measured peak.

Example (CPU, a small case)::

    LD_PRELOAD=libjemalloc.so.2 .venv/bin/python benchmarks/speed.py --models sam2.1_hiera_t512 \\
        --slices 20 --objects 1 --repeats 1 --output benchmarks/results/speed_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_references import Correction, ObjectPrompt, run_meta_reference

# name -> (sam2 config, image size); LiteMedSAM is the bundled 2D model
SAM2_MODELS = {
    "sam2.1_hiera_t512": ("sam2.1_hiera_t512", 512),
    "sam2.1_hiera_t": ("sam2.1_hiera_t", 1024),
    "sam2.1_hiera_l": ("sam2.1_hiera_l", 1024),
}
GPU_ONLY = {"sam2.1_hiera_l"}
MODELS = (*SAM2_MODELS, "litemedsam")
SAM2_PATHS = ("reference_a", "reference_b", "medsegany")
SLICE_PATHS = ("plain", "medsegany")
# "<path>_kept": that reference run inside medsegany.allocator.retained_freed_memory, as MedSegAny's path
# runs (the allocator setting alone, measured apart from everything else MedSegAny does)
KEPT_SUFFIX = "_kept"
KEPT_PATHS = tuple(f"{path}{KEPT_SUFFIX}" for path in ("reference_a", "reference_b", "plain"))
# MedSegAny's SAM 2 path with PyTorch's fused attention kernel instead of the CPU attention by matrix
# products (medsegany.models.sam2_cpu_attention: bf16, and float32's memory cross-attention with its values
# projected last): that change alone, in the same run
FUSED_ATTENTION_PATH = "medsegany_fused_attention"
# MedSegAny's SAM 2 path with the image encoder on a CUDA stream of its own (sam2_encode_stream)
ENCODE_STREAM_PATH = "medsegany_encode_stream"
# the same, without the features phase: the session encodes each run's frames a batch ahead of its steps
# (as after a prompt on a volume nothing was encoded for), so the encoder's batches overlap the steps
INTERLEAVED_PATH = "medsegany_interleaved"
# MedSegAny's SAM 2 path with its tracking step through torch.compile (sam2_step_compile)
COMPILED_STEP_PATH = "medsegany_compiled_step"
# ... with the image encoder through torch.compile as well (sam2_compiled_encoder)
COMPILED_PATH = "medsegany_compiled"
MEDSEGANY_VARIANTS = (
    FUSED_ATTENTION_PATH,
    ENCODE_STREAM_PATH,
    INTERLEAVED_PATH,
    COMPILED_STEP_PATH,
    COMPILED_PATH,
)
# Tube centres (x, y) and radii in a 512 x 512 slice, scaled to the slice size.
TUBES = ((0.5, 0.5, 0.09), (0.27, 0.3, 0.06), (0.72, 0.66, 0.07))


# ---------------------------------------------------------------------- measuring
def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    value = _status_bytes("VmRSS")
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _release_freed_memory() -> None:
    """Give freed heap back to the OS (glibc's malloc_trim) so one path's garbage is not the next's peak."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError, AttributeError):
        # jemalloc (LD_PRELOAD) keeps freed pages ~10 s; purge every arena (4096 = MALLCTL_ARENAS_ALL)
        ctypes.CDLL(None).mallctl(b"arena.4096.purge", None, None, None, ctypes.c_size_t(0))


class PeakMemory:
    """Peak RSS (and peak CUDA memory) of the code inside ``with``."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.peak_rss = 0
        self.start_rss = 0
        self.peak_gpu: int | None = None
        self.isolated = False

    def __enter__(self) -> PeakMemory:
        _release_freed_memory()
        self.start_rss = rss_bytes()
        self.isolated = _reset_peak_rss()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc: object) -> None:
        peak = _status_bytes("VmHWM") if self.isolated else None
        self.peak_rss = (
            peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak_gpu = int(torch.cuda.max_memory_allocated())


class PhaseTimer:
    """``with timer("name"):`` adds the wall time of the block to ``seconds[name]`` (CUDA synchronised),
    and the process's minor page faults in it to ``minor_faults[name]`` (memory the allocator gave back to
    the kernel and asked for again: each fault maps in one page, which the kernel zeroes first)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.seconds: dict[str, float] = {}
        self.minor_faults: dict[str, int] = {}

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        start, faults = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            self.minor_faults[name] = self.minor_faults.get(name, 0) + faults


# ---------------------------------------------------------------------- inputs
def phantom_kji(num_slices: int, size: int = 512, seed: int = 0) -> np.ndarray:
    """uint8 (N, size, size): bright tubes whose radius varies slowly along K, in noisy grey."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size].astype(np.float32)
    volume = np.empty((num_slices, size, size), np.uint8)
    for k in range(num_slices):
        frame = 60.0 + 12.0 * rng.standard_normal((size, size), dtype=np.float32)
        for n, (cx, cy, radius) in enumerate(TUBES):
            r = radius * size * (1.0 + 0.25 * np.sin(2 * np.pi * k / max(num_slices, 8) + n))
            inside = (cols - cx * size) ** 2 + (rows - cy * size) ** 2 < r**2
            frame[inside] += 120.0
        volume[k] = np.clip(frame, 0, 255).astype(np.uint8)
    return volume


def object_prompts(volume_kji: np.ndarray, objects: int) -> list[ObjectPrompt]:
    """A box 3 px around each tube on the middle slice (frame x = I, y = J on K slices)."""
    key = volume_kji.shape[0] // 2
    size = volume_kji.shape[1]
    prompts = []
    for n, (cx, cy, radius) in enumerate(TUBES[:objects]):
        r = radius * size * (1.0 + 0.25 * np.sin(2 * np.pi * key / max(volume_kji.shape[0], 8) + n)) + 3
        box = (cx * size - r, cy * size - r, cx * size + r, cy * size + r)
        prompts.append(ObjectPrompt(n + 1, key, tuple(float(np.clip(v, 0, size - 1)) for v in box)))
    return prompts


def correction_for(volume_kji: np.ndarray, prompts: list[ObjectPrompt], slices_after: int) -> Correction:
    """A positive click at the first tube's centre and a negative one halfway to its box corner, on the slice
    ``slices_after`` slices before the volume's end (after the key slice)."""
    num = volume_kji.shape[0]
    key = prompts[0].frame_index
    frame_index = min(num - 1, max(key + 1, num - 1 - slices_after))
    x0, y0, x1, y1 = prompts[0].box_frame_xyxy
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    outside = ((x0 + centre[0]) / 2, (y0 + centre[1]) / 2)
    return Correction(prompts[0].object_id, frame_index, (centre, outside), (1, 0))


def _volume(voxels_kji: np.ndarray) -> Any:
    from medsegany.volume import Volume

    return Volume(voxels_kji, np.eye(4), name="phantom")


def _prompt_of(volume: Any, prompt: ObjectPrompt) -> Any:
    from medsegany.prompts import make_slice_prompts

    x0, y0, x1, y1 = prompt.box_frame_xyxy
    k = prompt.frame_index
    return make_slice_prompts(volume, box_ijk=(x0, y0, k, x1, y1, k))


# ---------------------------------------------------------------------- MedSegAny's paths
def run_medsegany_sam2(
    sam2_model: Any,
    voxels_kji: np.ndarray,
    prompts: list[ObjectPrompt],
    timer: PhaseTimer,
    plan: Any,
    correction: Correction | None,
    keep_masks: bool = False,
    encode_first: bool = True,
) -> dict[str, Any]:
    """The session path: features of all slices in batches first (when the plan caches them all).
    ``keep_masks``: return the objects' masks (to compare variants; their copy counts in the peak RSS).
    ``encode_first`` False: no features phase; the session encodes a batch ahead as its runs go."""
    from medsegany.encode_ahead import outward_order
    from medsegany.prompts import make_slice_prompts
    from medsegany.session import SegmentationSession
    from medsegany.session_sam2 import Sam2StopRule

    never_stop = Sam2StopRule(absent_slices=10**9, area_collapse_fraction=0.0)
    num = voxels_kji.shape[0]
    with timer("load"):
        volume = _volume(voxels_kji)
        session = SegmentationSession(
            volume,
            sam2_model,
            intensity=(0, 255),
            **plan.session_options,
            sam2_stop=never_stop,
        )
        object_ids = [session.add_object() for _ in prompts]
        tracker = session.tracker(2)
    with timer("features"):
        if encode_first and plan.cached_frames >= num:
            # outward from the prompts' slice, the order the propagation needs them (with the encoder on
            # its own stream the first steps wait for the first batch only)
            order = outward_order(prompts[0].frame_index, num)
            tracker.precompute_features(order, batch_size=plan.batch_size)
    with timer("prompt"):
        for object_id, prompt in zip(object_ids, prompts):
            session.add_prompts(object_id, _prompt_of(volume, prompt))
    visited = 0
    with timer("propagation"):
        for result in session.propagate():
            visited += result.source == "propagated"
    if correction is not None:
        click = make_slice_prompts(
            volume,
            points_ijk=[(x, y, correction.frame_index) for x, y in correction.points_frame_xy],
            point_labels=list(correction.point_labels),
            axis=2,
        )
        with timer("correction_mask"):
            session.add_prompts(object_ids[prompts.index(_first(prompts, correction))], click)
        with timer("correction_propagation"):
            for _ in session.propagate():
                pass
    # + 1: the key slice (its mask came with the prompt), counted like Meta's passes count it
    return {
        "slices": visited // len(prompts) + 1,
        "masks": np.stack([session.mask_kji(i) for i in object_ids]) if keep_masks else None,
        "frames": num,
        "frames_encoded": tracker.frames_encoded,
        "step_graphs": tracker.step_graph_stats,
        "matmul_attention": tracker.matmul_attention,
        "encoder_stream_batches": tracker.encoder_stream_batches,
        "encoder_compile": tracker.encoder_compile_stats,
    }


def _variant_environment(path: str) -> dict[str, str]:
    """The environment a variant's sessions make their trackers in (the trackers read these defaults):
    PyTorch's fused attention instead of the CPU's attention by matrix products, the encoder on a CUDA
    stream of its own (nothing changes on a CPU), the tracking step compiled, or it and the encoder."""
    from medsegany.models.sam2_compiled_encoder import COMPILE_ENCODER_VARIABLE
    from medsegany.models.sam2_encode_stream import ENCODE_STREAM_VARIABLE
    from medsegany.models.sam2_step_compile import COMPILE_STEP_VARIABLE
    from medsegany.models.sam2_tracker import MATMUL_ATTENTION_VARIABLE

    return {
        FUSED_ATTENTION_PATH: {MATMUL_ATTENTION_VARIABLE: "0"},
        ENCODE_STREAM_PATH: {ENCODE_STREAM_VARIABLE: "1"},
        INTERLEAVED_PATH: {ENCODE_STREAM_VARIABLE: "1"},
        COMPILED_STEP_PATH: {COMPILE_STEP_VARIABLE: "1"},
        COMPILED_PATH: {COMPILE_STEP_VARIABLE: "1", COMPILE_ENCODER_VARIABLE: "1"},
    }[path]


def _as_variant(path: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run`` inside the variant's environment (:func:`_variant_environment`)."""
    from unittest import mock

    with mock.patch.dict(os.environ, _variant_environment(path)):
        return run()


def on_worker_thread(
    worker: Any, run: Callable[[PhaseTimer], dict[str, Any]]
) -> Callable[[PhaseTimer], dict[str, Any]]:
    """``run`` as the Slicer module runs its sessions: a job on its one persistent model thread
    (:class:`medsegany.slicer_worker.ModelWorker`), whose allocations land in a glibc arena of that
    thread's own, not in the main heap."""

    def threaded(timer: PhaseTimer) -> dict[str, Any]:
        def job(context: Any) -> list[dict[str, Any]]:
            return [run(timer) | {"thread": threading.current_thread().name}]

        (result,) = worker.run_sync(job, label="benchmark")
        return result

    return threaded


def _first(prompts: list[ObjectPrompt], correction: Correction) -> ObjectPrompt:
    return next(p for p in prompts if p.object_id == correction.object_id)


def run_litemedsam_session(
    model: Any, voxels_kji: np.ndarray, prompts: list[ObjectPrompt], timer: PhaseTimer, plan: Any
) -> dict[str, Any]:
    from medsegany.session import SegmentationSession

    with timer("load"):
        volume = _volume(voxels_kji)
        session = SegmentationSession(
            volume,
            model,
            intensity=(0, 255),
            **plan.session_options,
        )
        object_ids = [session.add_object() for _ in prompts]
    with timer("prompt"):
        for object_id, prompt in zip(object_ids, prompts):
            session.add_prompts(object_id, _prompt_of(volume, prompt))
    visited = 0
    with timer("propagation"):
        for result in session.propagate():
            visited += result.source == "propagated"
    masks = np.stack([session.mask_kji(object_id) for object_id in object_ids])
    return {"slices": visited / len(prompts) + 1, "frames": voxels_kji.shape[0], "masks": masks}


def run_litemedsam_plain(
    model: Any, voxels_kji: np.ndarray, prompts: list[ObjectPrompt], timer: PhaseTimer
) -> dict[str, Any]:
    """The plain per-slice loop: encode each slice alone when it is reached, decode, next box; same rule."""
    from medsegany.propagation import ObjectAppearance, PropagationSettings, propagate_slicewise

    settings = PropagationSettings()
    num = voxels_kji.shape[0]
    masks = np.zeros((len(prompts), *voxels_kji.shape), bool)
    visited = 0

    def predict(index: int, box_frame_xyxy: np.ndarray) -> Any:
        (embedding,) = model.embed_frames([voxels_kji[index]])
        return model.predict(embedding, box_frame_xyxy=box_frame_xyxy)

    with timer("prompt"):
        key_masks = [predict(p.frame_index, np.asarray(p.box_frame_xyxy)).mask_frame for p in prompts]
    with timer("propagation"):
        for n, (prompt, key_mask) in enumerate(zip(prompts, key_masks)):
            key = prompt.frame_index
            masks[n, key] = key_mask
            appearance = ObjectAppearance.from_mask(voxels_kji[key], key_mask)
            for step, last in ((+1, num - 1), (-1, 0)):
                for outcome in propagate_slicewise(
                    predict, lambda i: voxels_kji[i], key, key_mask, step, last, appearance, settings
                ):
                    if outcome.stop_reason is not None:
                        break
                    masks[n, outcome.slice_index] = outcome.mask_frame
                    visited += 1
    return {"slices": visited / len(prompts) + 1, "frames": num, "masks": masks}


# ---------------------------------------------------------------------- one case
def _median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({name for run in runs for name in run})
    return {name: statistics.median(run.get(name, 0.0) for run in runs) for name in names}


def _summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    phases = _median_phases([run["phases_s"] for run in runs])
    main = ("frames", "load", "features", "prompt", "propagation")
    end_to_end = statistics.median(sum(run["phases_s"].get(p, 0.0) for p in main) for run in runs)
    slices = runs[-1]["slices"]
    summary = {
        "phases_s": phases,
        "phases_minor_faults": _median_phases([run["phases_minor_faults"] for run in runs]),
        "end_to_end_s": end_to_end,
        "slices_propagated_per_object": slices,
        "per_slice_s": end_to_end / max(slices, 1),
        "slices_per_s": slices / end_to_end if end_to_end > 0 else None,
        "peak_rss_bytes": max(run["peak_rss_bytes"] for run in runs),
        "peak_rss_isolated": all(run["peak_rss_isolated"] for run in runs),
        "repeats": runs,
    }
    if runs[-1].get("peak_gpu_bytes") is not None:
        summary["peak_gpu_bytes"] = max(run["peak_gpu_bytes"] for run in runs)
    if "correction_mask" in phases:
        summary["correction"] = {
            "until_mask_s": phases["correction_mask"],
            "until_repropagated_s": phases["correction_mask"] + phases.get("correction_propagation", 0.0),
        }
    kept = ("frames_encoded", "step_graphs", "matmul_attention", "encoder_stream_batches", "encoder_compile")
    for key in kept:
        if key in runs[-1]:
            summary[key] = runs[-1][key]
    return summary


def _measure(run: Callable[[PhaseTimer], dict[str, Any]], cuda: bool) -> dict[str, Any]:
    timer = PhaseTimer(cuda)
    with PeakMemory(cuda) as memory:
        result = run(timer)
    result = {key: value for key, value in result.items() if key != "masks"} | {"_masks": result.get("masks")}
    result.update(
        phases_s=timer.seconds,
        phases_minor_faults=timer.minor_faults,
        peak_rss_bytes=memory.peak_rss,
        peak_rss_isolated=memory.isolated,
        start_rss_bytes=memory.start_rss,
        peak_gpu_bytes=memory.peak_gpu,
    )
    return result


def _precision_of(model: Any, device: str) -> str:
    from medsegany.models.compute import resolve_precision

    return resolve_precision(device, getattr(model, "precision", "auto"))


def _compile_seconds(model: Any) -> float | None:
    """Seconds LiteMedSAM's encoder took to compile (in the warm-up), None when it ran eagerly."""
    encoder = getattr(model, "encoder", None)
    report = getattr(encoder, "report", None)
    return None if report is None or not report.compiled else report.seconds


def run_case(args: argparse.Namespace, model_name: str, slices: int, objects: int, log) -> dict[str, Any]:
    import torch
    from medsegany.memory_estimate import plan_memory

    cuda = str(args.device).startswith("cuda")
    voxels = phantom_kji(slices, args.size)
    prompts = object_prompts(voxels, objects)
    warm_voxels = phantom_kji(args.warmup_slices, args.size, seed=1)
    warm_prompts = object_prompts(warm_voxels, objects)
    correction = correction_for(voxels, prompts, args.correction_slices) if args.correction_slices else None

    start = time.perf_counter()
    torch.manual_seed(0)
    plain_model = None
    if model_name == "litemedsam":
        from medsegany.models.litemedsam import LiteMedSamModel

        model = LiteMedSamModel(device=args.device, precision=args.precision, compile=args.compile)
        plain_model = LiteMedSamModel(
            device=args.device, precision="float32", compile="off", eager_speedups=False
        )
        image_size = model.image_size
    else:
        from medsegany.models.registry import Sam2VideoModel
        from medsegany.models.sam2_build import build_sam2_model, image_size_overrides

        config, image_size = SAM2_MODELS[model_name]
        overrides: tuple[str, ...] = ()
        if args.sam2_image_size:  # smoke tests: a smaller input, the same architecture
            image_size = args.sam2_image_size
            overrides = image_size_overrides(image_size)
        predictor = build_sam2_model(config, None, device=args.device, overrides=overrides)  # random weights
        model = Sam2VideoModel(model_name, predictor, args.device, image_size, None, precision=args.precision)
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - start

    batch_size = args.batch_size or model.preferred_batch_size  # what the CLI and Slicer use
    plan = plan_memory(
        model,
        voxels.shape[1:],
        slices,
        objects,
        device=args.device,
        batch_size=batch_size,
        runtime_bytes=0,
        volume_bytes=voxels.nbytes,
    )

    def path_runner(path: str, vox: np.ndarray, prm: list[ObjectPrompt], corr: Correction | None):
        run = path_run(path, vox, prm, corr)
        if args.worker is not None and (path == "medsegany" or path in MEDSEGANY_VARIANTS):
            return on_worker_thread(args.worker, run)
        return run

    def path_run(path: str, vox: np.ndarray, prm: list[ObjectPrompt], corr: Correction | None):
        if path.endswith(KEPT_SUFFIX):
            from medsegany.allocator import retained_freed_memory

            run = path_run(path.removesuffix(KEPT_SUFFIX), vox, prm, corr)

            def run_kept(timer: PhaseTimer) -> dict[str, Any]:
                with retained_freed_memory():
                    return run(timer)

            return run_kept
        if model_name == "litemedsam":
            if path == "plain":
                return lambda timer: run_litemedsam_plain(plain_model, vox, prm, timer)
            return lambda timer: run_litemedsam_session(model, vox, prm, timer, plan.plan)
        compared = any(p in MEDSEGANY_VARIANTS for p in args.paths)  # masks kept only to compare
        if path == "medsegany":
            return lambda timer: run_medsegany_sam2(model, vox, prm, timer, plan.plan, corr, compared)
        if path in MEDSEGANY_VARIANTS:
            first = path != INTERLEAVED_PATH
            return lambda timer: _as_variant(
                path,
                lambda: run_medsegany_sam2(
                    model, vox, prm, timer, plan.plan, corr, keep_masks=True, encode_first=first
                )
            )
        source = "jpeg" if path == "reference_a" else "memory"
        return lambda timer: run_meta_reference(model.model, vox, prm, timer, source, corr, args.workdir)

    known = SLICE_PATHS if model_name == "litemedsam" else (*SAM2_PATHS, *MEDSEGANY_VARIANTS)
    paths = [p for p in args.paths if p.removesuffix(KEPT_SUFFIX) in known and p in (*known, *KEPT_PATHS)]
    for path in paths:
        log(f"  warm-up {path} ({args.warmup_slices} slices)")
        _measure(path_runner(path, warm_voxels, warm_prompts, None), cuda)
    runs: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
    for repeat in range(args.repeats):
        order = paths[repeat % len(paths) :] + paths[: repeat % len(paths)]
        for path in order:
            measured = _measure(path_runner(path, voxels, prompts, correction), cuda)
            log(f"  repeat {repeat + 1} {path}: {json.dumps(measured['phases_s'])}")
            runs[path].append(measured)
    masks = {path: runs[path][-1].pop("_masks") for path in paths}
    for path in paths:
        for run in runs[path]:
            run.pop("_masks", None)
    summaries = {path: _summarise(path, runs[path]) for path in paths}

    baseline_rss = args.baseline_rss
    estimate = plan_memory(
        model,
        voxels.shape[1:],
        slices,
        objects,
        device=args.device,
        batch_size=batch_size,
        runtime_bytes=baseline_rss,
        volume_bytes=voxels.nbytes,
    )
    ours = summaries.get("medsegany")
    memory = estimate.as_dict()
    if ours is not None:
        measured_peak = ours.get("peak_gpu_bytes") if cuda else ours["peak_rss_bytes"]
        predicted = estimate.device_bytes
        memory.update(
            measured_peak_bytes=measured_peak,
            predicted_peak_bytes=predicted,
            predicted_over_measured=predicted / measured_peak if measured_peak else None,
            runtime_measured_at_start_bytes=baseline_rss,
        )
    ratios = {}
    if ours is not None:
        for path, summary in summaries.items():
            if path == "medsegany":
                continue
            ratios[f"{path}_over_medsegany_end_to_end"] = summary["end_to_end_s"] / ours["end_to_end_s"]
            ratios[f"{path}_over_medsegany_per_slice"] = summary["per_slice_s"] / ours["per_slice_s"]
            if "correction" in summary and "correction" in ours:
                ratios[f"{path}_over_medsegany_correction"] = (
                    summary["correction"]["until_repropagated_s"] / ours["correction"]["until_repropagated_s"]
                )
    case = {
        "model": model_name,
        "image_size": image_size,
        "input_size": [int(n) for n in voxels.shape[1:]],
        "slices": slices,
        "objects": objects,
        "repeats": args.repeats,
        "warmup_slices": args.warmup_slices,
        "correction_frame": None if correction is None else correction.frame_index,
        "correction_repropagated_slices": None if correction is None else slices - correction.frame_index,
        "model_load_s": load_s,
        "precision": _precision_of(model, args.device),
        "compile_s": _compile_seconds(model),
        "paths": summaries,
        "ratios": ratios,
        "memory_estimate": memory,
    }
    if model_name == "litemedsam" and {"plain", "medsegany"} <= set(masks):
        case["mask_agreement"] = _agreement(masks["plain"], masks["medsegany"])
    variants = [
        p for p in MEDSEGANY_VARIANTS if masks.get(p) is not None and masks.get("medsegany") is not None
    ]
    if variants:  # the same path with one option changed: how far its masks are from the default's
        case["variant_mask_agreement"] = {p: _agreement(masks["medsegany"], masks[p]) for p in variants}
    _release_freed_memory()
    return case


def _agreement(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    union = int((a | b).sum())
    return {
        "voxels_equal_fraction": float((a == b).mean()),
        "dice": 1.0 if union == 0 else float(2 * (a & b).sum() / (a.sum() + b.sum())),
        "identical": bool(np.array_equal(a, b)),
    }


# ---------------------------------------------------------------------- machine and main
def machine_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.partition(":")[2].strip()
                break
    with contextlib.suppress(OSError, ValueError):
        info["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(ImportError, AttributeError):
        from importlib.metadata import version

        info["sam2"] = version("rf-sam-2")
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sam2.1_hiera_t512"], choices=MODELS)
    parser.add_argument("--slices", nargs="+", type=int, default=[100])
    parser.add_argument("--objects", nargs="+", type=int, default=[1], choices=[1, 2, 3])
    parser.add_argument("--size", type=int, default=512, help="slice height and width (px)")
    parser.add_argument(
        "--paths",
        nargs="+",
        default=[*SAM2_PATHS, "plain"],
        choices=[*SAM2_PATHS, "plain", *KEPT_PATHS, *MEDSEGANY_VARIANTS],
        help="paths to run (the _kept ones: that reference with MedSegAny's allocator setting; "
        f"{FUSED_ATTENTION_PATH}: MedSegAny's SAM 2 path with PyTorch's fused attention on a CPU; "
        f"{ENCODE_STREAM_PATH}: with the image encoder on a CUDA stream of its own; "
        f"{COMPILED_STEP_PATH}: with the tracking step through torch.compile; "
        f"{COMPILED_PATH}: with the step and the image encoder through torch.compile)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-slices", type=int, default=3)
    parser.add_argument(
        "--correction-slices",
        type=int,
        default=50,
        help="correction this many slices before the end (0: none)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="encoder batch of MedSegAny's path (0: the model's preferred_batch_size, 1 on a CPU)",
    )
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--sam2-image-size", type=int, default=0, help="override the SAM 2 input size (smoke tests only)"
    )
    parser.add_argument("--no-cpu-tuning", action="store_true", help="leave torch's CPU settings alone")
    parser.add_argument(
        "--no-kept-memory",
        action="store_true",
        help="MedSegAny's path returns freed memory at once (MEDSEGANY_KEEP_FREED_MEMORY=0)",
    )
    parser.add_argument(
        "--worker-thread",
        action="store_true",
        help="MedSegAny's paths run on the Slicer module's model thread, not on the main thread",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where reference A writes its JPEGs")
    parser.add_argument(
        "--estimate-only", action="store_true", help="write the memory estimates of the cases, run nothing"
    )
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    args.worker = None  # the model thread of --worker-thread: made by main() before any run
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # Meta's progress bars, one per pass
    import sam2  # noqa: F401  (imported before the baseline so that it counts as runtime)
    import torch

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.no_kept_memory:
        os.environ["MEDSEGANY_KEEP_FREED_MEMORY"] = "0"
    tuning = None
    if not args.no_cpu_tuning:
        from medsegany.cpu_tuning import tune_cpu

        tuning = tune_cpu()
        log(tuning.message)
    _release_freed_memory()
    args.baseline_rss = rss_bytes()
    cuda = str(args.device).startswith("cuda") and torch.cuda.is_available()
    if str(args.device).startswith("cuda") and not cuda and not args.estimate_only:
        log(f"--device {args.device} was asked for but no CUDA GPU is available; use --device cpu")
        return 2
    if args.worker_thread:
        from medsegany.slicer_worker import ModelWorker

        args.worker = ModelWorker()  # one thread for every run, as in Slicer
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(args.device),
        "device": torch.cuda.get_device_name(torch.device(args.device)) if cuda else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_tuning": None if tuning is None else tuning.as_dict(),
        "kept_memory": _kept_memory_info(),
        "baseline_rss_bytes": args.baseline_rss,
        "medsegany_thread": "worker" if args.worker_thread else "main",
        "cases": [],
        "skipped": [],
    }
    if args.estimate_only:
        report["estimates"] = estimates_only(args)
        _write_json(args.output, report)
        log(f"wrote {args.output}")
        return 0
    for model_name in args.models:
        if model_name in GPU_ONLY and not cuda:
            report["skipped"].append({"model": model_name, "reason": "GPU only (too slow on CPU)"})
            continue
        for slices in args.slices:
            for objects in args.objects:
                log(f"{model_name}: {slices} slices, {objects} object(s)")
                report["cases"].append(run_case(args, model_name, slices, objects, log))
                _write_json(args.output, report)
    if args.worker is not None:
        args.worker.shutdown()
    report["peak_rss_process_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _write_json(args.output, report)
    log(f"wrote {args.output}")
    return 0


def _kept_memory_info() -> dict[str, Any]:
    """Which allocator MedSegAny's path keeps freed memory in (medsegany.allocator); the references and
    the plain loop run with the allocator's defaults, as their users run them."""
    from medsegany.allocator import process_allocator

    allocator = process_allocator()
    return {"medsegany": None if allocator is None else allocator.name, "references": "allocator defaults"}


def estimates_only(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The estimator's plan for every case, from the model profiles alone (no model is built)."""
    from medsegany.memory_estimate import plan_memory
    from medsegany.models import litemedsam, sam2_tracker
    from medsegany.models.compute import device_type

    estimates = []
    for model_name in args.models:
        module = litemedsam if model_name == "litemedsam" else sam2_tracker
        batch = args.batch_size or module.preferred_encoder_batch(device_type(args.device))
        for slices in args.slices:
            for objects in args.objects:
                estimate = plan_memory(
                    model_name,
                    (args.size, args.size),
                    slices,
                    objects,
                    device=args.device,
                    batch_size=batch,
                    runtime_bytes=args.baseline_rss if not str(args.device).startswith("cuda") else None,
                    volume_bytes=slices * args.size * args.size,
                )
                estimates.append(estimate.as_dict())
                print(estimate.message, flush=True)
    return estimates


def _write_json(path: Path, report: dict[str, Any]) -> None:
    """Write atomically (a temp file in the same folder, then os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    os.replace(temp, path)


if __name__ == "__main__":
    sys.exit(main())
