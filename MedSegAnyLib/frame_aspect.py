"""Frames with non-square pixels given to a 2D model as square pixels: resampled, prompts mapped, logits back.

A coronal or sagittal frame of a CT with 0.94 mm pixels and 5 mm slices is 13 x 512 pixels for 65 x 481
mm; LiteMedSAM (longest side to 256, aspect kept) saw it as 7 x 256, the object squashed 5.3 times along
the slice direction, where it was trained on square pixels. Measured with the real LiteMedSAM on the shared
cases whose slices are at least twice their pixels (18 cases, the J and I slice with the largest label
area, the label's own bounding box, no propagation; 36 frames): mean Dice 0.652 as given, 0.768 resampled
to square pixels (better on 23 frames, worse on 9, median +0.08; a 5.2 mm MR T2's coronal 0.11 -> 0.95;
the two losses of 0.5 are DeepLesion lesions in 13-slice crops, one filling the frame's whole height).
Propagated along J over 11 slices from that box (3D Dice): sarcoma MR T1 0.48 -> 0.78, its native T2
0.02 -> 0.86, sarcoma CT 0.88 -> 0.79.

The frame is resampled linearly (pixel centres, as ``torch``'s bilinear ``align_corners=False``) along the
coarse axis to the fine axis' spacing, so the fine axis' pixels pass untouched; a box's edges cover the
same millimetres, a point keeps its pixel centre, and the logits come back linearly onto the frame's own
grid before anything thresholds them. A frame whose pixels are square already (an axial slice of almost
every scan) goes to the model unchanged: the same masks, bit for bit.

Only for models whose own resize keeps the aspect (``aspect_preserving_resize``: LiteMedSAM, SAM):
MedSAM resizes every frame to 1024 x 1024 whatever its shape, so a resample before would change nothing
it sees but the interpolation. SAM 2 models run on their own frames (:mod:`medsegany.models.sam2_frames`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .models.base import FramePrediction

# pixels within 0.1 % of square are square (spacings from one matrix's column norms differ by rounding)
SQUARE_TOLERANCE = 1e-3
# the resampled frame's longest side at most (a 1000-slice 5 mm sagittal at 0.7 mm would be 7143 rows):
# beyond it both sides shrink to square pixels of a coarser size; the models take 256 or 1024 px anyway
MAX_SIDE_PX = 4096


def frame_spacing_mm(spacing_ijk: tuple[float, float, float], axis: int) -> tuple[float, float]:
    """(row, column) spacing in mm of the frames along IJK ``axis`` (rows and columns as in
    :mod:`medsegany.slices`: axis K rows J, cols I; axis J rows K, cols I; axis I rows K, cols J)."""
    spacing_i, spacing_j, spacing_k = (float(value) for value in spacing_ijk)
    if axis == 2:
        return spacing_j, spacing_i
    if axis == 1:
        return spacing_k, spacing_i
    if axis == 0:
        return spacing_k, spacing_j
    raise ValueError(f"axis must be 0 (I), 1 (J) or 2 (K), not {axis}")


def pixels_are_square(spacing_rc_mm: tuple[float, float]) -> bool:
    row_mm, col_mm = spacing_rc_mm
    return abs(row_mm / col_mm - 1.0) <= SQUARE_TOLERANCE


def square_pixel_shape(frame_shape: tuple[int, int], spacing_rc_mm: tuple[float, float]) -> tuple[int, int]:
    """(rows, columns) of the frame resampled to square pixels of the finer spacing (both sides coarser
    when that would pass ``MAX_SIDE_PX``); the frame's own shape when its pixels are square."""
    height, width = int(frame_shape[0]), int(frame_shape[1])
    if pixels_are_square(spacing_rc_mm):
        return height, width
    row_mm, col_mm = (float(value) for value in spacing_rc_mm)
    pixel_mm = min(row_mm, col_mm)
    pixel_mm = max(pixel_mm, max(height * row_mm, width * col_mm) / MAX_SIDE_PX)
    return max(1, round(height * row_mm / pixel_mm)), max(1, round(width * col_mm / pixel_mm))


def _linear_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source index and the upper one's weight of each of ``target`` pixels (centres
    aligned, edges clamped: ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``)."""
    position = np.clip((np.arange(target) + 0.5) * (source / target) - 0.5, 0, source - 1)
    low = np.floor(position).astype(np.intp)
    return low, np.minimum(low + 1, source - 1), (position - low).astype(np.float32)


def resample_linear(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` (H, W) linearly resampled to ``shape`` (float32; unchanged axes are not touched)."""
    result = np.asarray(image, dtype=np.float32)
    for axis, target in enumerate(shape):
        source = result.shape[axis]
        if source == target:
            continue
        low, high, weight = _linear_taps(source, int(target))
        lower, upper = np.take(result, low, axis=axis), np.take(result, high, axis=axis)
        weight = weight[:, None] if axis == 0 else weight[None, :]
        result = lower + (upper - lower) * weight
    return result


