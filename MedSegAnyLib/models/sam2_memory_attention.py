"""SAM 2's memory attention with its keys and values prepared once for all layers, not once per layer.

Why: each of the 4 layers of Meta's ``MemoryAttention`` adds the memory's positional encoding to the
memory for its cross-attention keys, and under bf16 autocast its key and value projections each cast
their float32 input (the memory is float32 once the object pointers join it) to bf16: 3 kernels a layer,
12 a tracking step, on the same inputs every layer. On an H200 a step replayed from its CUDA graph is
bound by its number of small kernels (672, 2.33 ms of GPU work, 2026-11-28). :func:`attend_to_memory`
makes the sum and the casts once: 3 kernels a step.

The same numbers: the layers run Meta's own methods and modules in Meta's order; only the memory's
inputs to the key and value projections are made before the loop. A cast to bf16 rounds the same
wherever it is made, and autocast leaves a bf16 input as it is. ``Testing/Python/
test_sam2_memory_attention.py`` compares the output with Meta's ``MemoryAttention.forward``, bitwise.

Also here: :func:`promoted_memory`, the bf16 memory of a frame without object pointers taken in float32 by
a float32 run, as the pointers' ``torch.cat`` does (else a dtype error).
"""

from __future__ import annotations

from typing import Any


def _meta_layers(attention: Any) -> bool:
    """True when every layer is Meta's ``MemoryAttentionLayer`` (the layer code this mirrors)."""
    from sam2.modeling.memory_attention import MemoryAttentionLayer

    return all(type(layer) is MemoryAttentionLayer for layer in attention.layers)


def _as_projected(tensor: Any) -> Any:
    """``tensor`` as a linear layer under the current autocast receives it (its bf16 cast, made once)."""
    import torch

    device_type = tensor.device.type
    if not torch.is_autocast_enabled(device_type) or tensor.dtype != torch.float32:
        return tensor
    return tensor.to(torch.get_autocast_dtype(device_type))


# the attribute that marks a memory attention module whose memory is promoted (idempotent install)
PROMOTE_HOOK_ATTRIBUTE = "_medsegany_memory_promoted"


def promoted_memory(memory: Any, curr: Any) -> Any:
    """``memory`` as float32 when it is bf16 alone, the current features float32 and no autocast runs.

    Why: SAM 2 keeps spatial memories in bf16 and its object pointers in float32. Meta's
    ``torch.cat`` of the two promotes the memory to float32, exactly, so a float32 run feeds its float32
    projections float32. A frame whose memory has no pointer (tracking forward from before an object's
    first prompt, or backward from after its last: the pointers come only from conditioning frames on the
    tracked side, ``ptr_cond_outputs``) got bf16 alone, and a float32 run stopped with "mat1 and mat2
    must have the same dtype, but got BFloat16 and Float" (Meta's predictor too, in float32; under bf16
    autocast the projections cast either way). The promotion is the one the pointers cause: exact.
    """
    import torch

    reference = curr[0] if isinstance(curr, (list, tuple)) else curr
    if (
        memory.dtype == torch.bfloat16
        and reference.dtype == torch.float32
        and not torch.is_autocast_enabled(memory.device.type)
    ):
        return memory.float()
    return memory


def promote_memory_without_pointers(attention: Any) -> None:
    """Run :func:`promoted_memory` on the memory of every call of this ``MemoryAttention`` module (a
    forward pre-hook; installing it twice is harmless)."""
    if getattr(attention, PROMOTE_HOOK_ATTRIBUTE, False):
        return

    def promote(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if "memory" in kwargs:  # Meta calls it with keywords
            curr = kwargs["curr"] if "curr" in kwargs else args[0]
            return args, {**kwargs, "memory": promoted_memory(kwargs["memory"], curr)}
        if len(args) >= 2:
            return (args[0], promoted_memory(args[1], args[0]), *args[2:]), kwargs
        return None

    attention.register_forward_pre_hook(promote, with_kwargs=True)
    setattr(attention, PROMOTE_HOOK_ATTRIBUTE, True)


def attend_to_memory(
    attention: Any, curr: Any, curr_pos: Any, memory: Any, memory_pos: Any, num_obj_ptr_tokens: int = 0
) -> Any:
    """Meta's ``MemoryAttention.forward(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens)`` for one
    level (``curr`` and ``curr_pos`` tensors), the cross-attention's keys and values prepared once (see
    the module's docstring). Other layer classes, and an instance with a forward of its own (compiled),
    run that forward."""
    from sam2.modeling.sam.transformer import RoPEAttention

    # a forward set on the instance (Meta's VOS predictor compiles it so) is the one to run
    if "forward" in attention.__dict__ or not _meta_layers(attention):
        return attention(
            curr=curr,
            memory=memory,
            curr_pos=curr_pos,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=num_obj_ptr_tokens,
        )
    memory = promoted_memory(memory, curr)  # bf16 alone when no object pointer joined it
    output = curr
    if attention.pos_enc_at_input and curr_pos is not None:
        output = output + 0.1 * curr_pos
    if attention.batch_first:
        output, curr_pos = output.transpose(0, 1), curr_pos.transpose(0, 1)
        memory, memory_pos = memory.transpose(0, 1), memory_pos.transpose(0, 1)
    values = _as_projected(memory)
    keys_with_pos = None
    if any(layer.pos_enc_at_cross_attn_keys for layer in attention.layers):
        keys_with_pos = _as_projected(memory + memory_pos)
    for layer in attention.layers:
        output = layer._forward_sa(output, curr_pos)
        # Meta's _forward_ca, on the prepared keys and values
        queries = layer.norm2(output)
        if layer.pos_enc_at_cross_attn_queries:
            queries = queries + curr_pos
        keys = keys_with_pos if layer.pos_enc_at_cross_attn_keys else values
        extra = (
            {"num_k_exclude_rope": num_obj_ptr_tokens}
            if isinstance(layer.cross_attn_image, RoPEAttention)
            else {}
        )
        output = output + layer.dropout2(layer.cross_attn_image(q=queries, k=keys, v=values, **extra))
        # Meta's MLP
        hidden = layer.norm3(output)
        hidden = layer.linear2(layer.dropout(layer.activation(layer.linear1(hidden))))
        output = output + layer.dropout3(hidden)
    normed = attention.norm(output)
    return normed.transpose(0, 1) if attention.batch_first else normed
