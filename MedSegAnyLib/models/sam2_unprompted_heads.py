"""SAM 2's mask heads for a tracked frame (no click, no mask), without recomputing their constant inputs.

Why: a tracked frame has no prompt, so Meta's ``_forward_sam_heads`` feeds its prompt encoder one padding
point (coordinates 0, label -1) and asks for the dense positional encoding of the image grid. Both depend
only on the weights and the batch size, yet Meta computes them at every step: 51 of the 494 ATen
operations of a SAM 2.1 tiny tracking step (``benchmarks/step_operations.py``), each a kernel of its own
on a GPU, where a step replayed from a CUDA graph is bound by its number of small kernels (672 kernels,
2.33 ms of GPU work on an H200, 2026-11-28).

:func:`unprompted_embeddings` computes them with Meta's own modules, once per model, batch, device and
autocast setting, and keeps them; :func:`forward_heads_unprompted` is ``_forward_sam_heads`` with
``point_inputs=None, mask_inputs=None`` on those, operation for operation.
``Testing/Python/test_sam2_unprompted_heads.py`` compares every output with Meta's, bitwise.

Kept only where ``sam2_speedups.constants_may_be_kept`` allows (inference mode, outside a CUDA graph
recording and a ``torch.compile`` trace; elsewhere they are computed as Meta does). Loading other weights
into the model afterwards would leave stale entries: build a new model instead (as for ``sam2_speedups``'
position embedding).
"""

from __future__ import annotations

import weakref
from typing import Any

# model -> {(batch, device, autocast on, autocast dtype): (sparse, dense, image_pe)}; weak keys: the
# entries go with the model
_EMBEDDINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _meta_embeddings(model: Any, batch: int, device: Any) -> tuple[Any, Any, Any]:
    """The prompt encoder's outputs for no prompt, computed as Meta's ``_forward_sam_heads`` does."""
    import torch

    coords = torch.zeros(batch, 1, 2, device=device)
    labels = -torch.ones(batch, 1, dtype=torch.int32, device=device)
    sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    return sparse, dense, model.sam_prompt_encoder.get_dense_pe()


def unprompted_embeddings(model: Any, batch: int, device: Any) -> tuple[Any, Any, Any]:
    """(sparse prompt embeddings, dense prompt embeddings, image positional encoding) of a frame with no
    prompt, as Meta's ``_forward_sam_heads`` passes them to the mask decoder; kept per model (see the
    module's docstring for when they are not)."""
    import torch

    from .sam2_speedups import constants_may_be_kept

    if not constants_may_be_kept(device):
        return _meta_embeddings(model, batch, device)
    device_type = torch.device(device).type
    key = (
        int(batch),
        str(device),
        torch.is_autocast_enabled(device_type),
        torch.get_autocast_dtype(device_type),
    )
    kept = _EMBEDDINGS.setdefault(model, {})
    if key not in kept:
        kept[key] = _meta_embeddings(model, batch, device)
    return kept[key]


def forward_heads_unprompted(
    model: Any, backbone_features: Any, high_res_features: list[Any] | None
) -> tuple[Any, Any, Any, Any]:
    """Meta's ``_forward_sam_heads(backbone_features, None, None, high_res_features, multimask)`` for a
    tracked frame, the multimask choice Meta's ``track_step`` makes there (``_use_multimask(False,
    None)``).

    Returns (low-res mask logits (B, 1, h, w) float32, high-res mask logits (B, 1, S, S) float32 at the
    model's image size S, object pointer (B, C), object score logits (B, 1)): the outputs of Meta's that a
    tracking step uses, with the same values.
    """
    import torch
    from sam2.modeling.sam2_base import NO_OBJ_SCORE
    from torch.nn.functional import interpolate

    batch, device = backbone_features.size(0), backbone_features.device
    multimask = model._use_multimask(False, None)
    sparse, dense, image_pe = unprompted_embeddings(model, batch, device)
    low_res_multimasks, ious, output_tokens, object_score_logits = model.sam_mask_decoder(
        image_embeddings=backbone_features,
        image_pe=image_pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=False,
        high_res_features=high_res_features,
    )
    if model.pred_obj_scores:
        is_obj_appearing = object_score_logits > 0
        # the memory's mask is a hard choice between object and none, as the mask itself
        low_res_multimasks = torch.where(is_obj_appearing[:, None, None], low_res_multimasks, NO_OBJ_SCORE)
    low_res_multimasks = low_res_multimasks.float()
    # all candidates, then the kept one, as Meta: upsampling the kept one alone differs in the last bit
    # on a CPU with one thread (its kernel rounds by the number of channels)
    size = (model.image_size, model.image_size)
    high_res_multimasks = interpolate(low_res_multimasks, size=size, mode="bilinear", align_corners=False)
    output_token = output_tokens[:, 0]
    if multimask:
        best = torch.argmax(ious, dim=-1)
        rows = torch.arange(batch, device=device)
        low_res_masks = low_res_multimasks[rows, best].unsqueeze(1)
        high_res_masks = high_res_multimasks[rows, best].unsqueeze(1)
        if output_tokens.size(1) > 1:
            output_token = output_tokens[rows, best]
    else:
        low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks

    obj_ptr = model.obj_ptr_proj(output_token)
    if model.pred_obj_scores:
        # soft for the pointer, unlike the mask (Meta's occlusion handling)
        appearing = object_score_logits.sigmoid() if model.soft_no_obj_ptr else is_obj_appearing.float()
        if model.fixed_no_obj_ptr:
            obj_ptr = appearing * obj_ptr
        obj_ptr = obj_ptr + (1 - appearing) * model.no_obj_ptr
    return low_res_masks, high_res_masks, obj_ptr, object_score_logits
