"""The ATen operations of one SAM 2 tracking step, by part: what a CUDA graph of the step replays.

On an H200 a SAM 2.1 tiny tracking step replayed from its CUDA graph is bound by its number of small
kernels (672 kernels, 2.33 ms of GPU work, ``run_gpu.sh graphs``, 2026-11-28), so each operation taken out
of the step is GPU time saved at every slice. This counts, on any device, the operations that do work
(views and metadata excluded, as ``step_host_work.py`` counts them) in ``step_from_gathered`` with the
holes filled inside the step, as the graph path records it, grouped by the model's modules (two levels
deep; ``step`` is the code between them: the memory's encodings, the heads' glue, the hole filling). The
casts autocast adds are not among them (it works above where they are counted): PyTorch's profiler counts
the step's ``aten::_to_copy`` calls apart.

It also counts Meta's mask heads for a frame with no prompt (``_forward_sam_heads``) against
``sam2_unprompted_heads.forward_heads_unprompted``, on random features in place of the memory attention's,
and compares their outputs bitwise. The exit code is 1 when they differ.

The step: SAM 2.1 tiny at 512 px with random weights, a box on frame 0 of a ``--slices`` phantom, tracked
forward; the last frame's step is counted (from 18 slices on, a full memory: the conditioning frame, 6
recent frames, 16 object pointers).

Example::

    .venv/bin/python benchmarks/step_operations.py --precision bfloat16 \
        --output benchmarks/results/step_operations_cpu_2026-11-28.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import machine_info
from step_host_work import METADATA_OPS, tracked_to_the_last_frame


def count_by_module(
    model: Any, call: Any, functions: dict[str, tuple[Any, str]] | None = None
) -> dict[str, collections.Counter]:
    """The operations ``call()`` dispatches that do work, by the innermost of the model's modules running
    them (named to two levels below the model: ``memory_attention.layers.0``); ``step`` for those outside
    every module. ``functions``: part name -> (namespace, attribute) of a function that runs a module's
    work in place of its forward (``attend_to_memory``), counted as that part while it runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    running = ["step"]
    counted: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def enter(name: str) -> Any:
        return lambda module, args: running.append(name)

    def leave(module: Any, args: Any, output: Any) -> None:  # None: the output stays the module's
        running.pop()

    def counted_as(name: str, function: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            running.append(name)
            try:
                return function(*args, **kwargs)
            finally:
                running.pop()

        return run

    hooks = []
    for name, module in model.named_modules():
        if name and not name.startswith("image_encoder"):
            hooks.append(module.register_forward_pre_hook(enter(".".join(name.split(".")[:3]))))
            hooks.append(module.register_forward_hook(leave))
    # a library from before attend_to_memory (the "before" run in benchmarks/README.md) has none
    originals = {
        part: (space, attribute, getattr(space, attribute))
        for part, (space, attribute) in (functions or {}).items()
        if hasattr(space, attribute)
    }
    for part, (space, attribute, function) in originals.items():
        setattr(space, attribute, counted_as(part, function))

    class Counting(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            name = str(func)
            if not func.is_view and name not in METADATA_OPS:
                counted[running[-1]][name] += 1
            return func(*args, **(kwargs or {}))

    try:
        with Counting():
            call()
    finally:
        for hook in hooks:
            hook.remove()
        for space, attribute, function in originals.values():
            setattr(space, attribute, function)
    return counted


def profiled_casts(call: Any) -> int:
    """The ``aten::_to_copy`` calls PyTorch's profiler records in ``call()``: the dtype casts, those that
    autocast makes included (the dispatch mode of :func:`count_by_module` sees the operations above
    autocast, so not those; on a CPU some come from inside its kernels)."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        call()
    return sum(1 for event in profile.events() if event.name == "aten::_to_copy")


def part_of(module_name: str) -> str:
    """The step's part a module belongs to: its top-level name (``memory_attention``, ...)."""
    return module_name.split(".")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=20, help="frames tracked (18 or more: a full memory)")
    parser.add_argument("--size", type=int, default=256, help="frame size in pixels (not in the step)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/step_operations.json"))
    args = parser.parse_args(argv)

    import torch
    from medsegany.models import sam2_step_graphs
    from medsegany.models.sam2_memory_gather import gather_memory, select_memory
    from medsegany.models.sam2_step_graphs import step_from_gathered
    from medsegany.models.sam2_unprompted_heads import forward_heads_unprompted

    # the attention as PyTorch's fused kernel, as on a GPU (a CPU tracker runs it by matrix products)
    tracker, frame = tracked_to_the_last_frame(
        args.slices, args.size, args.device, args.precision, matmul_attention=False
    )
    model, device = tracker.model, tracker.device
    with tracker._compute():
        _, vision_feats, vision_pos, feat_sizes, bank, num_frames, reverse = tracker._step_inputs(
            tracker._objects[1], frame, False
        )
        selection = select_memory(model, frame, bank, num_frames, reverse)
        gathered = gather_memory(selection, device)
        pos_enc = selection.spatial[0][1]["maskmem_pos_enc"][-1]
        area = int(model.fill_hole_area)

        def step() -> Any:
            positions = vision_pos[-1:]
            return step_from_gathered(model, vision_feats, positions, feat_sizes, gathered, pos_enc, area)

        step()  # the first call keeps the step's constants
        # the step runs the memory attention's layers through attend_to_memory, not through its forward
        by_module = count_by_module(model, step, {"memory_attention": (sam2_step_graphs, "attend_to_memory")})
        casts = profiled_casts(step)

        # the heads alone: random features in place of the memory attention's, this frame's high-res ones
        grid = feat_sizes[-1]
        pix_feat = torch.randn(1, model.hidden_dim, *grid, generator=torch.Generator().manual_seed(0))
        pix_feat = pix_feat.to(device, vision_feats[-1].dtype)
        high_res = [
            x.permute(1, 2, 0).view(x.size(1), x.size(2), *size)
            for x, size in zip(vision_feats[:-1], feat_sizes[:-1])
        ]

        def meta_heads() -> Any:
            outputs = model._forward_sam_heads(
                backbone_features=pix_feat,
                point_inputs=None,
                mask_inputs=None,
                high_res_features=high_res,
                multimask_output=model._use_multimask(False, None),
            )
            return outputs[3], outputs[4], outputs[5], outputs[6]

        def our_heads() -> Any:
            return forward_heads_unprompted(model, pix_feat, high_res)

        heads = {}
        for name, call in (("meta_forward_sam_heads", meta_heads), ("forward_heads_unprompted", our_heads)):
            call()  # as the step above: the first call keeps the constants
            counted = count_by_module(model, call)
            parts: collections.Counter = collections.Counter()
            for module_name, operations in counted.items():
                parts[part_of(module_name)] += sum(operations.values())
            heads[name] = {"operations": sum(parts.values()), "by_part": dict(parts.most_common())}
        heads_equal = all(torch.equal(a, b) for a, b in zip(meta_heads(), our_heads()))

    by_part: collections.Counter = collections.Counter()
    by_operation: collections.Counter = collections.Counter()
    for module_name, counted in by_module.items():
        by_part[part_of(module_name)] += sum(counted.values())
        by_operation.update(counted)
    total = sum(by_part.values())
    report = {
        "benchmark": "step_operations",
        "machine": machine_info(args.device),
        "device": str(device),
        "precision": tracker.precision,
        "memory_frames": len(selection.spatial),
        "object_pointers": len(selection.pointers),
        "fill_hole_area": area,
        "step_operations": total,
        "step_casts_profiled": casts,
        "by_part": dict(by_part.most_common()),
        "by_module": {name: sum(c.values()) for name, c in sorted(by_module.items())},
        "by_operation": dict(by_operation.most_common()),
        "heads": heads,
        "heads_bitwise_equal": bool(heads_equal),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(
        json.dumps(
            {
                "step_operations": total,
                "step_casts_profiled": casts,
                "by_part": report["by_part"],
                "heads": {name: part["operations"] for name, part in heads.items()},
                "heads_bitwise_equal": report["heads_bitwise_equal"],
            },
            indent=1,
        )
    )
    return 0 if heads_equal else 1


if __name__ == "__main__":
    sys.exit(main())
