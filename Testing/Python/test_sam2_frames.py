"""SAM 2 frame preprocessing: in-memory grey slices -> normalised 3-channel S x S tensors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medsegany.errors import VolumeError  # noqa: E402
from medsegany.models.sam2_frames import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_frames,
    preprocess_frames,
)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((4, 4), np.uint8),  # one 2D frame, not a stack
        np.zeros((0, 4, 4), np.uint8),
        np.zeros((2, 4, 4), np.int16),  # raw CT numbers: needs a window first
        np.full((2, 4, 4), 1.5, np.float32),
        np.full((2, 4, 4), np.nan, np.float32),
    ],
)
def test_bad_frames_are_volume_errors(frames):
    with pytest.raises(VolumeError):
        check_frames(frames)


def test_uint8_and_float_frames_give_the_same_input():
    rng = np.random.default_rng(0)
    frames_uint8 = rng.integers(0, 256, (2, 30, 40), dtype=np.uint8)
    from_uint8 = preprocess_frames(check_frames(frames_uint8), 64)
    from_float = preprocess_frames(check_frames(frames_uint8.astype(np.float32) / 255), 64)
    assert from_uint8.shape == (2, 3, 64, 64) and from_uint8.dtype == torch.float32
    torch.testing.assert_close(from_uint8, from_float, rtol=0, atol=1e-6)


def test_grey_is_copied_to_three_channels_and_normalised_like_imagenet():
    frames = np.full((1, 10, 10), 0.25, np.float32)
    images = preprocess_frames(frames, 16).numpy()
    for channel in range(3):
        expected = (0.25 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        np.testing.assert_allclose(images[0, channel], expected, rtol=1e-6)


def test_shrinking_averages_instead_of_aliasing():
    # a one-pixel checkerboard shrunk 4x: antialiased resizing gives its mean everywhere (0.5), plain
    # bilinear sampling would pick the same parity of pixels and keep 0 or 1
    rows, cols = np.mgrid[:64, :64]
    checkerboard = ((rows + cols) % 2).astype(np.float32)[None]
    images = preprocess_frames(checkerboard, 16).numpy()
    grey = images[0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    np.testing.assert_allclose(grey[2:-2, 2:-2], 0.5, atol=0.02)
