"""Image embeddings of frames, computed once per frame in batches and kept in a bounded LRU cache.

The encoder is the expensive part of a 2D SAM-family model (LiteMedSAM: ~0.7-1.4 s per 512 x 512 frame
on a 2-core CPU, the decoder ~30 ms), and its output does not depend on the prompt, so every prompt,
correction and re-propagation on a frame reuses it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .allocator import release_fragments
from .models.base import SliceModel


class FrameEmbeddingCache:
    """Embeddings of one slice stack (one volume axis) keyed by frame index."""

    def __init__(
        self,
        model: SliceModel,
        frame_at: Callable[[int], np.ndarray],
        frame_count: int,
        max_frames: int = 256,
        batch_size: int = 4,
        offload: bool = False,
    ) -> None:
        self.model = model
        # embeddings kept in host memory, copied to the model's device when used (the memory plan's
        # choice when a GPU cannot hold them all; medsegany.feature_offload)
        self.offload = bool(offload)
        self.frame_at = frame_at
        self.frame_count = frame_count
        self.max_frames = max(1, max_frames)
        self.batch_size = max(1, min(batch_size, self.max_frames))
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self.encoded_frames = 0  # how many frames went through the encoder (for tests and benchmarks)

    def limit(self, max_frames: int, batch_size: int) -> None:
        """Hold at most ``max_frames`` frames, encoded ``batch_size`` at a time from now on (evicting the
        least recently used beyond)."""
        self.max_frames = max(1, max_frames)
        self.batch_size = max(1, min(batch_size, self.max_frames))
        self.evict_oldest(len(self._cache) - self.max_frames)

    def evict_oldest(self, count: int) -> int:
        """Evict up to ``count`` least recently used frames; returns how many went."""
        evicted = 0
        while evicted < count and self._cache:
            self._cache.popitem(last=False)
            evicted += 1
        return evicted

    def __contains__(self, index: int) -> bool:
        return index in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, index: int, ahead: Iterable[int] = ()) -> Any:
        """The embedding of frame ``index``; missing frames among ``ahead`` are encoded in the same batch."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._on_device(self._cache[index])
        batch = [index]
        for other in ahead:
            if len(batch) >= self.batch_size:
                break
            if 0 <= other < self.frame_count and other not in self._cache and other not in batch:
                batch.append(other)
        self.encode(batch)
        return self._on_device(self._cache[index])

    def _on_device(self, embedding: Any) -> Any:
        if not self.offload:
            return embedding
        from .feature_offload import to_device

        return to_device(embedding, getattr(self.model, "device", "cpu"))

    def move_to_host(self) -> None:
        """Keep the embeddings in host memory from now on, those cached included."""
        if self.offload:
            return
        from .feature_offload import to_host

        self.offload = True
        for index in list(self._cache):
            self._cache[index] = to_host(self._cache[index])

    def encode(self, indices: list[int]) -> None:
        """Encode these frames in one encoder call and cache them (the least recently used frames beyond
        ``max_frames`` are evicted, never these)."""
        batch = list(dict.fromkeys(indices))
        if len(batch) > self.max_frames:
            raise ValueError(f"{len(batch)} frames in one call exceed the cache's {self.max_frames}")
        for i in batch:
            if not 0 <= i < self.frame_count:
                raise IndexError(f"frame {i} is outside 0..{self.frame_count - 1}")
        release_fragments()  # between two slices: the heap's holes go back once they pile up (allocator)
        embeddings = self.model.embed_frames([self.frame_at(i) for i in batch])
        self.encoded_frames += len(batch)
        if len(batch) > 1:  # each frame a view into the batch's tensor: evicting it would free nothing
            from .feature_offload import own_storage

            embeddings = [own_storage(embedding) for embedding in embeddings]
        if self.offload:
            from .feature_offload import to_host

            embeddings = [to_host(embedding) for embedding in embeddings]
        for i, embedding in zip(batch, embeddings):
            self._cache[i] = embedding
            self._cache.move_to_end(i)
        while len(self._cache) > self.max_frames:
            self._cache.popitem(last=False)