@dataclass(frozen=True)
class SquarePixelEmbedding:
    """The inner model's embedding of a frame resampled from ``frame_shape`` to ``model_shape``."""

    inner: Any
    frame_shape: tuple[int, int]
    model_shape: tuple[int, int]


class SquarePixelFrames:
    """``model`` (a :class:`~medsegany.models.base.SliceModel`) for frames with pixels of ``spacing_rc_mm``:
    itself a SliceModel on the frames' own pixels, whose inner model sees them as square pixels."""

    def __init__(self, model: Any, spacing_rc_mm: tuple[float, float]) -> None:
        self.model = model
        self.model_id = model.model_id
        self.spacing_rc_mm = (float(spacing_rc_mm[0]), float(spacing_rc_mm[1]))

    def __getattr__(self, name: str) -> Any:
        # the session asks the model for its device, preferred batch size, warm-up: the inner model's
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def model_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        return square_pixel_shape(frame_shape, self.spacing_rc_mm)

    def embed_frames(self, frames: list[np.ndarray]) -> list[Any]:
        shapes = [(int(np.shape(frame)[0]), int(np.shape(frame)[1])) for frame in frames]
        resampled = [
            _as_frame(resample_linear(frame, self.model_shape(shape)))
            if self.model_shape(shape) != shape
            else frame
            for frame, shape in zip(frames, shapes)
        ]
        return [
            SquarePixelEmbedding(inner, shape, self.model_shape(shape))
            for inner, shape in zip(self.model.embed_frames(resampled), shapes)
        ]

    def predict(
        self,
        embedding: SquarePixelEmbedding,
        box_frame_xyxy: np.ndarray | None = None,
        points_frame_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
    ) -> FramePrediction:
        """The inner model's mask from the prompts mapped onto the resampled frame, its logits linearly
        resampled back onto the frame's pixels."""
        if embedding.model_shape == embedding.frame_shape:
            return self.model.predict(embedding.inner, box_frame_xyxy, points_frame_xy, point_labels)
        (height, width), (model_h, model_w) = embedding.frame_shape, embedding.model_shape
        scale_xy = np.array([model_w / width, model_h / height])
        box = None
        if box_frame_xyxy is not None:
            # (x0, y0, x1, y1) are the first and last pixels inside: the box keeps their outer edges, so
            # rows y0..y1 of 5 mm become rows 5 y0 .. 5 y1 + 4 at 1 mm (not 5 y1, which leaves y1 out)
            # (a frame past MAX_SIDE_PX shrinks along both axes: a box 1 px wide there, x1 = x0, gave
            # x1 * s + s - 1 < x0 * s, an inverted box; its last pixel is then its first)
            corners = np.asarray(box_frame_xyxy, dtype=np.float64).reshape(2, 2)
            first_xy = corners[0] * scale_xy
            box = np.concatenate([first_xy, np.maximum((corners[1] + 1) * scale_xy - 1, first_xy)])
        points = None
        if points_frame_xy is not None and len(points_frame_xy):
            points = (np.asarray(points_frame_xy, dtype=np.float64).reshape(-1, 2) + 0.5) * scale_xy - 0.5
        prediction = self.model.predict(embedding.inner, box, points, point_labels)
        logits = resample_linear(prediction.logits_frame, embedding.frame_shape)
        return FramePrediction(logits, prediction.iou_score)


def _as_frame(resampled: np.ndarray) -> np.ndarray:
    """A resampled frame in the windowed frames' type (uint8 0..255, as the models take them)."""
    return np.clip(np.rint(resampled), 0, 255).astype(np.uint8)


def frames_for_model(model: Any, spacing_ijk: tuple[float, float, float], axis: int) -> Any:
    """What the frames along ``axis`` of a volume with ``spacing_ijk`` go to: ``model`` itself where their
    pixels are square or its resize does not keep the aspect, else ``model`` seeing square pixels."""
    spacing_rc_mm = frame_spacing_mm(spacing_ijk, axis)
    if pixels_are_square(spacing_rc_mm) or not getattr(model, "aspect_preserving_resize", False):
        return model
    return SquarePixelFrames(model, spacing_rc_mm)
