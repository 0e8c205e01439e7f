"""TinyViT's wide convolution blocks in strips of rows: activations small enough for a thread's heap.

Why: LiteMedSAM's first stage is two MBConv blocks at 256 x 256 pixels that expand 64 channels to 256 (a
1 x 1 convolution, a 3 x 3 depthwise one, a 1 x 1 back to 64). In float32 each of them makes two
activations of 64 MiB a slice. glibc serves every thread but the main one from heaps of at most 64 MiB
(``HEAP_MAX_SIZE``), so on Slicer's model thread (:mod:`medsegany.slicer_worker`) such a block cannot be
kept from slice to slice, whatever :mod:`medsegany.allocator` asks of glibc: it is mapped, faulted in
page by page and unmapped at every slice.

In strips of about 16 MiB of expanded activation (4 strips of 64 rows in float32, 2 of 128 under bf16),
each with one extra row above and below for the 3 x 3 convolution (64 + 2 rows: 16.5 MiB), every block
fits in a thread's heap. Each output pixel is computed from the same inputs by the same operations; the
convolutions may still pick other kernels for other shapes (1e-7 apart in a small channels-last block),
but LiteMedSAM's features were bitwise the same in every run below, compiled and eager. On the 2-core
development CPU, float32, 2026-11-28 (``benchmarks/thread_encoder.py``, one process, the variants
alternating; ``benchmarks/README.md``):

- compiled, on the model thread: 69200 page faults a slice (270 MiB) became 3600, and a slice took
  0.631 s instead of 0.702 (1.11x) and 0.636 instead of 0.745 (1.17x); on the main thread 0.97-1.03x in
  three runs;
- eager, on the model thread: 1.16x and 1.25x (139800 faults a slice before); on the main thread
  0.91-0.97x in three runs, where glibc already kept the whole blocks;
- a LiteMedSAM propagation of 40 slices on the model thread (``speed.py --worker-thread``, 4 pairs of
  processes): 0.69-0.75 s a slice against 0.74-0.99, and a peak 103-156 MiB lower (53-105 MiB on the
  main thread, 2 pairs).

Used by :class:`~medsegany.models.eager_inference.EagerInferenceEncoder`, so both the eager and the
compiled CPU encoder run the strips.
"""

from __future__ import annotations

import functools
from typing import Any

# A thread's heap holds 64 MiB; a strip's expanded activation, and the depthwise convolution's output of
# the same size, then fit in one heap each with room to spare.
STRIP_BYTES = 16 << 20


def _single_convolution(module: Any) -> Any:
    """The one ``Conv2d`` in ``module`` (itself, or TinyViT's ``Conv2d_BN``), None when not exactly one."""
    import torch

    convolutions = [child for child in module.modules() if isinstance(child, torch.nn.Conv2d)]
    return convolutions[0] if len(convolutions) == 1 else None


def _is_pointwise(conv: Any) -> bool:
    return (tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding)) == ((1, 1), (1, 1), (0, 0))


def halo_rows(conv: Any) -> int | None:
    """Rows a strip needs above and below for ``conv``: (k - 1) / 2 for a k x k convolution (k odd) with
    stride 1, no dilation and "same" zero padding; None for any other convolution."""
    (k_rows, k_columns), padding = tuple(conv.kernel_size), tuple(conv.padding)
    same = k_rows == k_columns and k_rows % 2 == 1 and padding == (k_rows // 2, k_columns // 2)
    plain = tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1) and conv.padding_mode == "zeros"
    return k_rows // 2 if same and plain else None


def mbconv_shape(block: Any) -> tuple[int, int] | None:
    """(expanded channels, halo rows) of a TinyViT ``MBConv`` that strips can compute, None otherwise.

    The strip forward repeats ``MBConv.forward`` (conv1, act1, conv2, act2, conv3, drop_path, the shortcut
    added, act3), so only that class, with a pointwise conv1 and conv3 and a "same" conv2, qualifies."""
    names = ("conv1", "act1", "conv2", "act2", "conv3", "drop_path", "act3")
    if type(block).__name__ != "MBConv" or not all(hasattr(block, name) for name in names):
        return None
    convs = [_single_convolution(getattr(block, name)) for name in ("conv1", "conv2", "conv3")]
    if any(conv is None for conv in convs) or not (_is_pointwise(convs[0]) and _is_pointwise(convs[2])):
        return None
    halo = halo_rows(convs[1])
    return None if halo is None else (convs[0].out_channels, halo)


@functools.cache
def _row_strip_class() -> type:
    """The wrapper class (made on first use: torch is imported lazily). Local to this function, so a
    module holding it cannot be pickled whole (nothing saves the prepared encoder; its weights are the
    source's)."""
    import torch

    class RowStripMBConv(torch.nn.Module):
        """An ``MBConv`` computed in strips of rows when its expanded activation exceeds ``strip_bytes``."""

        def __init__(
            self, block: torch.nn.Module, expanded_channels: int, halo: int, strip_bytes: int
        ) -> None:
            super().__init__()
            self.block = block
            self.expanded_channels, self.halo, self.strip_bytes = expanded_channels, halo, strip_bytes

        def strips(self, x: torch.Tensor) -> int:
            """How many strips for input ``x`` (N, C, H, W): 1 when its expanded activation is small.
            Sized by ``x``'s element size: a float32 input under bf16 autocast (not LiteMedSAM's, whose
            first convolutions already give bf16) gets twice the strips it needs, never too few."""
            batch, _, height, width = x.shape
            expanded_bytes = batch * self.expanded_channels * height * width * x.element_size()
            return min(-(-expanded_bytes // self.strip_bytes), height)  # a strip has at least one row

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            strips = self.strips(x)
            if strips == 1:
                return self.block(x)
            block, height = self.block, x.shape[2]
            rows = -(-height // strips)
            pieces = []
            # Rows of x: the strip's own [top, bottom) and, with its halo, [halo_top, halo_bottom).
            for top in range(0, height, rows):
                bottom = min(top + rows, height)
                halo_top, halo_bottom = max(top - self.halo, 0), min(bottom + self.halo, height)
                expanded = block.act1(block.conv1(x[:, :, halo_top:halo_bottom]))
                # rows within the halo of a strip's edge saw zeros instead of their neighbours: dropped,
                # after the GELU, which inductor fuses into the convolution only when it follows it
                # directly (dropped before it, the compiled encoder took 5 % longer a slice)
                mixed = block.act2(block.conv2(expanded))[:, :, top - halo_top : bottom - halo_top]
                out = block.drop_path(block.conv3(mixed))
                out += x[:, :, top:bottom]  # in place, as MBConv adds it: the convolution's dtype stays
                pieces.append(block.act3(out))
            return torch.cat(pieces, dim=2)

    return RowStripMBConv


def split_into_row_strips(module: Any, strip_bytes: int = STRIP_BYTES) -> int:
    """Wrap, in place, every TinyViT ``MBConv`` of ``module`` that strips can compute (see
    :func:`mbconv_shape`); returns how many were wrapped. Meant for a copy that runs inference (the halo
    rows are computed twice)."""
    wrapper = _row_strip_class()
    wrapped = 0
    for parent in list(module.modules()):
        if isinstance(parent, wrapper):
            continue
        for name, child in list(parent._modules.items()):
            shape = mbconv_shape(child) if child is not None else None
            if shape is not None:
                parent._modules[name] = wrapper(child, *shape, strip_bytes)
                wrapped += 1
    return wrapped
