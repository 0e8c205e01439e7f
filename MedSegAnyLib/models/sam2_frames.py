"""Frames for SAM 2: grey slices in memory -> normalised 3-channel S x S tensors, as Meta's video predictor.

Meta's ``load_video_frames`` reads JPEG files, resizes them with PIL (``Image.resize``, bicubic by default
in Pillow >= 7) on 8-bit RGB, divides by 255 and normalises with ImageNet mean/std. We never write JPEGs
(lossy, and 8-bit): the frame is resized in float32 with bilinear interpolation and antialiasing (the
resize of Meta's image predictor, ``SAM2Transforms``: torchvision ``Resize`` on a float tensor), then
copied to 3 channels and normalised in the same order as Meta (subtract mean, divide by std). Compared
with the JPEG path, intensities differ by the JPEG error and by 8-bit rounding of the resized image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import VolumeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_frames(frames_nhw: np.ndarray) -> np.ndarray:
    """Validate a stack of grey frames (N, H, W), uint8 0..255 or float in [0, 1]; returns it unchanged."""
    frames_nhw = np.asarray(frames_nhw)
    if frames_nhw.ndim != 3 or min(frames_nhw.shape) < 1:
        raise VolumeError(
            f"SAM 2 needs a stack of 2D frames (N, H, W), got shape {frames_nhw.shape}",
            "pass the slices of one volume along one axis",
        )
    if frames_nhw.dtype == np.uint8:
        return frames_nhw
    if not np.issubdtype(frames_nhw.dtype, np.floating):
        raise VolumeError(
            f"SAM 2 frames must be uint8 or float in [0, 1], got {frames_nhw.dtype}",
            "apply an intensity preset (window) first",
        )
    low, high = float(np.min(frames_nhw)), float(np.max(frames_nhw))
    # 1e-3 lets rounding errors of a window function through; anything larger is a missing window
    if not (np.isfinite(low) and np.isfinite(high)) or low < -1e-3 or high > 1 + 1e-3:
        raise VolumeError(
            f"SAM 2 float frames must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]",
            "apply an intensity preset (window) first",
        )
    return frames_nhw


def preprocess_frames(frames_nhw: np.ndarray, image_size: int, device: Any = "cpu") -> Any:
    """Model input (N, 3, S, S) float32 on ``device`` from checked frames (see :func:`check_frames`)."""
    import torch
    from torch.nn.functional import interpolate

    frames = torch.from_numpy(np.ascontiguousarray(frames_nhw)).to(device)
    is_uint8 = frames.dtype == torch.uint8
    frames = frames.float() / 255.0 if is_uint8 else frames.float().clamp(0.0, 1.0)
    frames = frames[:, None]  # (N, 1, H, W)
    if tuple(frames.shape[-2:]) != (image_size, image_size):
        # antialias only matters when shrinking; the triangle filter has no overshoot, so [0, 1] is kept
        frames = interpolate(
            frames, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    images = frames.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device)[:, None, None]
    return ((images - mean) / std).contiguous()
