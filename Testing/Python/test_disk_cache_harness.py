"""benchmarks/disk_cache.py: an embedding cached by one model (its preprocessing, weights, precision) is
never served to another with the same model id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


class Encoder:
    """A model whose embedding is its frame times ``gain`` (another gain: another preprocessing)."""

    model_id = "encoder"

    def __init__(self, gain: float) -> None:
        self.gain, self.calls = gain, 0

    def embed_frames(self, frames):
        self.calls += 1
        return [torch.from_numpy(np.asarray(frame, dtype=np.float32) * self.gain) for frame in frames]


def test_a_changed_model_misses_the_cache_and_the_same_one_hits_it(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from disk_cache import DiskCachedModel, model_fingerprint

    frame = np.arange(12, dtype=np.uint8).reshape(3, 4)
    old = DiskCachedModel(Encoder(1.0), tmp_path)
    (cached,) = old.embed_frames([frame])
    assert (
        model_fingerprint(Encoder(1.0)) == model_fingerprint(Encoder(1.0)) != model_fingerprint(Encoder(2.0))
    )

    again = Encoder(1.0)
    (hit,) = DiskCachedModel(again, tmp_path).embed_frames([frame])
    assert again.calls == 1 and torch.equal(hit, cached)  # only the fingerprint's probe was encoded

    changed = Encoder(2.0)  # same model id, other preprocessing: before, it got the old embedding
    (fresh,) = DiskCachedModel(changed, tmp_path).embed_frames([frame])
    assert changed.calls == 2 and torch.equal(fresh, cached * 2)


def test_frames_resampled_to_square_pixels_and_frames_as_given_never_share_an_entry(tmp_path, monkeypatch):
    """A J frame of 0.8 mm pixels and 2 mm slices is 30 x 48 pixels as given, 75 x 48 in square pixels:
    the benchmark's cache keeps both, and each setting gets its own frames' features back."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from disk_cache import DiskCachedModel
    from fake_models import ThresholdModel
    from medsegany.prompts import make_slice_prompts
    from medsegany.session import SegmentationSession
    from medsegany.volume import Volume

    k, j, i = np.indices((30, 40, 48))
    voxels = np.where(((k - 14) / 6.5) ** 2 + ((j - 20) / 9) ** 2 + ((i - 24) / 11) ** 2 <= 1, 200.0, 0.0)
    volume = Volume(voxels.astype(np.float32), np.diag([0.8, 0.8, 2.0, 1.0]), name="ellipsoid")
    prompts = make_slice_prompts(volume, box_ijk=(13, 20, 8, 35, 20, 20), axis=1)

    def frame_shape(square: bool) -> tuple[tuple[int, int], int]:
        inner = ThresholdModel()
        inner.aspect_preserving_resize = True  # as LiteMedSAM's resize
        model = DiskCachedModel(inner, tmp_path)
        session = SegmentationSession(volume, model, intensity=(0.0, 255.0), square_pixels=square)
        session.add_prompts(session.add_object(), prompts)
        embedding = session.embeddings(1).get(20)
        features = getattr(embedding, "inner", embedding)  # SquarePixelEmbedding around the inner one
        return features.shape, inner.encoded - 1  # less the fingerprint's probe frame

    assert frame_shape(True) == ((75, 48), 1)
    assert frame_shape(False) == ((30, 48), 1)  # a miss: not the resampled frame's features
    assert frame_shape(True) == ((75, 48), 0) and frame_shape(False) == ((30, 48), 0)  # both kept
