"""SAM 2's attention on a CPU: matrix products and a softmax, not PyTorch's fused kernel, where that pays.

Under bf16 every attention of Meta's modules runs so; in float32 only the memory attention's
cross-attention, with its values projected last (below).

Why: PyTorch's fused CPU attention (``_scaled_dot_product_flash_attention_for_cpu``) gains almost nothing
from bf16 on the 2-core development CPU (AMD EPYC, AVX512-BF16), while its matrix products do (2048³:
162 GFLOP/s float32, 396 bf16). Measured there, bf16 autocast, freed memory kept (median of 8):

- the memory attention's cross-attention of SAM 2.1 tiny at 512 (1024 queries, 7 memories of 1024 keys
  plus 64 pointer tokens, one head of 256): 44-48 ms fused (41 ms in float32), 23.5-25 ms here;
- Hiera's attention at 512 px: global blocks (4 heads of 96, 1024 tokens) 11.1 -> 7.0 ms, windows of 64
  and 196 tokens 30-45 % faster.

A tracking step with a full memory took 0.30 s and takes 0.20 s; an image's features 0.27 s and 0.25 s.

The memory attention's cross-attention also projects its values after the attention, not before: its
values are the 64-channel memories, projected to 256 channels by ``v_proj``, and since each row of the
attention weights sums to one, ``P @ v_proj(M) = v_proj(P @ M)``. The product over 7232 memory tokens
then has 64 columns instead of 256 (:func:`rope_attention_values_last`, one head only, as SAM 2 has):
a step with a full memory 0.20 -> 0.18 s.

In float32 (CPUs without native bf16, where precision "auto" picks float32, or ``--precision float32``)
that cross-attention runs so as well, its scores and softmax in float32: 4 x 256 columns of the product
with the values become 64, the rest is the same arithmetic as the fused kernel's in another order.
Measured on an Intel Xeon @ 2.50 GHz without AVX512-BF16 (2 cores, sgemm at 170 GFLOP/s, glibc, freed
memory kept): one layer 54-56 ms fused, 31-37 ms here; a tracking step with a full memory 0.465 ->
0.386-0.411 s; the tracked logits within 7e-7 of the fused kernel's (relative to the largest), every
sign equal. The other float32 attentions (Hiera's, the memory attention's self-attention) keep the fused
kernel, which is faster there in float32 (a Hiera-sized call 3.9 ms against 5.5 ms).

What it costs in precision: the fused kernel keeps the attention scores in float32; here they are rounded
to bf16 (relative 2^-9) before the softmax, as in any attention written as ``softmax(q @ k.T) @ v`` under
bf16 autocast. That is how LiteMedSAM's TinyViT and SAM's mask decoder already run in our bf16 path (their
attention is written out that way), where the masks match float32 at Dice 0.9995 on real data
(``benchmarks/README.md``). CUDA, MPS and anything else keep PyTorch's kernel.

How it is wired: Meta's attention modules call ``F.scaled_dot_product_attention`` through the name ``F``
in their own modules (``sam2.modeling.sam.transformer`` and ``sam2.modeling.backbones.hieradet``).
:func:`install` points that name at a stand-in for ``torch.nn.functional`` whose attention goes here only
inside :func:`matmul_attention` on the calling thread, and only for plain bf16 CPU calls, and wraps
``RoPEAttention.forward`` so that, under the same conditions, the values are projected last; every other
call, thread and process-wide user of those modules gets Meta's forward and PyTorch's kernel unchanged.
Meta's predictor inside :func:`matmul_attention` computes exactly what the tracker does (the
equivalence test).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import types
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

# Meta's modules that call F.scaled_dot_product_attention
SAM2_ATTENTION_MODULES = ("sam2.modeling.sam.transformer", "sam2.modeling.backbones.hieradet")
# Scores of one block of queries, at most (bf16: 16 MiB, and as much for the softmax's output). SAM 2.1
# at 512 px never splits (cross-attention: 1024 x 7232 = 7.4 M); at 1024 px its cross-attention (4096 x
# 28 736 = 118 M) runs in 15 blocks instead of 470 MiB of scores at once.
BLOCK_SCORE_VALUES = 8 * 2**20

_ACTIVE = threading.local()
_INSTALL_LOCK = threading.Lock()


def attention_by_matmul(query: Any, key: Any, value: Any, scale: float | None = None) -> Any:
    """``softmax(query @ key.T * scale) @ value`` over the last two dimensions, in the inputs' dtype.

    The same shapes as ``torch.nn.functional.scaled_dot_product_attention`` without a mask or dropout:
    (..., L, E), (..., S, E), (..., S, Ev) -> (..., L, Ev). Queries go in blocks so that no block's
    scores exceed :data:`BLOCK_SCORE_VALUES`.
    """
    import torch

    scale = query.shape[-1] ** -0.5 if scale is None else scale
    # scaling the queries (L x E) costs far less than scaling the scores (L x S); exact for E = 256
    query = query * scale
    key_t = key.transpose(-1, -2)
    rows, keys = query.shape[-2], key.shape[-2]
    batch = query.numel() // max(1, rows * query.shape[-1])
    block = max(1, BLOCK_SCORE_VALUES // max(1, batch * keys))
    if block >= rows:
        return torch.matmul(torch.softmax(torch.matmul(query, key_t), -1), value)
    blocks = [
        torch.matmul(torch.softmax(torch.matmul(query[..., start : start + block, :], key_t), -1), value)
        for start in range(0, rows, block)
    ]
    return torch.cat(blocks, dim=-2)


def matmul_attention_active() -> bool:
    """True inside :func:`matmul_attention` on this thread."""
    return getattr(_ACTIVE, "depth", 0) > 0


def _rewritten_here() -> bool:
    """Inside :func:`matmul_attention` on this thread, and not while ``torch.compile`` traces the code."""
    from .sam2_speedups import dynamo_tracing

    return matmul_attention_active() and not dynamo_tracing()


def _runs_by_matmul(query: Any, attn_mask: Any, dropout_p: float, is_causal: bool, extra: dict) -> bool:
    import torch

    if not _rewritten_here():
        return False
    plain = attn_mask is None and not dropout_p and not is_causal and not extra.get("enable_gqa", False)
    return plain and query.device.type == "cpu" and query.dtype == torch.bfloat16


def scaled_dot_product_attention(
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    **extra: Any,
) -> Any:
    """PyTorch's ``scaled_dot_product_attention``, by :func:`attention_by_matmul` where it applies."""
    import torch.nn.functional as functional

    if _runs_by_matmul(query, attn_mask, dropout_p, is_causal, extra):
        return attention_by_matmul(query, key, value, scale)
    return functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **extra
    )


