"""The reference runs of the speed benchmark: Meta's ``SAM2VideoPredictor`` driven as our peers drive it.

- reference A (``source="jpeg"``): every slice written as a JPEG file into a folder (quality 95, the
  default of OpenCV's ``imwrite`` that most peers use), ``init_state`` on that folder, a box per object on
  the key slice (``add_new_points_or_box``), ``propagate_in_video`` forward then in reverse;
- reference B (``source="memory"``): the same predictor fed the in-memory slices: Meta's
  ``load_video_frames`` is replaced, for the duration of the call, by a function returning the frames
  preprocessed in memory (:func:`medsegany.models.sam2_frames.preprocess_frames`, the tensor layout Meta
  builds from its JPEGs), so only the predictor's own loop remains.

Both take the model (shared with MedSegAny's path: same weights), the windowed uint8 slices, the prompts
and a phase timer; on CUDA they run under bf16 autocast as Meta's notebooks do. The optional correction
is a positive and a negative click on one slice after the full propagation, then ``propagate_in_video``
from there forward (Meta's way to re-propagate a correction).
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

JPEG_QUALITY = 95


@dataclass(frozen=True)
class ObjectPrompt:
    """One object's box on its key slice, frame pixels (x = column, y = row)."""

    object_id: int
    frame_index: int
    box_frame_xyxy: tuple[float, float, float, float]


@dataclass(frozen=True)
class Correction:
    """Clicks (frame x, y; label 1 inside, 0 outside) on ``frame_index`` for ``object_id`` after the full
    propagation (MedSegAny's session refuses a lone negative click, so the benchmark sends a positive
    and a negative one to every path)."""

    object_id: int
    frame_index: int
    points_frame_xy: tuple[tuple[float, float], ...]
    point_labels: tuple[int, ...]


def write_jpeg_folder(frames_nhw: np.ndarray, folder: Path, quality: int = JPEG_QUALITY) -> list[Path]:
    """Write each uint8 slice as ``<index>.jpg`` (grey copied to RGB), the folder layout Meta reads."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, frame in enumerate(frames_nhw):
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(np.ascontiguousarray(frame), mode="L").convert("RGB").save(path, quality=quality)
        paths.append(path)
    return paths


@contextlib.contextmanager
def in_memory_frames(frames_nhw: np.ndarray, image_size: int, device: Any) -> Iterator[None]:
    """While inside, Meta's predictor loads ``frames_nhw`` (preprocessed in memory) instead of JPEG files."""
    import sam2.sam2_video_predictor as video_predictor
    from medsegany.models.sam2_frames import preprocess_frames

    original = video_predictor.load_video_frames
    height, width = frames_nhw.shape[1:]

    def load_in_memory(**_: Any):
        return preprocess_frames(frames_nhw, image_size, device), height, width

    video_predictor.load_video_frames = load_in_memory
    try:
        yield
    finally:
        video_predictor.load_video_frames = original


def _autocast(device: Any) -> contextlib.AbstractContextManager:
    import torch

    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_meta_reference(
    model: Any,
    frames_nhw: np.ndarray,
    prompts: list[ObjectPrompt],
    timer: Callable[[str], contextlib.AbstractContextManager],
    source: str = "jpeg",
    correction: Correction | None = None,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Run Meta's predictor on the slices; returns {"slices": frames with a result per pass, "frames": N}.

    ``timer(name)`` times the phases: "frames" (JPEG writing, A only), "load" (``init_state``), "prompt",
    "propagation" (forward then reverse), "correction_mask", "correction_propagation".
    """
    if source not in ("jpeg", "memory"):
        raise ValueError(f"source must be 'jpeg' or 'memory', got {source!r}")
    device = model.device
    key = prompts[0].frame_index
    visited = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        # Meta warns once per frame that its CUDA hole-filling extension is missing on CPU
        warnings.simplefilter("ignore")
        if source == "jpeg":
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=workdir, prefix="jpeg_")))
            with timer("frames"):
                write_jpeg_folder(frames_nhw, folder)
            video_path = str(folder)
        else:
            stack.enter_context(in_memory_frames(frames_nhw, model.image_size, device))
            video_path = "in-memory slices"
        stack.enter_context(_autocast(device))
        with timer("load"):
            state = model.init_state(video_path=video_path)
        with timer("prompt"):
            for prompt in prompts:
                model.add_new_points_or_box(
                    state,
                    frame_idx=prompt.frame_index,
                    obj_id=prompt.object_id,
                    box=np.asarray(prompt.box_frame_xyxy, np.float32),
                )
        with timer("propagation"):
            for reverse in (False, True):
                for _, _, logits in model.propagate_in_video(state, start_frame_idx=key, reverse=reverse):
                    masks = (logits > 0).cpu().numpy()  # what a caller does with each frame
                    visited += int(masks.shape[0] > 0)
        if correction is not None:
            with timer("correction_mask"):
                _, _, logits = model.add_new_points_or_box(
                    state,
                    frame_idx=correction.frame_index,
                    obj_id=correction.object_id,
                    points=np.asarray(correction.points_frame_xy, np.float32),
                    labels=np.asarray(correction.point_labels, np.int32),
                )
                (logits > 0).cpu().numpy()
            with timer("correction_propagation"):
                for _, _, logits in model.propagate_in_video(state, start_frame_idx=correction.frame_index):
                    (logits > 0).cpu().numpy()
        model.reset_state(state)
        del state
    # the key slice is yielded by both passes, as Meta does
    return {"slices": visited - 1, "frames": len(frames_nhw)}
