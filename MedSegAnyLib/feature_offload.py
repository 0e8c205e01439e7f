"""Image features kept in host memory while the GPU tracks: the memory plan's ``offload_features``.

Why: on a GPU too small for every slice's features, keeping them in host memory keeps the rule that a
slice is encoded once per session (corrections and other objects reuse it), where caching fewer slices
on the GPU would encode the evicted ones again. The price is one host-to-device copy per slice used:
2.5 MiB for SAM 2.1 tiny at 512 px under bf16 (about 0.1 ms over PCIe 4 at 25 GB/s, against a 2-3 ms
tracking step on an H200), 2 MiB for LiteMedSAM. The host copies are page-locked on CUDA, so the copy
back is asynchronous (PyTorch's pinned-memory allocator keeps a block alive until copies from it end).

Works on any value an encoder returns: a tensor, a list or tuple of them, or a dataclass with tensor
fields (LiteMedSAM's and SAM's embeddings); everything else is left as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def to_host(value: Any) -> Any:
    """``value`` with every tensor copied to host memory (page-locked when it comes from CUDA)."""
    return _map_tensors(value, _tensor_to_host)


def to_device(value: Any, device: Any) -> Any:
    """``value`` with every tensor on ``device`` (tensors already there are returned as they are)."""
    return _map_tensors(value, lambda tensor: tensor.to(device, non_blocking=True))


def own_storage(value: Any) -> Any:
    """``value`` with every tensor that is a view into a larger one (one frame of an encoder batch:
    ``features[i : i + 1]``) copied into memory of its own, in the same layout; the others as they are.

    Why: a cached view keeps the whole batch's memory. Evicting the other frames of its batch then freed
    nothing, so a feature cache holding ``max_frames`` frames could hold up to a batch's worth of memory
    for each (4 on a GPU for LiteMedSAM and SAM), beyond what the memory plan counted.
    """
    return _map_tensors(value, _tensor_with_own_storage)


def _tensor_with_own_storage(tensor: Any) -> Any:
    if tensor.untyped_storage().nbytes() <= tensor.numel() * tensor.element_size():
        return tensor
    return tensor.clone()  # preserve_format: a dense view keeps its strides (see host_buffer_like)


def _tensor_to_host(tensor: Any) -> Any:
    if tensor.device.type == "cpu":
        return tensor
    if tensor.device.type != "cuda":
        return tensor.to("cpu")
    host = host_buffer_like(tensor, pin_memory=True)
    # a blocking copy on the current stream: the host waits for that stream's work, so features made on
    # another stream (the encoder's own) must be waited for there first (Sam2Tracker.offload_features)
    host.copy_(tensor)
    return host


def host_buffer_like(tensor: Any, pin_memory: bool) -> Any:
    """An empty host tensor with the shape, dtype and memory layout (strides) of ``tensor``.

    Why the layout: SAM 2's FPN features are channels-last (its neck's convolutions get the trunk's
    permuted output). A contiguous host copy came back to the GPU in the other layout, where the mask
    decoder's and memory encoder's convolutions pick other kernels: on an H200 (2026-11-28) the masks of
    offloaded features then differed from those of features kept on the GPU in most logits (by up to
    0.07), where the same layout gives the same bits.
    """
    import torch

    # preserve_format: the strides of a dense tensor, a contiguous buffer for any other
    return torch.empty_like(tensor, device="cpu", pin_memory=pin_memory)


def _map_tensors(value: Any, convert: Any) -> Any:
    if hasattr(value, "untyped_storage") and hasattr(value, "device"):  # a torch.Tensor
        return convert(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(item, convert) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [field.name for field in dataclasses.fields(value) if field.init]
        return dataclasses.replace(
            value, **{name: _map_tensors(getattr(value, name), convert) for name in names}
        )
    return value
