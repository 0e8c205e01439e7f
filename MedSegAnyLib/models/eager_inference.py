"""An image encoder prepared for eager inference: what ``torch.compile`` would do, done once by hand.

Where the encoder is not compiled (``--compile off``, and every CPU without a C++ compiler for inductor:
most Windows machines and Macs without Xcode's tools), it used to run exactly as trained. The copy made
here computes the same function with less work:

- each convolution followed by a batch norm in a ``Sequential`` (TinyViT's ``Conv2d_BN``: 27 of them in
  LiteMedSAM) becomes one convolution with the norm folded into its weights (``fuse_conv_bn_eval``), as
  inductor's freezing does;
- the convolutions' weights and the input are channels-last, the layout oneDNN's CPU kernels prefer;
- under bf16 the linear and convolution weights are bf16 (``compute.cast_weights_to_bf16``);
- TinyViT's wide first-stage blocks run in strips of rows (:mod:`~medsegany.models.row_strips`), so that
  no activation is too large for a thread's heap (Slicer's model thread) and the peak memory falls.

Used on a CPU only (``LiteMedSamModel``): CUDA's and MPS's channels-last kernels are not measured here.
LiteMedSAM's encoder, a slice on the 2-core development CPU, freed memory kept
(``benchmarks/eager_encoder.py``, 2026-11-28): 1.04 -> 0.90 s in float32 (1.15x), 0.64 -> 0.52 s in
bf16 (1.23x). Folding rounds differently: in float32 the features move by 4e-6 (of 0.73) and the
one-box accuracy benchmark's 32 cases keep their Dice to the 4th decimal; in bf16 they are as far from
float32 as the compiled encoder's (root-mean-square 0.006, against 0.004 for bf16 as trained).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from .row_strips import split_into_row_strips


def fold_batch_norms(module: Any) -> int:
    """Fold, in place, every BatchNorm2d that directly follows a Conv2d in a ``Sequential`` of ``module``
    into that convolution (the norm becomes an Identity); returns how many were folded. Only in a
    ``Sequential``: there the order of the children is the order of the calls. Eval mode only (the
    running statistics are what is folded)."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for parent in module.modules():
        if not isinstance(parent, torch.nn.Sequential):
            continue
        names = list(parent._modules)
        for first, second in itertools.pairwise(names):
            conv, norm = parent._modules[first], parent._modules[second]
            # a norm without running statistics normalises by each batch's own: nothing to fold
            if (
                isinstance(conv, torch.nn.Conv2d)
                and type(norm) is torch.nn.BatchNorm2d
                and norm.running_mean is not None
            ):
                parent._modules[first] = fuse_conv_bn_eval(conv, norm)
                parent._modules[second] = torch.nn.Identity()
                folded += 1
    return folded


class EagerInferenceEncoder:
    """Calls a prepared copy of ``module`` (see the module docstring); the source stays as it was.

    Its outputs are contiguous (not channels-last), so what is cached or decoded from them is laid out as
    the source's outputs are."""

    def __init__(self, module: Any, bfloat16: bool) -> None:
        import torch

        from .compute import cast_weights_to_bf16

        prepared = copy.deepcopy(module).eval()
        self.folded = fold_batch_norms(prepared)
        self.strip_blocks = split_into_row_strips(prepared)
        prepared = prepared.to(memory_format=torch.channels_last)
        self.module = cast_weights_to_bf16(prepared) if bfloat16 else prepared
        self._channels_last = torch.channels_last

    @property
    def nbytes(self) -> int:
        """Memory of the copy's weights and buffers (the memory estimate counts them)."""
        tensors = [*self.module.parameters(), *self.module.buffers()]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

    def __call__(self, images: Any) -> Any:
        out = self.module(images.contiguous(memory_format=self._channels_last))
        return out.contiguous()
