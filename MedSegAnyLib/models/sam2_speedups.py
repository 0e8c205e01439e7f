"""Exact speed-ups of Meta's SAM 2 modules for inference: same numbers, less repeated work.

- Hiera's absolute position embedding is re-interpolated (bicubic, 96 x 7 x 7 -> 96 x 128 x 128 at 512 px)
  on every image: 15 ms of the 330 ms bf16 encoder on the 2-core CPU. With frozen weights it depends only
  on the feature size, so it is computed once per size and kept (inference mode only: a tensor made
  there cannot take part in autograd, and training must see the live parameters).
- Under bf16 autocast every linear and convolution casts its float32 weight and bias to bf16 at every
  call, and the cast cache lives only as long as the autocast region, which a tracker enters per frame:
  on an H200 a SAM 2.1 tiny tracking step launched 833 kernels, 345 of them such casts (23 % of its GPU
  time). :func:`shared_bf16_copy` casts them once, into a copy, so the caller's model is untouched;
  autocast then finds bf16 weights and casts only the activations, exactly as before (same rounding).
"""

from __future__ import annotations

import weakref
from typing import Any

MEMO_ATTRIBUTE = "_medsegany_pos_embed_memo"
# source model -> its bf16-weight copy (weak keys: the copy goes when the caller drops the model)
_BF16_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def memoise_position_embedding(model: Any) -> bool:
    """Make the Hiera trunk of a built SAM 2 model reuse its position embedding per feature size.

    Returns False when the model has no Hiera trunk (nothing changed); calling it twice is harmless.
    Loading other weights into the model afterwards would leave stale entries: build a new model instead.
    """
    import torch

    trunk = getattr(getattr(model, "image_encoder", None), "trunk", None)
    original = getattr(trunk, "_get_pos_embed", None)
    if original is None:
        return False
    if hasattr(trunk, MEMO_ATTRIBUTE):
        return True
    memo: dict[tuple, Any] = {}
    setattr(trunk, MEMO_ATTRIBUTE, memo)

    def get_pos_embed(hw: tuple[int, int]) -> Any:
        # under torch.compile (sam2_compiled_encoder) Meta's own computation goes into the graph: the
        # memo's Python checks would break the graph in two
        if not constants_may_be_kept(trunk.pos_embed.device):
            return original(hw)
        key = (tuple(int(n) for n in hw), torch.is_autocast_enabled(trunk.pos_embed.device.type))
        if key not in memo:
            memo[key] = original(hw)
        return memo[key]

    trunk._get_pos_embed = get_pos_embed
    return True


def dynamo_tracing() -> bool:
    """True while dynamo traces the caller (``torch.compiler.is_compiling``, PyTorch 2.3 on)."""
    import torch

    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


def constants_may_be_kept(device: Any) -> bool:
    """Whether a value computed from frozen weights or shapes alone may be kept for later calls: in
    inference mode (training must see the live parameters), and neither while dynamo traces (a compiled
    function folds constants itself; the memo's Python would break its graph) nor while a CUDA graph
    records (its value would live in the graph's memory pool; the warm-up before a recording keeps it)."""
    import torch

    if dynamo_tracing() or not torch.is_inference_mode_enabled():
        return False
    return not (torch.device(device).type == "cuda" and torch.cuda.is_current_stream_capturing())


def bf16_copy_if_made(model: Any) -> Any | None:
    """The bf16-weight copy :func:`shared_bf16_copy` made of ``model``, or None when none was made."""
    return _BF16_COPIES.get(model)


def shared_bf16_copy(model: Any) -> Any:
    """A copy of a SAM 2 model whose linear and convolution weights and biases are bf16, for bf16 autocast
    (:func:`medsegany.models.compute.bf16_weights_copy`: bitwise the float32 model's numbers there).

    One copy per source model, shared by every caller (about half the model's float32 size again).
    """
    from .compute import bf16_weights_copy

    cached = _BF16_COPIES.get(model)
    if cached is not None:
        return cached
    clone = bf16_weights_copy(model)
    trunk = getattr(getattr(clone, "image_encoder", None), "trunk", None)
    if trunk is not None and hasattr(trunk, MEMO_ATTRIBUTE):
        # the memo's closure points at the source trunk: drop it, the copy gets its own below
        trunk.__dict__.pop("_get_pos_embed", None)
        delattr(trunk, MEMO_ATTRIBUTE)
    memoise_position_embedding(clone)
    _BF16_COPIES[model] = clone
    return clone.eval()
