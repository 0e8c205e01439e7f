"""Shared helpers of the SAM 2 tests: a small synthetic volume and a random-weight checkpoint on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# MedSAM2's configuration (SAM 2.1 tiny at 512 px) is the cheapest real one: about 2.5 s per image
# encoding on 2 busy CPU cores, against about 10 s at 1024 px.
CONFIG_512 = "sam2.1_hiera_t512"


def blob_frames(num_frames: int = 5, height: int = 64, width: int = 80, seed: int = 0) -> np.ndarray:
    """Grey frames (N, H, W) float32 in [0, 1]: a bright disc, largest on the middle frame, with noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    frames = np.empty((num_frames, height, width), np.float32)
    middle = (num_frames - 1) / 2
    for k in range(num_frames):
        radius = 0.3 * min(height, width) - 3.0 * abs(k - middle)
        disc = (rows - height / 2) ** 2 + (cols - width / 2) ** 2 < radius**2
        frames[k] = np.clip(0.2 + 0.6 * disc + 0.05 * rng.standard_normal((height, width)), 0.0, 1.0)
    return frames


def disc_box_xyxy(frames: np.ndarray, frame_index: int) -> np.ndarray:
    """A box (x0, y0, x1, y1) in frame pixels around the bright disc of one frame, 2 pixels wider."""
    rows, cols = np.nonzero(frames[frame_index] > 0.5)
    return np.array([cols.min() - 2, rows.min() - 2, cols.max() + 2, rows.max() + 2], np.float32)


def random_checkpoint(directory: Path, config: str = CONFIG_512, seed: int = 0) -> Path:
    """The real architecture with random weights, saved as Meta does ({"model": state_dict})."""
    from medsegany.models.sam2_build import save_random_checkpoint

    return save_random_checkpoint(config, Path(directory) / f"random_{config}_{seed}.pt", seed=seed)


def on_one_thread_and_all():
    """Yield 1 and PyTorch's thread count, its threads set to each in turn and restored after: a CPU
    kernel may round otherwise on one thread (upsampling by the number of channels did, 2026-11-28)."""
    import torch

    threads = torch.get_num_threads()
    try:
        for count in sorted({1, threads}):
            torch.set_num_threads(count)
            yield count
    finally:
        torch.set_num_threads(threads)


def skip_unless_compilable(device: str) -> None:
    """Skip a torch.compile test where it cannot run: CUDA cases without a CUDA GPU (Triton's kernels),
    CPU cases without a C++ compiler (inductor's)."""
    import pytest
    import torch
    from medsegany.models.compute import cpp_compiler_available

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("compiling for CUDA needs a CUDA GPU")
    if device == "cpu" and not cpp_compiler_available():
        pytest.skip("inductor needs a C++ compiler on a CPU")


class ReplayedEagerly:
    """Stands in for a CUDA graph: a replay runs the recorded step again and writes into its outputs."""

    def __init__(self, body, outputs):
        self.body = body
        self.outputs = outputs

    def pool(self):
        return None

    def replay(self):
        fresh = self.body()
        for target, value in zip(self.outputs[:4], fresh[:4]):
            target.copy_(value)
        for target, value in zip(self.outputs[4], fresh[4]):
            target.copy_(value)


def capture_eagerly(self, body, device_type):
    """Stands in for ``StepGraphs._capture``: the step runs once, then each replay runs it again."""
    outputs = body()
    return ReplayedEagerly(body, outputs), outputs
