"""The memory of a SAM 2 tracking step, chosen in Python and gathered with three copies.

Why: Meta's ``_prepare_memory_conditioned_features`` picks a frame's memories (the conditioning frames,
the last 6 tracked frames, up to 16 object pointers) and assembles them tensor by tensor: 22 operations
a step with a full memory (a temporal encoding added per memory frame, the pointers' sine encoding and
its projection, three concatenations; ``benchmarks/step_host_work.py``), each launched from Python.
With the rest of the step replayed from a CUDA graph (:mod:`medsegany.models.sam2_step_graphs`), those
launches were most of what the host still did per step beside the graph itself.

Here the choice stays Meta's, rule for rule (:func:`select_memory`, plain Python on frame numbers), and
the tensors are brought together by three copies (:func:`gather_memory`): the memory frames' features
concatenated into one buffer, the object pointers stacked into another, and the small integers (which
temporal encoding each frame takes, how far each pointer is) in one transfer. Everything computed from
them, the temporal encodings added, the pointers' encoding projected, is done inside the step
(:func:`memory_from_gathered`) by the same operations as Meta's, so a recorded graph replays it and the
numbers are Meta's, bitwise (``Testing/Python/test_sam2_memory_gather.py`` compares them with Meta's
assembly).

A frame's memory features are kept token-major: the (1, 64, H, W) tensor Meta's code reads is a view of
an (H*W, 1, 64) contiguous one (:func:`token_major`), the layout the memory attention takes, so the
concatenation is a single copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# (width, device) -> the sine encoding's frequencies (sine_encoding); a few hundred bytes each
_SINE_FREQUENCIES: dict[tuple[int, str], Any] = {}


@dataclass(frozen=True)
class MemorySelection:
    """What a frame attends to, in Meta's order.

    ``spatial``: (temporal encoding index into ``maskmem_tpos_enc``, output) per memory frame, the
    conditioning frames first; ``pointers``: (temporal distance, output) per object pointer;
    ``max_pointers``: Meta's ``max_obj_ptrs_in_encoder`` for this stack (distances are divided by one less).
    """

    spatial: list[tuple[int, Any]]
    pointers: list[tuple[int, Any]]
    max_pointers: int


@dataclass(frozen=True)
class GatheredMemory:
    """The tensors :func:`memory_from_gathered` turns into the memory attention's inputs."""

    spatial: Any  # (N * H * W, B, mem_dim), the memory frames' features one after another
    pointers: Any | None  # (P, B, C) object pointers, None when there are none
    indices: Any  # int64 (N + P,): the N temporal encoding indices, then the P pointer distances
    num_spatial: int
    num_pointers: int
    max_pointers: int


def supports(model: Any) -> bool:
    """True when :func:`select_memory` reproduces the model's choice (video models in eval mode)."""
    return int(getattr(model, "num_maskmem", 0)) > 0 and not getattr(model, "training", False)


