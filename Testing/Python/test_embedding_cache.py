from __future__ import annotations

import numpy as np
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
