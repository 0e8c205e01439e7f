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
- The memory attention's cross-attention rotates its keys (7 memory frames x 1024 tokens at 512 px) with
  the query grid's frequency table repeated once per memory frame: Meta's ``apply_rotary_enc`` builds
  that repeated table (7 x 1024 x 64 complex numbers) at every layer of every step.
  :func:`broadcast_memory_rope` multiplies by the table broadcast over the frames instead: the same
  products, bitwise; 11.8 -> 7.2 ms a layer on the 2-core CPU in bf16, 4 layers a step.
"""

from __future__ import annotations

import math
import types
import weakref
from typing import Any

MEMO_ATTRIBUTE = "_medsegany_pos_embed_memo"
BROADCAST_ROPE_ATTRIBUTE = "_medsegany_meta_forward"
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
        if not torch.is_inference_mode_enabled():
            return original(hw)
        key = (tuple(int(n) for n in hw), torch.is_autocast_enabled(trunk.pos_embed.device.type))
        if key not in memo:
            memo[key] = original(hw)
        return memo[key]

    trunk._get_pos_embed = get_pos_embed
    return True


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


def broadcast_memory_rope(model: Any) -> int:
    """Give every rotary cross-attention of a built SAM 2 model (``RoPEAttention`` with
    ``rope_k_repeat``) the broadcast key rotation of the module docstring; returns how many it changed.

    Calling it twice is harmless; anything the broadcast does not cover (training, keys that are not whole
    memory frames) runs Meta's own forward.
    """
    changed = 0
    for module in model.modules():
        if not getattr(module, "rope_k_repeat", False) or not hasattr(module, "freqs_cis"):
            continue
        if BROADCAST_ROPE_ATTRIBUTE not in module.__dict__:
            setattr(module, BROADCAST_ROPE_ATTRIBUTE, type(module).forward)
            module.forward = types.MethodType(_forward_broadcast_rope, module)
        changed += 1
    return changed


def _forward_broadcast_rope(self: Any, q: Any, k: Any, v: Any, num_k_exclude_rope: int = 0) -> Any:
    """Meta's ``RoPEAttention.forward`` (sam2/modeling/sam/transformer.py) with the keys rotated frame by
    frame through a broadcast frequency table."""
    import torch
    import torch.nn.functional as F

    queries = q.shape[-2]
    keys_rotated = k.shape[-2] - num_k_exclude_rope
    if self.training or queries == 0 or keys_rotated % queries:
        return getattr(self, BROADCAST_ROPE_ATTRIBUTE)(self, q, k, v, num_k_exclude_rope)
    q = self._separate_heads(self.q_proj(q), self.num_heads)
    k = self._separate_heads(self.k_proj(k), self.num_heads)
    v = self._separate_heads(self.v_proj(v), self.num_heads)
    # the table follows the query grid (square), as in Meta's forward
    self.freqs_cis = self.freqs_cis.to(q.device)
    if self.freqs_cis.shape[0] != queries:
        side = math.sqrt(queries)
        self.freqs_cis = self.compute_cis(end_x=side, end_y=side).to(q.device)
    freqs = self.freqs_cis  # (queries, head_dim / 2) complex64
    rotated_q = torch.view_as_complex(q.float().reshape(*q.shape[:-1], -1, 2)) * freqs
    q = torch.view_as_real(rotated_q).flatten(3).type_as(q)
    if keys_rotated:
        batch, heads, _, head_dim = k.shape
        frames = keys_rotated // queries
        pairs = k[:, :, :keys_rotated].float().reshape(batch, heads, frames, queries, head_dim // 2, 2)
        rotated_k = torch.view_as_complex(pairs) * freqs  # broadcast over batch, heads and frames
        k[:, :, :keys_rotated] = torch.view_as_real(rotated_k).reshape(batch, heads, keys_rotated, head_dim)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
    return self.out_proj(self._recombine_heads(out))