def select_memory(
    model: Any, frame_index: int, memory_bank: dict[str, dict[int, Any]], num_frames: int, reverse: bool
) -> MemorySelection:
    """The memories and object pointers an unprompted frame attends to, as Meta's
    ``_prepare_memory_conditioned_features`` (``is_init_cond_frame=False``) picks them."""
    from sam2.modeling.sam2_utils import select_closest_cond_frames

    num_maskmem = int(model.num_maskmem)
    cond_outputs = memory_bank["cond_frame_outputs"]
    tracked = memory_bank["non_cond_frame_outputs"]
    selected, unselected = select_closest_cond_frames(
        frame_index, cond_outputs, model.max_cond_frames_in_attn
    )
    # conditioning frames take t_pos 0, the last (num_maskmem - 1) frames 1 (earliest) .. num_maskmem - 1
    frames_by_t_pos: list[tuple[int, Any]] = [(0, out) for out in selected.values()]
    stride = int(model.memory_temporal_stride_for_eval)
    for t_pos in range(1, num_maskmem):
        t_rel = num_maskmem - t_pos
        if t_rel == 1:
            previous = frame_index + 1 if reverse else frame_index - 1
        elif reverse:
            previous = -(-(frame_index + 2) // stride) * stride + (t_rel - 2) * stride
        else:
            previous = ((frame_index - 2) // stride) * stride - (t_rel - 2) * stride
        out = tracked.get(previous)
        if out is None:
            out = unselected.get(previous)
        frames_by_t_pos.append((t_pos, out))
    spatial = [(num_maskmem - t_pos - 1, out) for t_pos, out in frames_by_t_pos if out is not None]

    pointers: list[tuple[int, Any]] = []
    max_pointers = min(num_frames, int(model.max_obj_ptrs_in_encoder))
    if model.use_obj_ptrs_in_encoder:
        sign = -1 if reverse else 1
        if model.only_obj_ptrs_in_the_past_for_eval:
            past = {
                t: out for t, out in selected.items() if (t >= frame_index if reverse else t <= frame_index)
            }
        else:
            past = selected
        for t, out in past.items():
            distance = (
                (frame_index - t) * sign if model.use_signed_tpos_enc_to_obj_ptrs else abs(frame_index - t)
            )
            pointers.append((distance, out))
        for t_diff in range(1, max_pointers):
            t = frame_index + t_diff if reverse else frame_index - t_diff
            if t < 0 or t >= num_frames:
                break
            out = tracked.get(t, unselected.get(t))
            if out is not None:
                pointers.append((t_diff, out))
    return MemorySelection(spatial, pointers, max_pointers)


def gather_memory(
    selection: MemorySelection, device: Any, out: GatheredMemory | None = None
) -> GatheredMemory:
    """The selected tensors in three copies (one kernel each on a GPU when the features are token-major);
    into ``out``'s tensors (a recorded graph's input buffers, of the same shapes) when given."""
    import torch

    spatial = [output["maskmem_features"].flatten(2).permute(2, 0, 1) for _, output in selection.spatial]
    pointers = [output["obj_ptr"] for _, output in selection.pointers]
    values = [index for index, _ in selection.spatial] + [distance for distance, _ in selection.pointers]
    # page-locked on CUDA: a copy from pageable memory may make the host wait for the stream, which
    # would undo the step launched ahead (sam2_lookahead); PyTorch's pinned blocks are cached and reused
    indices = torch.tensor(values, dtype=torch.int64, pin_memory=torch.device(device).type == "cuda")
    if out is not None:
        if (out.num_spatial, out.num_pointers, out.max_pointers) != (
            len(selection.spatial),
            len(selection.pointers),
            selection.max_pointers,
        ):
            raise ValueError("the buffers were made for another memory length")
        torch.cat(spatial, out=out.spatial)
        if pointers:
            torch.stack(pointers, out=out.pointers)
        out.indices.copy_(indices, non_blocking=True)
        return out
    return GatheredMemory(
        torch.cat(spatial).to(device, non_blocking=True),
        torch.stack(pointers).to(device, non_blocking=True) if pointers else None,
        indices.to(device, non_blocking=True),
        len(selection.spatial),
        len(selection.pointers),
        selection.max_pointers,
    )


def memory_from_gathered(model: Any, gathered: GatheredMemory, maskmem_pos_enc: Any) -> tuple[Any, Any, int]:
    """(memory, memory_pos, num_obj_ptr_tokens) for the memory attention, computed as Meta's assembly does:
    the same operations on the same values (only batched over the memory frames), so the same numbers.

    ``maskmem_pos_enc`` is the memory's spatial positional encoding (1, mem_dim, H, W), the same for every
    frame. Graph-safe: no host synchronisation, shapes fixed by the numbers of memory frames and
    pointers and ``max_pointers``.
    """
    import torch

    spatial, pointers, indices = gathered.spatial, gathered.pointers, gathered.indices
    num_spatial, max_pointers = gathered.num_spatial, gathered.max_pointers
    batch = spatial.size(1)
    channels, mem_dim = int(model.hidden_dim), int(model.mem_dim)
    t_pos_index = indices[:num_spatial]
    position = maskmem_pos_enc.flatten(2).permute(2, 0, 1)  # (HW, B, mem_dim)
    # Meta: per memory frame, position + maskmem_tpos_enc[index]; here all frames in one addition
    # (index_select: a CUDA graph may hold it, no host synchronisation)
    temporal = torch.index_select(model.maskmem_tpos_enc, 0, t_pos_index)
    spatial_pos = (position.unsqueeze(0) + temporal).flatten(0, 1)
    memories, positions = [spatial], [spatial_pos]
    num_ptr_tokens = 0
    if pointers is not None:
        distances = indices[num_spatial:]
        if model.add_tpos_enc_to_obj_ptrs:
            tpos_dim = channels if model.proj_tpos_enc_in_obj_ptrs else mem_dim
            obj_pos = sine_encoding(distances / (max_pointers - 1), tpos_dim)
            obj_pos = model.obj_ptr_tpos_proj(obj_pos)
            obj_pos = obj_pos.unsqueeze(1).expand(-1, batch, mem_dim)
        else:
            obj_pos = pointers.new_zeros(pointers.size(0), batch, mem_dim)
        if mem_dim < channels:  # a pointer becomes channels // mem_dim tokens
            pointers = (
                pointers.reshape(-1, batch, channels // mem_dim, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
            )
            # Meta's repeat_interleave(n, dim=0), as a copy: the same values, and no host
            # synchronisation to size the output (graph-safe whatever PyTorch's version)
            tokens = channels // mem_dim
            obj_pos = obj_pos.unsqueeze(1).expand(-1, tokens, -1, -1).reshape(-1, batch, mem_dim)
        memories.append(pointers)
        positions.append(obj_pos)
        num_ptr_tokens = int(pointers.shape[0])
    return torch.cat(memories, dim=0), torch.cat(positions, dim=0), num_ptr_tokens


def sine_encoding(positions: Any, dim: int) -> Any:
    """Meta's ``get_1d_sine_pe(positions, dim)``, its frequencies (5 operations from ``arange``, the same
    for every step) computed once per width and device where ``sam2_speedups.constants_may_be_kept``
    allows: the same numbers."""
    import torch

    from .sam2_speedups import constants_may_be_kept

    key = (int(dim), str(positions.device))
    keep = constants_may_be_kept(positions.device)
    frequencies = _SINE_FREQUENCIES.get(key) if keep else None
    if frequencies is None:
        # Meta's expression, operation for operation (temperature 10000)
        half = dim // 2
        steps = torch.arange(half, dtype=torch.float32, device=positions.device)
        frequencies = 10000 ** (2 * (steps // 2) / half)
        if keep:
            _SINE_FREQUENCIES[key] = frequencies
    angles = positions.unsqueeze(-1) / frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def token_major(features_bchw: Any) -> Any:
    """The same (B, C, H, W) values as a view of an (H*W, B, C) contiguous tensor (one copy unless they
    are already), the layout :func:`gather_memory` concatenates without per-frame copies."""
    batch, channels, height, width = features_bchw.shape
    tokens = features_bchw.flatten(2).permute(2, 0, 1)
    if not tokens.is_contiguous():
        tokens = tokens.contiguous()
    return tokens.permute(1, 2, 0).view(batch, channels, height, width)


def meta_assembled_memory(
    model: Any,
    frame_index: int,
    vision_feats: list[Any],
    feat_sizes: list[tuple[int, int]],
    memory_bank: dict[str, dict[int, Any]],
    num_frames: int,
    reverse: bool,
) -> tuple[Any, Any, int]:
    """(memory, memory_pos, num_obj_ptr_tokens) as Meta's own ``_prepare_memory_conditioned_features``
    assembles them, its memory attention call intercepted: the reference the tests and
    ``benchmarks/step_host_work.py`` compare :func:`memory_from_gathered` with."""
    inputs: dict[str, Any] = {}

    def intercept(curr: Any, memory: Any, curr_pos: Any = None, memory_pos: Any = None, **kwargs: Any) -> Any:
        inputs.update(
            memory=memory, memory_pos=memory_pos, num_obj_ptr_tokens=kwargs.get("num_obj_ptr_tokens", 0)
        )
        return curr[0] if isinstance(curr, list) else curr

    attention = model.memory_attention
    shadowed = attention.__dict__.get("forward")  # e.g. a torch.compile'd forward set on the instance
    attention.forward = intercept
    try:
        model._prepare_memory_conditioned_features(
            frame_idx=frame_index,
            is_init_cond_frame=False,
            current_vision_feats=vision_feats[-1:],
            current_vision_pos_embeds=vision_feats[-1:],  # unused by the assembly
            feat_sizes=feat_sizes[-1:],
            output_dict=memory_bank,
            num_frames=num_frames,
            track_in_reverse=reverse,
        )
    finally:
        if shadowed is None:
            del attention.forward
        else:
            attention.forward = shadowed
    return inputs["memory"], inputs["memory_pos"], int(inputs["num_obj_ptr_tokens"])
