"""Typed tracking state of :class:`medsegany.models.sam2_tracker.Sam2Tracker` (Meta keeps it in a dict).

Correspondence with Meta's ``inference_state`` of ``SAM2VideoPredictor`` (per object):

==========================================  ================================================
Meta                                        here
==========================================  ================================================
``output_dict["cond_frame_outputs"]``       :attr:`ObjectTrack.conditioning`
``output_dict["non_cond_frame_outputs"]``   :attr:`ObjectTrack.tracked`
``temp_output_dict`` (cond / non-cond)      :attr:`ObjectTrack.pending_conditioning` / ``pending_tracked``
``point_inputs`` / ``mask_inputs``          :attr:`ObjectTrack.prompts`
``frames_tracked_per_obj[f]["reverse"]``    :attr:`ObjectTrack.visited_direction` (-1 = reverse)
==========================================  ================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class TrackResult:
    """One object's mask on one frame, at the frame's own resolution.

    ``mask_logits_frame`` is float32 (H, W), > 0 inside. ``object_score_logit`` <= 0 means the model thinks
    the object is absent from this frame (Meta's occlusion score; the mask is then -1024 everywhere).
    """

    frame_index: int
    object_id: int
    mask_logits_frame: np.ndarray
    object_score_logit: float

    @property
    def mask_frame(self) -> np.ndarray:
        """Binary mask (H, W), as Meta's ``mask_logits > 0``."""
        return self.mask_logits_frame > 0


@dataclass
class FrameOutput:
    """The model's output for one object on one frame: what the memory bank holds.

    Tensors keep Meta's shapes with a batch of 1: ``pred_masks`` (1, 1, S/4, S/4) float32 low-resolution
    logits after hole filling, where the step ran, as Meta keeps them; ``obj_ptr`` (1, C);
    ``object_score_logits`` (1, 1); ``maskmem_features`` (1, 64, S/16, S/16) bfloat16 as Meta
    stores it, None until the memory encoder ran (prompted frames are encoded when propagation starts);
    ``maskmem_pos_enc`` the shared positional encodings of the memory.
    """

    pred_masks: Any
    obj_ptr: Any
    object_score_logits: Any
    maskmem_features: Any | None = None
    maskmem_pos_enc: list[Any] | None = None

    def __getitem__(self, name: str) -> Any:
        # Meta's memory attention (SAM2Base._prepare_memory_conditioned_features) reads past outputs as
        # out["maskmem_features"], out["maskmem_pos_enc"], out["obj_ptr"]: this read-only adapter lets it
        # read ours without converting the memory bank on every frame.
        return getattr(self, name)

    @property
    def object_score(self) -> float:
        return float(self.object_score_logits.reshape(-1)[0])


@dataclass
class FramePrompts:
    """An object's prompts on one frame, in model pixels (the frame resized to S x S).

    Either points (a box is its two first points, labels 2 and 3, as SAM 2 was trained) or a mask.
    """

    point_coords_model: Any | None = None  # float32 (1, P, 2), x then y
    point_labels: Any | None = None  # int32 (1, P): 1 positive, 0 negative, 2/3 box corners
    mask_model: Any | None = None  # float32 (1, 1, S, S), 0 or 1


@dataclass
class ObjectTrack:
    """Everything the tracker knows about one object."""

    object_id: int
    prompts: dict[int, FramePrompts] = field(default_factory=dict)
    conditioning: dict[int, FrameOutput] = field(default_factory=dict)
    tracked: dict[int, FrameOutput] = field(default_factory=dict)
    pending_conditioning: dict[int, FrameOutput] = field(default_factory=dict)
    pending_tracked: dict[int, FrameOutput] = field(default_factory=dict)
    visited_direction: dict[int, int] = field(default_factory=dict)

    def memory_bank(self) -> dict[str, dict[int, FrameOutput]]:
        """The two dicts in the layout SAM2Base.track_step expects (views, not copies)."""
        return {"cond_frame_outputs": self.conditioning, "non_cond_frame_outputs": self.tracked}

    def latest_output(self, frame_index: int) -> FrameOutput | None:
        """The most recent output on a frame, looked up in Meta's order (pending first)."""
        for outputs in (self.pending_conditioning, self.pending_tracked, self.conditioning, self.tracked):
            if frame_index in outputs:
                return outputs[frame_index]
        return None

    def conditioning_frames(self) -> list[int]:
        """Frames whose output is a conditioning memory (prompted), including not yet encoded ones."""
        return sorted(set(self.conditioning) | set(self.pending_conditioning))
