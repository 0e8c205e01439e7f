"""What ``torch.compile`` would buy SAM 2's image encoder as MedSegAny's tracker runs it.

Why: on an H200 (2026-11-28) the encoder is 1.03 of the 1.81 s that SAM 2.1 large at 1024 px takes for
100 slices (1.99x reference B, the target is 2x), and 0.23 of the 1.10-1.13 s that tiny at 512 px takes
for 300 slices (the target is 1.0 s). At about 10 ms an image for large and 0.8 ms for tiny the encoder
is far from the GPU's arithmetic rate; inductor fuses the norms, activations and casts between its
matrix products. MedSegAny compiles it only on request: this measures whether it should by default.

For each model (random weights; a :class:`medsegany.models.sam2_tracker.Sam2Tracker` on the device, bf16
autocast on CUDA, its encoder batch): the tracker encodes ``--batch`` slices of a phantom as it does in a
run (eager, median of ``--repeats``); then a tracker of the same model with its image encoder through
``torch.compile`` as MedSegAny compiles it on request (``Sam2Tracker(compile_encoder=True)``,
:mod:`medsegany.models.sam2_compiled_encoder`): the first call's seconds (the compile), the median of
later calls, and the largest difference of the cached features from the eager ones, relative to their
largest magnitude.

Example (a GPU)::

    python benchmarks/sam2_encoder_compile.py --device cuda --output encoder_compile.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import SAM2_MODELS, machine_info, phantom_kji
from tracker_profile import time_features


def cached_features(tracker: Any, frame_index: int) -> list[Any]:
    """The frame's FPN features as the tracker cached them, in float32 on the host."""
    return [level.float().cpu() for level in tracker._cache.get(frame_index)]


def measure(model_name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from medsegany.models.sam2_build import build_sam2_model, image_size_overrides
    from medsegany.models.sam2_tracker import Sam2Tracker

    config, image_size = SAM2_MODELS[model_name]
    overrides: tuple[str, ...] = ()
    if args.image_size:
        image_size, overrides = args.image_size, image_size_overrides(args.image_size)
    torch.manual_seed(0)
    model = build_sam2_model(config, None, device=args.device, overrides=overrides)
    eager = Sam2Tracker(model)
    compiled = Sam2Tracker(model, compile_encoder=True)  # the same model and weights
    frames_nhw = phantom_kji(args.batch, args.size)

    def encode(tracker: Any) -> float:  # one batch of uncached frames (new frames empty the cache)
        return time_features(tracker, frames_nhw, args.batch, args.device)

    eager_s = [encode(eager) for _ in range(args.repeats + 1)][1:]  # the first call warms up
    eager_features = cached_features(eager, args.batch - 1)
    first_s = encode(compiled)  # compiles
    compiled_s = [encode(compiled) for _ in range(args.repeats)]
    compiled_features = cached_features(compiled, args.batch - 1)
    differences = [
        float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
        for a, b in zip(compiled_features, eager_features, strict=True)
    ]
    eager_median, compiled_median = statistics.median(eager_s), statistics.median(compiled_s)
    return {
        "model": model_name,
        "image_size": image_size,
        "batch": args.batch,
        "precision": eager.precision,
        "eager_ms_per_batch": 1000 * eager_median,
        "compiled_ms_per_batch": 1000 * compiled_median,
        "speedup": eager_median / compiled_median,
        "compile_s": first_s - compiled_median,
        "encoder_compile": compiled.encoder_compile_stats,
        "max_relative_feature_difference": max(differences),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["sam2.1_hiera_t512", "sam2.1_hiera_l"])
    parser.add_argument("--batch", type=int, default=16, help="frames per encoder call (the GPU's default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=512, help="slice size in pixels")
    parser.add_argument("--image-size", type=int, default=0, help="override the input size (smoke tests)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/sam2_encoder_compile.json"))
    args = parser.parse_args(argv)
    for name in args.models:
        if name not in SAM2_MODELS:
            parser.error(f"unknown model {name}: one of {', '.join(SAM2_MODELS)}")

    import torch

    result: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine_info(args.device),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "cases": [],
    }
    for name in args.models:
        case = measure(name, args)
        print(json.dumps(case), flush=True)
        result["cases"].append(case)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1) + "\n")  # each case as soon as it ends
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
