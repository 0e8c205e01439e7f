"""The bounded least-recently-used cache of SAM 2 image features."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from medsegany.models.sam2_features import FeatureCache  # noqa: E402


def features(value: float) -> list:
    # 2 x 32 float32 values = 256 bytes
    return [torch.full((1, 2, 4, 4), float(value)), torch.full((1, 2, 4, 4), float(value))]


def test_evicts_least_recently_used_beyond_budget():
    pos_enc = [torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 2, 2)]
    cache = FeatureCache(max_bytes=3 * 256)
    for frame in range(3):
        cache.put(frame, features(frame), pos_enc)
    assert len(cache) == 3 and cache.nbytes == 3 * 256
    assert cache.get(0)[0][0, 0, 0, 0] == 0  # touching frame 0 makes frame 1 the oldest
    cache.put(3, features(3), pos_enc)
    assert 1 not in cache and all(frame in cache for frame in (0, 2, 3))
    assert cache.nbytes == 3 * 256 and cache.pos_enc is pos_enc
    cache.put(2, features(20), pos_enc)  # replacing an entry does not count it twice
    assert cache.nbytes == 3 * 256 and cache.get(2)[1][0, 0, 0, 0] == 20


def test_keeps_the_latest_frame_even_over_budget_and_checks_pos_enc_shapes():
    cache = FeatureCache(max_bytes=10)
    cache.put(5, features(5), [torch.zeros(1, 8, 4, 4)])
    cache.put(6, features(6), [torch.zeros(1, 8, 4, 4)])
    assert len(cache) == 1 and 6 in cache
    with pytest.raises(ValueError, match="positional"):
        cache.put(7, features(7), [torch.zeros(1, 8, 8, 8)])
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0 and cache.pos_enc is None
