"""A bounded cache of SAM 2 image features, one entry per frame, least recently used evicted first.

What one frame costs: the three FPN levels after Meta's ``forward_image`` (32 x S/4², 64 x S/8²,
256 x S/16² values) = 4.2 MB at S = 512 and 16.8 MB at S = 1024 in float32. Under bf16 autocast the
first two levels are bf16 but the third stays float32 (Meta's neck upsamples in float32 and adds it in):
2.6 MB at 512 px (see :func:`fpn_feature_bytes`). The positional encodings (256 channels on every level,
4x more) depend only on the feature shape, so one copy is kept for all frames.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ..feature_offload import to_device, to_host


def fpn_feature_bytes(image_size: int, bf16: bool) -> int:
    """Bytes of one frame's cached FPN features at ``image_size`` px (float32, or bf16 autocast)."""
    high = 32 * (image_size // 4) ** 2 + 64 * (image_size // 8) ** 2  # bf16 under autocast
    low = 256 * (image_size // 16) ** 2  # float32 either way: the top-down sum is computed in float32
    return high * (2 if bf16 else 4) + low * 4


def tensor_bytes(tensors: list[Any]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class FeatureCache:
    """Frame index -> FPN feature maps (each (1, C, h, w)), bounded by ``max_bytes``.

    ``offload``: frames stored from then on are kept in host memory and :meth:`get` hands back copies
    on the device they came from (:mod:`medsegany.feature_offload`; the memory plan's choice for a GPU
    too small for every frame's features). The positional encodings, one copy for all frames, stay.
    """

    def __init__(self, max_bytes: int, offload: bool = False) -> None:
        self.max_bytes = int(max_bytes)
        self.offload = bool(offload)
        self._entries: OrderedDict[int, list[Any]] = OrderedDict()
        self._devices: dict[int, Any] = {}  # frame index -> the device its features came from
        self._bytes = 0
        self.pos_enc: list[Any] | None = None  # shared by all frames

    def __contains__(self, frame_index: int) -> bool:
        return frame_index in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, frame_index: int) -> list[Any] | None:
        fpn = self._entries.get(frame_index)
        if fpn is None:
            return None
        self._entries.move_to_end(frame_index)
        device = self._devices.get(frame_index)
        return fpn if device is None else to_device(fpn, device)

    def move_to_host(self) -> None:
        """Offload from now on, and move the frames cached on a device to host memory too."""
        self.offload = True
        for frame_index, fpn in list(self._entries.items()):
            if frame_index not in self._devices:
                self._entries[frame_index] = self._to_host(frame_index, fpn)

    def _to_host(self, frame_index: int, fpn: list[Any]) -> list[Any]:
        """The frame's features in host memory, remembering the device they go back to."""
        self._devices[frame_index] = fpn[0].device
        return to_host(fpn)

    def stored(self, frame_index: int) -> list[Any] | None:
        """The frame's features as the cache holds them (in host memory when offloaded)."""
        return self._entries.get(frame_index)

    def put(self, frame_index: int, fpn: list[Any], pos_enc: list[Any]) -> None:
        """Store one frame's features; evicts the least recently used frames beyond the budget.

        The most recent frame is always kept, even alone over budget (Meta keeps exactly one).
        """
        if self.pos_enc is None:
            self.pos_enc = pos_enc
        elif [tuple(p.shape) for p in pos_enc] != [tuple(p.shape) for p in self.pos_enc]:
            raise ValueError("positional encodings changed shape between frames")
        if frame_index in self._entries:
            self._bytes -= tensor_bytes(self._entries.pop(frame_index))
            self._devices.pop(frame_index, None)
        if self.offload:  # (on a CPU both copies are no-ops)
            fpn = self._to_host(frame_index, fpn)
        self._entries[frame_index] = fpn
        self._bytes += tensor_bytes(fpn)
        self.fit_budget()

    def fit_budget(self) -> None:
        """Evict the least recently used frames beyond ``max_bytes``, keeping at least the newest."""
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            self._evict_oldest()

    def evict_oldest(self, count: int) -> int:
        """Evict up to ``count`` least recently used frames (the features of another axis need the
        room: medsegany.session); returns how many went."""
        evicted = 0
        while evicted < count and self._entries:
            self._evict_oldest()
            evicted += 1
        return evicted

    def _evict_oldest(self) -> None:
        evicted_index, evicted = self._entries.popitem(last=False)
        self._devices.pop(evicted_index, None)
        self._bytes -= tensor_bytes(evicted)

    def clear(self) -> None:
        self._entries.clear()
        self._devices.clear()
        self._bytes = 0
        self.pos_enc = None