class _FunctionalWithCpuAttention(types.ModuleType):
    """``torch.nn.functional`` with :func:`scaled_dot_product_attention` in place of PyTorch's."""

    def __init__(self) -> None:
        super().__init__("torch.nn.functional")
        self.scaled_dot_product_attention = scaled_dot_product_attention

    def __getattr__(self, name: str) -> Any:
        import torch.nn.functional as functional

        return getattr(functional, name)


_FUNCTIONAL = _FunctionalWithCpuAttention()


def _projects_values_last(module: Any, query: Any, value: Any) -> bool:
    import torch

    if module.training or not _rewritten_here():
        return False
    if torch.is_autocast_enabled("cpu"):
        arithmetic = torch.get_autocast_dtype("cpu") == torch.bfloat16
    else:  # float32 keeps its scores in float32: the fused kernel's precision, 1.5x faster (see above)
        arithmetic = query.dtype == value.dtype == torch.float32
    narrow_values = value.shape[-1] == module.v_proj.in_features < module.v_proj.out_features
    return (
        arithmetic
        and narrow_values
        and query.device.type == "cpu"
        and module.num_heads == 1
        and module.rope_k_repeat
    )


def rope_attention_values_last(module: Any, query: Any, key: Any, value: Any, num_k_exclude_rope: int = 0):
    """Meta's ``RoPEAttention.forward`` (one head) with ``v_proj`` applied to the attention's output.

    The same function: the attention weights of a query sum to one, so mixing the raw values and then
    projecting them equals mixing the projected values (the bias included). Rotary encoding as Meta's: the
    queries' table, repeated over the memories' keys, none on the last ``num_k_exclude_rope`` keys.
    """
    import math

    from sam2.modeling.position_encoding import apply_rotary_enc

    query = module._separate_heads(module.q_proj(query), 1)
    key = module._separate_heads(module.k_proj(key), 1)
    value = module._separate_heads(value, 1)
    tokens = query.shape[-2]
    module.freqs_cis = module.freqs_cis.to(query.device)
    if module.freqs_cis.shape[0] != tokens:
        side = math.sqrt(tokens)
        module.freqs_cis = module.compute_cis(end_x=side, end_y=side).to(query.device)
    rotated = key.size(-2) - num_k_exclude_rope
    query, key[:, :, :rotated] = apply_rotary_enc(
        query, key[:, :, :rotated], freqs_cis=module.freqs_cis, repeat_freqs_k=module.rope_k_repeat
    )
    mixed = attention_by_matmul(query, key, value)
    return module.out_proj(module.v_proj(module._recombine_heads(mixed)))


def _install_values_last() -> bool:
    """Route Meta's ``RoPEAttention`` through :func:`rope_attention_values_last` where it applies."""
    try:
        from sam2.modeling.sam.transformer import RoPEAttention
    except ImportError:
        return False
    original = RoPEAttention.forward
    if getattr(original, "_medsegany_values_last", False):
        return True

    def forward(self: Any, q: Any, k: Any, v: Any, num_k_exclude_rope: int = 0) -> Any:
        if _projects_values_last(self, q, v):
            return rope_attention_values_last(self, q, k, v, num_k_exclude_rope)
        return original(self, q, k, v, num_k_exclude_rope)

    forward._medsegany_values_last = True
    forward.__doc__ = original.__doc__
    RoPEAttention.forward = forward
    return True


def install() -> bool:
    """Point Meta's attention modules at the stand-in and its ``RoPEAttention`` at
    :func:`rope_attention_values_last` (once per process); False when sam2 is missing or a module's ``F``
    is something else already (then it is left alone, with a log line)."""
    import importlib

    import torch.nn.functional as functional

    with _INSTALL_LOCK:
        installed = _install_values_last()
        for name in SAM2_ATTENTION_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                return False
            current = getattr(module, "F", None)
            if current is _FUNCTIONAL:
                continue
            if current is not functional:
                log.info("%s.F is not torch.nn.functional; its attention stays as it is", name)
                installed = False
                continue
            module.F = _FUNCTIONAL
    return installed


@contextlib.contextmanager
def matmul_attention(enabled: bool = True) -> Iterator[None]:
    """On this thread, inside the block (after :func:`install`), Meta's bf16 CPU attention runs by
    :func:`attention_by_matmul`, and its memory cross-attention, bf16 or float32, projects its values
    last (:func:`rope_attention_values_last`); blocks nest."""
    if not enabled:
        yield
        return
    _ACTIVE.depth = getattr(_ACTIVE, "depth", 0) + 1
    try:
        yield
    finally:
        _ACTIVE.depth -= 1
