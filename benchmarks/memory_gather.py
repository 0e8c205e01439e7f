"""What choosing and bringing together a SAM 2 tracking step's memory costs the host, against Meta's way.

With a tracking step replayed from a CUDA graph (``medsegany.models.sam2_step_graphs``), the memory is
what the host still prepares per step outside the graph. Three parts are measured on the same memory
bank:

- ``meta_assembly``: Meta's ``_prepare_memory_conditioned_features`` (its memory attention call
  intercepted), what the graph path ran until 2026-11-27;
- ``medsegany_gather``: ``select_memory`` (Meta's rules on frame numbers) and ``gather_memory`` into a
  graph's input buffers, what it runs now;
- ``in_graph``: ``memory_from_gathered``, the rest of Meta's assembly, which a GPU replays inside the
  graph (listed for completeness: it costs the host nothing there).

For each: the ATen operations that do work (views and metadata excluded: on a GPU each is a kernel
launch or a copy issued from Python) and the wall time per call (median of ``--repeats``; on CUDA the
device is synchronised after each call). Both memories are compared bitwise.

The memory bank comes from a real propagation: SAM 2.1 tiny at 512 px with random weights, a box on
frame 0 of a ``--slices`` phantom, tracked forward; the step measured is the last frame's (from 18
slices on, a full memory: the conditioning frame, 6 recent frames, 16 object pointers).

Example::

    LD_PRELOAD=libjemalloc.so.2 .venv/bin/python benchmarks/memory_gather.py \
        --output benchmarks/results/memory_gather_cpu.json
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import machine_info, object_prompts, phantom_kji

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=20, help="frames tracked (18 or more: a full memory)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/memory_gather.json"))
    args = parser.parse_args(argv)

    import torch
    from medsegany.models.sam2_build import build_sam2_model
    from medsegany.models.sam2_memory_gather import (
        gather_memory,
        memory_from_gathered,
        meta_assembled_memory,
        select_memory,
    )
    from medsegany.models.sam2_tracker import Sam2Tracker

    torch.manual_seed(0)
    tracker = Sam2Tracker(
        build_sam2_model("sam2.1_hiera_t512", None, device=args.device),
        precision=args.precision,
        step_graphs=True,
        lookahead=False,
    )
    volume_kji = phantom_kji(args.slices, size=128)
    prompt = object_prompts(volume_kji, 1)[0]
    tracker.set_frames(volume_kji)
    tracker.add_prompts(1, 0, box_frame_xyxy=prompt.box_frame_xyxy)
    frame = args.slices - 1
    for _ in tracker.propagate(0, +1, end_frame=frame - 1):
        pass
    model, device = tracker.model, tracker.device
    bank = tracker._objects[1].memory_bank()  # the object's memory after frame - 1
    with tracker._compute():
        vision_feats, _, feat_sizes = tracker._frame_features(frame)  # encodes the frame
    buffers = gather_memory(select_memory(model, frame, bank, args.slices, False), device)

    def meta() -> Any:
        return meta_assembled_memory(model, frame, vision_feats, feat_sizes, bank, args.slices, False)

    def gather() -> Any:
        return gather_memory(select_memory(model, frame, bank, args.slices, False), device, out=buffers)

    def in_graph() -> Any:
        selection = select_memory(model, frame, bank, args.slices, False)
        pos_enc = selection.spatial[0][1]["maskmem_pos_enc"][-1]
        return memory_from_gathered(
            model,
            buffers.spatial,
            buffers.pointers,
            buffers.indices,
            pos_enc,
            buffers.num_spatial,
            buffers.max_pointers,
        )

    parts: dict[str, Any] = {}
    with tracker._compute():
        expected, got = meta(), (gather(), in_graph())[1]
        for name, call in (("meta_assembly", meta), ("medsegany_gather", gather), ("in_graph", in_graph)):
            for _ in range(5):
                call()  # warm-up
            operations = count_operations(call)
            parts[name] = {
                "operations": sum(operations.values()),
                "by_operation": dict(operations.most_common()),
                "us_per_call": median_microseconds(call, args.repeats, device),
            }
    same = got[2] == expected[2] and all(
        a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(got[:2], expected[:2])
    )
    selection = select_memory(model, frame, bank, args.slices, False)
    report = {
        "benchmark": "memory_gather",
        "machine": machine_info(args.device),
        "device": str(device),
        "precision": tracker.precision,
        "slices": args.slices,
        "memory_frames": len(selection.spatial),
        "object_pointers": len(selection.pointers),
        "repeats": args.repeats,
        "parts": parts,
        "bitwise_equal": bool(same),
        "ratios": {
            "operations_meta_over_gather": parts["meta_assembly"]["operations"]
            / max(parts["medsegany_gather"]["operations"], 1),
            "time_meta_over_gather": parts["meta_assembly"]["us_per_call"]
            / parts["medsegany_gather"]["us_per_call"],
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    summary = {name: {k: v for k, v in part.items() if k != "by_operation"} for name, part in parts.items()}
    print(json.dumps({"parts": summary, "bitwise_equal": same, "ratios": report["ratios"]}, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
