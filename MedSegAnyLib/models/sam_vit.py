"""SAM and MedSAM (ViT-B/L/H image encoder, 1024 px) as 2D slice models, on Meta's ``segment-anything``.

Each is fed exactly as it was trained:

- **SAM** (Meta, ``SamPredictor``): the grey frame copied to 3 channels (0..255), longest side resized to
  1024 with ``ResizeLongestSide.apply_image`` (PIL, on uint8), normalised with SAM's pixel mean/std on the
  0..255 scale and zero-padded bottom/right to 1024 x 1024 (``Sam.preprocess``). Prompts are scaled with
  ``apply_coords``/``apply_boxes``; logits are upscaled, cropped and resized back by ``postprocess_masks``.
- **MedSAM** (bowang-lab, ``MedSAM_Inference.py`` and its training pre-processing): the 3-channel frame
  resized to 1024 x 1024 ignoring the aspect ratio, with skimage's ``resize(order=3, preserve_range=True,
  anti_aliasing=True)`` (reproduced here on scipy, which skimage itself calls: cubic spline, grid mode,
  mirrored edges, Gaussian pre-filter when shrinking, output clipped to the input range), cast to uint8,
  min-max scaled to [0, 1] with no mean/std; boxes scaled by 1024 / (W, H); the sigmoid of the 256 px
  logits resized bilinearly to (H, W) (returned as its logits: > 0 where MedSAM's probability is above
  0.5).

The image encoder runs once per frame (the session caches embeddings), under bf16 autocast where the
precision is bf16 (see medsegany.models.compute).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from .base import FramePrediction
from .compute import autocast_context

IMAGE_SIZE = 1024
PREPROCESSINGS = ("sam", "medsam")


def _import_segment_anything() -> Any:
    try:
        import segment_anything
    except ImportError:
        raise ModelError(
            "SAM and MedSAM need Meta's segment-anything package, which is not installed",
            "run `pip install segment-anything`",
        ) from None
    return segment_anything


def build_sam_vit(registry_name: str = "vit_b") -> Any:
    """The architecture with freshly initialised weights (``torch.manual_seed`` decides them), eval mode."""
    segment_anything = _import_segment_anything()
    if registry_name not in ("vit_b", "vit_l", "vit_h"):
        raise ModelError(f"unknown SAM architecture {registry_name!r}", "use vit_b, vit_l or vit_h")
    # checkpoint=None: segment-anything would otherwise torch.load without weights_only
    return segment_anything.sam_model_registry[registry_name](checkpoint=None).eval()


def skimage_resize_order3(image: np.ndarray, output_shape: tuple[int, int]) -> np.ndarray:
    """``skimage.transform.resize(image, output_shape, order=3, preserve_range=True, anti_aliasing=True)``
    (MedSAM's call) for a 2D image, without scikit-image (float64 result). skimage's default ``mode`` is
    "reflect", ndimage's "mirror": the image continues in its mirror image beyond its edges, for the
    Gaussian pre-filter and for the spline (zeros there darkened the border rows and columns)."""
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float64)
    factors = np.asarray(image.shape, dtype=float) / np.asarray(output_shape, dtype=float)
    low, high = float(image.min()), float(image.max())
    if np.any(factors > 1):
        # skimage's default anti-aliasing sigma: (factor - 1) / 2 on the shrunk axes only
        sigma = np.maximum(0.0, (factors - 1) / 2)
        image = ndimage.gaussian_filter(image, sigma, mode="mirror")
    resized = ndimage.zoom(image, 1.0 / factors, order=3, mode="mirror", grid_mode=True)
    return np.clip(resized, low, high)  # skimage clips to the input's range (clip=True)


def medsam_input(frame: np.ndarray) -> np.ndarray:
    """A frame as MedSAM's network input (3, 1024, 1024) float32 in [0, 1]."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.clip(np.asarray(frame, dtype=np.float64), 0, 255)
    resized = skimage_resize_order3(frame, (IMAGE_SIZE, IMAGE_SIZE)).astype(np.uint8)
    low, high = float(resized.min()), float(resized.max())
    normalised = (resized.astype(np.float64) - low) / max(high - low, 1e-8)
    return np.broadcast_to(normalised.astype(np.float32), (3, IMAGE_SIZE, IMAGE_SIZE))


def medsam_upsampled_logits(low_res: Any, frame_shape: tuple[int, int]) -> Any:
    """MedSAM's (N, 1, 256, 256) logits at the frame's (H, W), as logits of MedSAM's own probabilities.

    ``medsam_inference`` resizes the sigmoid, not the logits, and thresholds it at 0.5: between a pixel
    far outside and one barely inside, the resized logit can be positive where the resized probability
    is below 0.5, so resizing logits moved the boundary (5-28 pixels of a random-weight ViT-B's mask on
    300 x 180 to 700 x 500 frames). In float64 on the CPU (256 x 256: little work; MPS has no float64),
    so the logits stay finite up to about +-34 and their sign is exactly the probability against 0.5."""
    import torch
    from torch.nn.functional import interpolate

    probability = torch.sigmoid(low_res.detach().to("cpu", torch.float64))
    upsampled = interpolate(probability, size=tuple(frame_shape), mode="bilinear", align_corners=False)
    return torch.logit(upsampled, eps=1e-15)


@dataclass(frozen=True)
class SamVitEmbedding:
    features: Any  # torch.Tensor (1, 256, 64, 64) on the model's device
    frame_shape: tuple[int, int]  # (H, W) of the frame
    input_shape: tuple[int, int]  # (h, w) of the resized frame inside the 1024 x 1024 input


class SamVitModel:
    """SAM or MedSAM (``preprocessing`` "sam" or "medsam") as a :class:`~medsegany.models.base.SliceModel`."""

    image_size = IMAGE_SIZE

    def __init__(
        self,
        net: Any,
        preprocessing: str,
        device: str = "cpu",
        model_id: str = "sam_vit_b",
        precision: str = "auto",
    ) -> None:
        import torch

        from .compute import resolve_precision

        if preprocessing not in PREPROCESSINGS:
            raise ModelError(f"unknown preprocessing {preprocessing!r}", f"use one of {PREPROCESSINGS}")
        self.net = net.eval().to(device)
        self.preprocessing = preprocessing
        self.device = str(device)
        self.model_id = model_id
        self._torch = torch
        self.precision = resolve_precision(self.device, precision)  # bf16 autocast or float32
        # SAM's resize keeps the aspect (frames with non-square pixels reach it as square ones, see
        # medsegany.frame_aspect); MedSAM's makes every frame 1024 x 1024, whatever a resample did before
        self.aspect_preserving_resize = preprocessing == "sam"

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Path,
        registry_name: str,
        preprocessing: str,
        device: str = "cpu",
        model_id: str | None = None,
        state_key: str | None = None,
        precision: str = "auto",
    ) -> SamVitModel:
        """Load the publisher's file (a plain state dict for SAM and MedSAM) with ``weights_only=True``."""
        from .weight_store import load_state_dict

        # a user's fine-tuned file may wrap the weights: {"model": ..., "optimizer": ..., "epoch": ...}
        state = load_state_dict(checkpoint, key=state_key, either_layout=True)
        net = build_sam_vit(registry_name)
        try:
            result = net.load_state_dict(state, strict=False)
        except RuntimeError as error:
            detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), "")
            raise ModelError(
                f"checkpoint {Path(checkpoint).name} does not fit SAM {registry_name} ({detail[:100]})",
                "pick the config that matches this checkpoint (vit_b, vit_l or vit_h)",
            ) from None
        if result.missing_keys or result.unexpected_keys:
            raise ModelError(
                f"checkpoint {Path(checkpoint).name} is not a SAM {registry_name} checkpoint "
                f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected keys)",
                "pick the config that matches this checkpoint (vit_b, vit_l or vit_h)",
            )
        model_id = model_id or f"sam_{registry_name}"
        return cls(net, preprocessing, device=device, model_id=model_id, precision=precision)

    # ------------------------------------------------------------------ image side
    def _sam_input(self, frame: np.ndarray) -> tuple[Any, tuple[int, int]]:
        from segment_anything.utils.transforms import ResizeLongestSide

        torch = self._torch
        frame = np.asarray(frame)
        if frame.dtype != np.uint8:
            frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
        rgb = np.repeat(frame[:, :, None], 3, axis=2)
        resized = ResizeLongestSide(IMAGE_SIZE).apply_image(rgb)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None].float()
        return self.net.preprocess(tensor)[0], tuple(resized.shape[:2])

    def embed_frames(self, frames: list[np.ndarray]) -> list[SamVitEmbedding]:
        """Image embeddings of a batch of frames (the expensive part, once per frame)."""
        torch = self._torch
        if not frames:
            return []
        inputs, shapes = [], []
        for frame in frames:
            if self.preprocessing == "sam":
                tensor, input_shape = self._sam_input(frame)
            else:
                tensor = torch.from_numpy(np.ascontiguousarray(medsam_input(frame))).to(self.device)
                input_shape = (IMAGE_SIZE, IMAGE_SIZE)
            inputs.append(tensor)
            shapes.append(input_shape)
        batch = torch.stack(inputs)
        with torch.inference_mode(), autocast_context(self.device, self.precision):
            features = self.net.image_encoder(batch).float()
        return [
            SamVitEmbedding(features[i : i + 1], tuple(np.asarray(frame).shape[:2]), shapes[i])
            for i, frame in enumerate(frames)
        ]

    # ------------------------------------------------------------------ prompt side
    def _scale_xy(self, points_xy: np.ndarray, embedding: SamVitEmbedding) -> np.ndarray:
        height, width = embedding.frame_shape
        points_xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        if self.preprocessing == "sam":
            new_h, new_w = embedding.input_shape  # ResizeLongestSide.apply_coords
            return points_xy * np.array([new_w / width, new_h / height])
        return points_xy / np.array([width, height]) * IMAGE_SIZE  # MedSAM: box / [W, H] * 1024

    def predict(
        self,
        embedding: SamVitEmbedding,
        box_frame_xyxy: np.ndarray | None = None,
        points_frame_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
    ) -> FramePrediction:
        """Decode one mask; logits at the frame's own resolution (> 0 inside)."""
        torch = self._torch
        boxes = points = None
        if box_frame_xyxy is not None:
            box = self._scale_xy(np.asarray(box_frame_xyxy).reshape(2, 2), embedding).reshape(1, 1, 4)
            boxes = torch.as_tensor(box, dtype=torch.float32, device=self.device)
        has_points = points_frame_xy is not None and len(points_frame_xy)
        if has_points:
            coords = self._scale_xy(points_frame_xy, embedding)[None]
            labels = np.asarray(point_labels, dtype=np.int64).reshape(1, -1)
            points = (
                torch.as_tensor(coords, dtype=torch.float32, device=self.device),
                torch.as_tensor(labels, device=self.device),
            )
        if boxes is None and points is None:
            raise ValueError("predict needs a box or points")
        # SAM's advice: a lone click is ambiguous, take the best of 3 masks; a box (or several clicks) is not
        multimask = boxes is None and len(points_frame_xy) == 1
        net = self.net
        with torch.inference_mode():
            sparse, dense = net.prompt_encoder(points=points, boxes=boxes, masks=None)
            low_res, iou = net.mask_decoder(
                image_embeddings=embedding.features,
                image_pe=net.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
            best = int(torch.argmax(iou[0])) if multimask else 0
            low_res = low_res[:, best : best + 1].float()
            if self.preprocessing == "sam":
                logits = net.postprocess_masks(low_res, embedding.input_shape, embedding.frame_shape)
            else:
                logits = medsam_upsampled_logits(low_res, embedding.frame_shape)
        return FramePrediction(logits[0, 0].cpu().numpy().astype(np.float32), float(iou[0, best]))
