"""A disk cache of frame embeddings for repeated benchmark runs (the encoder is 95 % of the CPU time).

Only for benchmarks: a wrapper around a SliceModel whose ``embed_frames`` looks up
``<dir>/<model id>/<model fingerprint>/<sha1 of the frame bytes>.pt`` first. Keyed on the frame's bytes:
a change of window or axis cannot hit a stale entry. The fingerprint is the hash of the model's embedding
of a fixed probe frame, so a change of preprocessing (LiteMedSAM's resize became OpenCV's INTER_AREA on
2026-11-29), weights or precision cannot either: keyed on the model id alone, a rerun of the documented
command over an old cache gave the old code's numbers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


class DiskCachedModel:
    def __init__(self, model, folder: Path) -> None:
        self.model = model
        self.model_id = model.model_id
        # a session resamples frames with non-square pixels for it as for the model (medsegany.frame_aspect):
        # the resampled frame's bytes are the key
        self.aspect_preserving_resize = getattr(model, "aspect_preserving_resize", False)
        self.folder = Path(folder) / model.model_id / model_fingerprint(model)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, frame: np.ndarray) -> Path:
        digest = hashlib.sha1(np.ascontiguousarray(frame).tobytes() + str(frame.shape).encode()).hexdigest()
        return self.folder / f"{digest}.pt"

    def embed_frames(self, frames: list[np.ndarray]) -> list:
        import torch

        results: list = [None] * len(frames)
        missing = []
        for position, frame in enumerate(frames):
            path = self._path(frame)
            if path.exists():
                results[position] = torch.load(path, weights_only=False)
            else:
                missing.append(position)
        if missing:
            for position, embedding in zip(missing, self.model.embed_frames([frames[p] for p in missing])):
                results[position] = embedding
                torch.save(embedding, self._path(frames[position]))
        return results

    def predict(self, *args, **kwargs):
        return self.model.predict(*args, **kwargs)


def model_fingerprint(model) -> str:
    """12 hex digits of the hash of ``model``'s embedding of a fixed 48 x 40 probe frame (one encoder call):
    the same for the same preprocessing, weights and precision, and different when any of them changes."""
    import io

    import torch

    rows, cols = np.indices((48, 40))
    probe = ((rows * 7 + cols * 3) % 256).astype(np.uint8)  # a windowed frame's type: a plain ramp
    (embedding,) = model.embed_frames([probe])
    buffer = io.BytesIO()
    torch.save(embedding, buffer)
    return hashlib.sha1(buffer.getvalue()).hexdigest()[:12]
