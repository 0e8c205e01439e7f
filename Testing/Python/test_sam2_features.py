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


def test_evicts_the_oldest_frames_on_request_and_when_the_budget_shrinks():
    pos_enc = [torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 2, 2)]
    cache = FeatureCache(max_bytes=5 * 256)
    for frame in range(5):
        cache.put(frame, features(frame), pos_enc)
    cache.get(0)  # frame 1 is now the oldest
    assert cache.evict_oldest(2) == 2 and sorted(cache._entries) == [0, 3, 4] and cache.nbytes == 3 * 256
    cache.max_bytes = 2 * 256
    cache.fit_budget()
    assert sorted(cache._entries) == [0, 4] and cache.nbytes == 2 * 256
    assert cache.evict_oldest(5) == 2 and len(cache) == 0 and cache.nbytes == 0


def test_keeps_the_latest_frame_even_over_budget_and_checks_pos_enc_shapes():
    cache = FeatureCache(max_bytes=10)
    cache.put(5, features(5), [torch.zeros(1, 8, 4, 4)])
    cache.put(6, features(6), [torch.zeros(1, 8, 4, 4)])
    assert len(cache) == 1 and 6 in cache
    with pytest.raises(ValueError, match="positional"):
        cache.put(7, features(7), [torch.zeros(1, 8, 8, 8)])
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0 and cache.pos_enc is None


def test_offloaded_frames_are_kept_in_host_memory_and_handed_back_on_their_device(monkeypatch):
    """Stand-ins negate the values on the way to the host and back, so a frame read without its copy
    back would come out negated (this CPU has no second memory to move them to)."""
    import medsegany.models.sam2_features as sam2_features

    moves = []
    monkeypatch.setattr(sam2_features, "to_host", lambda fpn: [-t for t in fpn])
    monkeypatch.setattr(
        sam2_features, "to_device", lambda fpn, device: moves.append(device) or [-t for t in fpn]
    )
    pos_enc = [torch.zeros(1, 8, 4, 4)]
    cache = FeatureCache(max_bytes=2 * 256, offload=True)
    cache.put(0, features(1), pos_enc)
    cache.put(1, features(2), pos_enc)
    assert cache.stored(0)[0][0, 0, 0, 0] == -1  # the host copy
    assert cache.get(0)[0][0, 0, 0, 0] == 1 and moves == [torch.device("cpu")]
    cache.put(2, features(3), pos_enc)  # evicts frame 1, the least recently used, with its device
    assert 1 not in cache and set(cache._devices) == {0, 2} and cache.nbytes == 2 * 256
    cache.offload = False  # frames stored from now on stay where they are
    cache.put(3, features(4), pos_enc)
    assert cache.stored(3)[0][0, 0, 0, 0] == 4 and cache.get(3)[0][0, 0, 0, 0] == 4 and len(moves) == 1
    cache.clear()
    assert not cache._devices


def test_moving_to_host_takes_the_frames_already_cached(monkeypatch):
    import medsegany.models.sam2_features as sam2_features

    monkeypatch.setattr(sam2_features, "to_host", lambda fpn: [-t for t in fpn])
    monkeypatch.setattr(sam2_features, "to_device", lambda fpn, device: [-t for t in fpn])
    pos_enc = [torch.zeros(1, 8, 4, 4)]
    cache = FeatureCache(max_bytes=4 * 256)
    cache.put(0, features(1), pos_enc)
    cache.move_to_host()
    cache.put(1, features(2), pos_enc)
    cache.move_to_host()  # a second call moves nothing twice
    assert cache.offload and [cache.stored(k)[0][0, 0, 0, 0] for k in (0, 1)] == [-1, -2]
    assert [cache.get(k)[0][0, 0, 0, 0] for k in (0, 1)] == [1, 2]
