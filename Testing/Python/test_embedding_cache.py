from __future__ import annotations

import numpy as np
import pytest
from fake_models import ThresholdModel
from medsegany.embedding_cache import FrameEmbeddingCache


def test_frames_are_encoded_once_in_batches_and_evicted_least_recently_used():
    frames = np.arange(10 * 4 * 4, dtype=np.float32).reshape(10, 4, 4)
    model = ThresholdModel()
    cache = FrameEmbeddingCache(model, lambda i: frames[i], 10, max_frames=5, batch_size=3)
    np.testing.assert_array_equal(cache.get(2, ahead=[3, 4, 5]), frames[2])
    assert model.encoded == 3 and 3 in cache and 4 in cache and 5 not in cache
    cache.get(3)
    assert model.encoded == 3
    cache.get(7, ahead=[8, 9, 10])  # 10 is outside the stack: ignored
    assert model.encoded == 6 and 2 not in cache and 3 in cache  # 2 was the least recently used


def test_encode_caches_exactly_the_frames_asked_for_in_one_call():
    frames = np.arange(10 * 4 * 4, dtype=np.float32).reshape(10, 4, 4)
    model = ThresholdModel()
    cache = FrameEmbeddingCache(model, lambda i: frames[i], 10, max_frames=4, batch_size=2)
    cache.encode([6, 1, 6, 8])  # a repeat is encoded once; the batch size is the caller's choice here
    assert model.encoded == 3 and len(cache) == 3 and all(i in cache for i in (6, 1, 8))
    np.testing.assert_array_equal(cache.get(1), frames[1])
    assert model.encoded == 3
    with pytest.raises(IndexError, match=r"frame 10 is outside 0\.\.9"):
        cache.encode([10])
    with pytest.raises(ValueError, match="5 frames in one call exceed the cache's 4"):
        cache.encode([0, 2, 3, 4, 5])
    assert model.encoded == 3 and len(cache) == 3  # refused calls encode nothing


def test_the_heaps_free_pages_are_checked_before_every_encoder_batch(monkeypatch):
    """Between two slices (medsegany.allocator.release_fragments), where a run's memory is checked."""
    from medsegany import embedding_cache

    calls = []
    monkeypatch.setattr(embedding_cache, "release_fragments", lambda: calls.append(1))
    frames = np.zeros((6, 4, 4), np.float32)
    cache = FrameEmbeddingCache(ThresholdModel(), lambda i: frames[i], 6, max_frames=6, batch_size=2)
    cache.get(0, ahead=[1])
    cache.get(1)  # cached: no encoder batch
    cache.encode([2, 3])
    assert len(calls) == 2


def test_offloaded_embeddings_are_kept_in_host_memory_and_used_on_the_models_device(monkeypatch):
    """As in test_sam2_features: negating stand-ins show that every read goes through the copy back."""
    import medsegany.feature_offload as feature_offload

    frames = np.arange(6 * 4 * 4, dtype=np.float32).reshape(6, 4, 4) + 1
    moves = []
    monkeypatch.setattr(feature_offload, "to_host", lambda embedding: -embedding)
    monkeypatch.setattr(feature_offload, "to_device", lambda e, device: moves.append(device) or -e)
    model = ThresholdModel()
    model.device = "cuda:0"
    cache = FrameEmbeddingCache(model, lambda i: frames[i], 6, max_frames=3, batch_size=2, offload=True)
    np.testing.assert_array_equal(cache.get(1, ahead=[2]), frames[1])
    np.testing.assert_array_equal(cache._cache[2], -frames[2])  # held in host memory
    np.testing.assert_array_equal(cache.get(2), frames[2])
    assert moves == ["cuda:0", "cuda:0"] and model.encoded == 2


def test_a_frame_of_a_batch_holds_only_its_own_memory_once_the_others_are_evicted():
    """LiteMedSAM and SAM return each frame as a view into the batch's features: cached as such, a kept
    frame held its whole batch (on a GPU 4 frames), and the cache held more than the memory plan counted."""
    torch = pytest.importorskip("torch")
    from medsegany.models.litemedsam import LiteMedSamEmbedding

    class BatchViewModel:
        device = "cpu"

        def embed_frames(self, frames):
            features = torch.stack([torch.full((8, 4, 4), float(frame[0, 0])) for frame in frames])
            features = features.contiguous(memory_format=torch.channels_last)
            return [LiteMedSamEmbedding(features[i : i + 1], f.shape, f.shape) for i, f in enumerate(frames)]

    frames = np.arange(60, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32)
    cache = FrameEmbeddingCache(BatchViewModel(), lambda i: frames[i], 60, max_frames=16, batch_size=4)
    for index in range(32):  # a propagation up from slice 0, encoded 4 slices at a time
        cache.get(index, ahead=range(index + 1, index + 4))
    for index in (16, 20, 24, 28):  # corrections on one slice of each of the 4 batches cached
        cache.get(index)
    for index in range(32, 44):  # the propagation goes on: the other 12 slices of those batches go
        cache.get(index, ahead=range(index + 1, index + 4))

    kept = {index: cache.get(index).features for index in (16, 20, 24, 28, 32, 43)}
    frame_bytes = 8 * 4 * 4 * 4
    held = {f.untyped_storage().data_ptr(): f.untyped_storage().nbytes() for f in kept.values()}
    assert sum(held.values()) == len(kept) * frame_bytes  # before: 4 whole batches for 16, 20, 24, 28
    for index, features in kept.items():
        assert features.shape == (1, 8, 4, 4) and bool((features == index).all())
        assert features.is_contiguous(memory_format=torch.channels_last)  # the layout the model gave
