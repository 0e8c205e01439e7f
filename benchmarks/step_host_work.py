"""What the host does per SAM 2 tracking step outside the step's CUDA graph, before and after 2026-11-27.

With a tracking step replayed from a CUDA graph (``medsegany.models.sam2_step_graphs``), the host still
prepares the step's memory before the replay and finishes its mask after it. Each is measured both ways
on the same step:

- memory: ``meta_assembly``, Meta's ``_prepare_memory_conditioned_features`` (its memory attention call
  intercepted), what the graph path ran until 2026-11-27, against ``medsegany_gather``:
  ``select_memory`` (Meta's rules on frame numbers) and ``gather_memory`` into a graph's input buffers;
  ``memory_in_graph``: ``memory_from_gathered``, the rest of Meta's assembly, which the graph replays;
- finishing: ``host_finish``, the low-resolution logits' holes filled on the host (SciPy) and the mask
  resized to the frame there, what the step launched ahead did (``sam2_lookahead``), against
  ``device_finish_host_share``: the mask resized on the device (one launch) and the frame's logits
  copied out of the page-locked buffer they arrive in; ``holes_in_graph``: ``fill_holes_without_host``,
  which the graph replays.

For each: the ATen operations that do work (views and metadata excluded: on a GPU each is a kernel
launch or a copy issued from Python) and the wall time per call (median of ``--repeats``; on CUDA the
device is synchronised after each call). The memories are compared bitwise, and so are the frame's
logits on a CPU; on a GPU the resize moved from the host to the device, so the largest difference of
the logits and the fraction of mask pixels that agree are reported. The exit code is 1 when the
memories differ, or the masks do (on a GPU: in more than 0.1 % of the pixels).

The step: SAM 2.1 tiny at 512 px with random weights, a box on frame 0 of a ``--slices`` phantom of
``--size`` pixels, tracked forward; the last frame's step is measured (from 18 slices on, a full memory:
the conditioning frame, 6 recent frames, 16 object pointers).

Example::

    LD_PRELOAD=libjemalloc.so.2 .venv/bin/python benchmarks/step_host_work.py \
        --output benchmarks/results/step_host_work_cpu.json
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import machine_info, object_prompts, phantom_kji

# on a GPU, the fraction of the frame's mask pixels both ways of finishing must agree on
MIN_GPU_MASK_AGREEMENT = 0.999
# dispatched but no work: tensor creation from a Python list is a host copy, not a launch
METADATA_OPS = {"aten.detach_.default", "aten.detach.default", "aten.lift_fresh.default"}


def count_operations(call: Any) -> collections.Counter:
    """The ATen operations ``call()`` dispatches that do work (views and metadata excluded)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counted: collections.Counter = collections.Counter()

    class Counting(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            name = str(func)
            if not func.is_view and name not in METADATA_OPS:
                counted[name] += 1
            return func(*args, **(kwargs or {}))

    with Counting():
        call()
    return counted


def median_microseconds(call: Any, repeats: int, device: Any) -> float:
    import torch

    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return 1e6 * statistics.median(seconds)


def measure(calls: dict[str, Any], repeats: int, device: Any) -> dict[str, Any]:
    parts = {}
    for name, call in calls.items():
        for _ in range(5):
            call()  # warm-up
        operations = count_operations(call)
        parts[name] = {
            "operations": sum(operations.values()),
            "by_operation": dict(operations.most_common()),
            "us_per_call": median_microseconds(call, repeats, device),
        }
    return parts


def tracked_to_the_last_frame(
    slices: int, size: int, device: str, precision: str, **tracker_options: Any
) -> tuple[Any, int]:
    """A SAM 2.1 tiny (512 px, seed-0 random weights) tracker with its step split for graphs, a box on
    frame 0 of a ``slices`` x ``size`` x ``size`` phantom, tracked forward up to the frame before the last:
    (the tracker, the last frame's index), the step of that frame being the one to measure."""
    import torch
    from medsegany.models.sam2_build import build_sam2_model
    from medsegany.models.sam2_tracker import Sam2Tracker

    torch.manual_seed(0)
    model = build_sam2_model("sam2.1_hiera_t512", None, device=device)
    tracker = Sam2Tracker(model, precision=precision, step_graphs=True, lookahead=False, **tracker_options)
    volume_kji = phantom_kji(slices, size=size)
    tracker.set_frames(volume_kji)
    tracker.add_prompts(1, 0, box_frame_xyxy=object_prompts(volume_kji, 1)[0].box_frame_xyxy)
    frame = slices - 1
    for _ in tracker.propagate(0, +1, end_frame=frame - 1):
        pass
    return tracker, frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=20, help="frames tracked (18 or more: a full memory)")
    parser.add_argument("--size", type=int, default=512, help="frame size in pixels (the resize's target)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/step_host_work.json"))
    args = parser.parse_args(argv)

    import torch
    from medsegany.models.sam2_holes import fill_holes_in_mask_logits, fill_holes_without_host
    from medsegany.models.sam2_lookahead import copy_to_host
    from medsegany.models.sam2_memory_gather import (
        gather_memory,
        memory_from_gathered,
        meta_assembled_memory,
        select_memory,
    )
    from torch.nn.functional import interpolate

    tracker, frame = tracked_to_the_last_frame(args.slices, args.size, args.device, args.precision)
    model, device, num_frames = tracker.model, tracker.device, args.slices
    bank = tracker._objects[1].memory_bank()  # the object's memory after frame - 1
    area, frame_shape = int(model.fill_hole_area), tracker.frame_shape
    with tracker._compute():
        inputs = tracker._step_inputs(tracker._objects[1], frame, False)  # encodes the frame
        vision_feats, feat_sizes = inputs[1], inputs[3]
        low_res_masks = tracker._steps.track(*inputs)[0]  # the step's logits, holes not filled
    buffers = gather_memory(select_memory(model, frame, bank, num_frames, False), device)
    host_masks, _, ready = copy_to_host(low_res_masks, torch.zeros(1, 1, device=device))
    filled = fill_holes_without_host(low_res_masks, area)  # as the graph leaves it

    def resize_on_device() -> Any:
        return interpolate(filled.float(), size=frame_shape, mode="bilinear", align_corners=False)

    host_frame_logits, _, ready = copy_to_host(resize_on_device(), torch.zeros(1, 1, device=device))
    if ready is not None:
        ready.synchronize()

    def meta() -> Any:
        return meta_assembled_memory(model, frame, vision_feats, feat_sizes, bank, num_frames, False)

    def gather() -> Any:
        return gather_memory(select_memory(model, frame, bank, num_frames, False), device, out=buffers)

    def memory_in_graph() -> Any:
        selection = select_memory(model, frame, bank, num_frames, False)
        pos_enc = selection.spatial[0][1]["maskmem_pos_enc"][-1]
        return memory_from_gathered(model, buffers, pos_enc)

    def host_finish() -> Any:  # what the step launched ahead did before: holes and resize on the host
        return tracker._to_frame_resolution(fill_holes_in_mask_logits(host_masks, area))

    def device_finish_host_share() -> Any:
        resize_on_device()
        return host_frame_logits[0, 0].numpy().copy()

    def holes_in_graph() -> Any:
        return fill_holes_without_host(low_res_masks, area)

    with tracker._compute():
        expected, got = meta(), (gather(), memory_in_graph())[1]
        memory = measure(
            {"meta_assembly": meta, "medsegany_gather": gather, "memory_in_graph": memory_in_graph},
            args.repeats,
            device,
        )
        finishing = measure(
            {
                "host_finish": host_finish,
                "device_finish_host_share": device_finish_host_share,
                "holes_in_graph": holes_in_graph,
            },
            max(args.repeats // 4, 3),
            device,
        )
        before, now = host_finish(), device_finish_host_share()
        # on a GPU the resize now runs there, not on the host: its rounding may differ in the last bits
        finish_difference = float(np.abs(before - now).max())
        mask_agreement = float(((before > 0) == (now > 0)).mean())
        same_masks = mask_agreement == 1.0
    same_memory = got[2] == expected[2] and all(
        a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(got[:2], expected[:2])
    )
    selection = select_memory(model, frame, bank, num_frames, False)
    holes = int((fill_holes_in_mask_logits(host_masks, area) != host_masks).sum())
    report = {
        "benchmark": "step_host_work",
        "machine": machine_info(args.device),
        "device": str(device),
        "precision": tracker.precision,
        "slices": args.slices,
        "frame_shape": list(frame_shape),
        "low_res_shape": list(low_res_masks.shape),
        "memory_frames": len(selection.spatial),
        "object_pointers": len(selection.pointers),
        "hole_pixels_filled": holes,
        "repeats": args.repeats,
        "memory": memory,
        "finishing": finishing,
        "bitwise_equal": {"memory": bool(same_memory), "frame_logits": finish_difference == 0.0},
        "frame_logits_max_abs_difference": finish_difference,
        "frame_masks_equal": same_masks,
        "frame_mask_agreement": mask_agreement,
        "ratios": {
            "memory_operations_meta_over_gather": memory["meta_assembly"]["operations"]
            / max(memory["medsegany_gather"]["operations"], 1),
            "memory_time_meta_over_gather": memory["meta_assembly"]["us_per_call"]
            / memory["medsegany_gather"]["us_per_call"],
            "finish_time_host_over_device_share": finishing["host_finish"]["us_per_call"]
            / finishing["device_finish_host_share"]["us_per_call"],
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    summary = {
        group: {name: {k: v for k, v in part.items() if k != "by_operation"} for name, part in parts.items()}
        for group, parts in (("memory", memory), ("finishing", finishing))
    }
    print(
        json.dumps(
            {
                **summary,
                "bitwise_equal": report["bitwise_equal"],
                "frame_masks_equal": same_masks,
                "ratios": report["ratios"],
            },
            indent=1,
        )
    )
    # on a CPU both ways finish the mask alike, bit for bit; on a GPU a pixel whose logit is about 0 may
    # flip with the resize's rounding (one pixel of a 512 x 512 frame: 0.999996), which is no failure
    masks_close = same_masks if device.type == "cpu" else mask_agreement >= MIN_GPU_MASK_AGREEMENT
    return 0 if same_memory and masks_close else 1


if __name__ == "__main__":
    sys.exit(main())
