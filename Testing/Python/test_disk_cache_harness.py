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
