"""What a SAM 2 encoder batch of a size not seen before costs, and why.

On an H200 (2026-11-28, ``run_gpu.sh speed``) the first timed run of MedSegAny's path encoded 300 slices
in 0.74-0.77 s, later runs in 0.23 s; the warm-up before it had encoded 40 slices (batches of 32 and 8),
the timed run ended on a batch of 12. Two causes fit: a batch size seen for the first time (kernel or
attention-plan selection per shape), or the caching allocator asking CUDA for memory for the first time
(the timed run caches 260 slices more than the warm-up). This script told them apart: the size, through
PyTorch's cuDNN attention (0.49-0.60 s a new size with it, 0.05-0.06 s without, no new memory taken from
CUDA; benchmarks/README.md). Since, the tracker's encoder runs without cuDNN attention
(``compute.without_cudnn_attention``) and pads a short batch (``sam2_tracker.padded_batch_size``).

One fresh process, SAM 2.1 tiny at 512 px with random weights (the tracker MedSegAny runs: bf16 on CUDA),
a phantom of ``--slices`` slices. Each call of ``--sizes`` encodes that many frames not cached (the cache
is emptied before each call, so every call allocates the same), synchronised, timed; for each call: the
seconds, whether its size is new to the process, and how many memory segments the allocator took from
CUDA during it (``segment.all.allocated`` in ``torch.cuda.memory_stats``). Then the same for the sizes of
``--sizes-with-cudnn-attention`` with PyTorch's cuDNN attention backend allowed again (as PyTorch's
default and Meta's predictor run the encoder), to see what a new size costs with it; then
``--sizes-padded`` asked for in batches of ``--padded-batch`` with the tracker padding a short batch to
a power of two (``medsegany.models.sam2_tracker.padded_batch_size``): sizes it has run before cost
nothing extra.

Example (a GPU)::

    python benchmarks/encoder_batch_shapes.py --device cuda --output shapes.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import machine_info, phantom_kji
from tracker_profile import time_features

DEFAULT_SIZES = (16, 16, 16, 13, 13, 14, 14, 5, 5, 1, 1, 32, 32, 16)
DEFAULT_SIZES_WITH_CUDNN = (7, 7, 9, 9, 16)
DEFAULT_SIZES_PADDED = (11, 10, 12, 3)  # in batches of 16, padded: 16, 16, 16, 4


def _segments(torch: Any, cuda: bool) -> int | None:
    return int(torch.cuda.memory_stats().get("segment.all.allocated", 0)) if cuda else None


def time_calls(
    tracker: Any, frames_nhw: Any, sizes: tuple[int, ...], seen: set[int], device: str, batch: int = 0
) -> list:
    """Encode ``size`` uncached frames per call, asked for as one batch (``batch`` 0) or as batches of
    ``batch`` (a shorter one padded when the tracker pads); one record per call."""
    import torch
    from medsegany.models.sam2_tracker import padded_batch_size

    cuda = device.startswith("cuda")
    records = []
    for size in sizes:
        before = _segments(torch, cuda)
        # new frames empty the feature cache: every call encodes the same way
        seconds = time_features(tracker, frames_nhw[:size], batch or size, device)
        after = _segments(torch, cuda)
        encoded = padded_batch_size(size, batch) if batch and tracker.pad_batches else size
        records.append(
            {
                "size": size,
                "encoded_size": encoded,
                "new_size": encoded not in seen,
                "seconds": seconds,
                "segments_allocated": None if before is None else after - before,
            }
        )
        seen.add(encoded)
        print(json.dumps(records[-1]), flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--size", type=int, default=512, help="slice size in pixels")
    parser.add_argument("--slices", type=int, default=32, help="phantom slices (at least the largest size)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument(
        "--sizes-with-cudnn-attention", type=int, nargs="*", default=list(DEFAULT_SIZES_WITH_CUDNN)
    )
    parser.add_argument("--sizes-padded", type=int, nargs="*", default=list(DEFAULT_SIZES_PADDED))
    parser.add_argument("--padded-batch", type=int, default=16, help="the batch asked for when padded")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/encoder_batch_shapes.json"))
    args = parser.parse_args(argv)
    largest = max([*args.sizes, *args.sizes_with_cudnn_attention, *args.sizes_padded])
    if args.slices < largest:
        parser.error(f"--slices {args.slices} is fewer than the largest size {largest}")

    import torch
    from medsegany.models import sam2_tracker
    from medsegany.models.sam2_build import build_sam2_model, image_size_overrides
    from medsegany.models.sam2_tracker import Sam2Tracker

    cuda = args.device.startswith("cuda")
    torch.manual_seed(0)
    overrides = image_size_overrides(args.image_size) if args.image_size != 512 else ()
    tracker = Sam2Tracker(
        build_sam2_model("sam2.1_hiera_t512", None, device=args.device, overrides=overrides)
    )
    frames_nhw = phantom_kji(args.slices, args.size)
    seen: set[int] = set()
    result: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine_info(args.device),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "precision": tracker.precision,
        "image_size": args.image_size,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }
    if cuda:
        result["attention_backends"] = {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "memory_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
            "math": torch.backends.cuda.math_sdp_enabled(),
        }
    result["calls"] = time_calls(tracker, frames_nhw, tuple(args.sizes), seen, args.device)
    # the tracker's own context made a no-op: PyTorch's default backends, cuDNN's included
    with mock.patch.object(sam2_tracker, "without_cudnn_attention", lambda device: contextlib.nullcontext()):
        sizes = tuple(args.sizes_with_cudnn_attention)
        result["calls_with_cudnn_attention"] = time_calls(tracker, frames_nhw, sizes, seen, args.device)
    tracker.pad_batches = True
    padded = tuple(args.sizes_padded)
    result["calls_padded"] = time_calls(tracker, frames_nhw, padded, seen, args.device, args.padded_batch)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
