"""What the session needs from a 2D promptable model (SAM, MedSAM, LiteMedSAM): embed a frame, decode prompts.

A *frame* is one slice of the windowed volume (uint8 0..255, H x W, see ``medsegany.slices``). Prompt
coordinates are frame pixels, x = column, y = row, as in SAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class FramePrediction:
    """One decoded mask: logits at the frame's own resolution and the model's IoU estimate."""

    logits_frame: np.ndarray  # float32 (H, W); > 0 is inside
    iou_score: float

    @property
    def mask_frame(self) -> np.ndarray:
        return self.logits_frame > 0


class SliceModel(Protocol):
    """A 2D promptable segmenter. Embeddings are opaque and reused for every prompt on that frame."""

    model_id: str

    def embed_frames(self, frames: list[np.ndarray]) -> list[Any]:
        """Image embeddings for a batch of uint8 frames (the expensive part, once per frame)."""
        ...

    def predict(
        self,
        embedding: Any,
        box_frame_xyxy: np.ndarray | None = None,
        points_frame_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
    ) -> FramePrediction:
        """Decode one mask from prompts on an embedded frame (cheap)."""
        ...
