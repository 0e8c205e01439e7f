"""A fast, deterministic stand-in for a 2D SAM-family model, for logic tests.

It "segments" the pixels brighter than a threshold inside the prompt box (grown by 2 px), the
connected way a real decoder tends to: only the component under the box centre or under positive points.
"""

from __future__ import annotations

import numpy as np
from medsegany.models.base import FramePrediction


class ThresholdModel:
    model_id = "threshold-fake"

    def __init__(self, threshold: float = 100.0) -> None:
        self.threshold = threshold
        self.encoded = 0
        self.predict_calls = 0

    def embed_frames(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        self.encoded += len(frames)
        return [np.array(frame, dtype=np.float32, copy=True) for frame in frames]

    def predict(
        self, embedding, box_frame_xyxy=None, points_frame_xy=None, point_labels=None
    ) -> FramePrediction:
        self.predict_calls += 1
        frame = embedding
        inside = np.zeros(frame.shape, dtype=bool)
        if box_frame_xyxy is not None:
            x0, y0, x1, y1 = np.round(np.asarray(box_frame_xyxy)).astype(int)
            inside[max(y0 - 2, 0) : y1 + 3, max(x0 - 2, 0) : x1 + 3] = True
        else:
            inside[:] = True
        mask = (frame > self.threshold) & inside
        if points_frame_xy is not None:
            for (x, y), label in zip(np.asarray(points_frame_xy), np.asarray(point_labels)):
                if label == 0:
                    mask[max(int(y) - 3, 0) : int(y) + 4, max(int(x) - 3, 0) : int(x) + 4] = False
        logits = np.where(mask, 8.0, -8.0).astype(np.float32)
        return FramePrediction(logits, 0.9 if mask.any() else 0.1)
