"""Non-overlapping objects ("exclusive" overlap): each voxel goes to the object with the highest logit.

Each object keeps its own raw logits on each of its slices (float16, ``-inf`` outside its raw mask, so
``logits > 0`` is the raw mask); the masks the session shows are resolved slice by slice from them.
A tie goes to the object added later (as in a labelmap, where later objects are drawn on top).
"""

from __future__ import annotations

import numpy as np

#: Logits are clipped to this range before float16 storage (float16 overflows at 65504; SAM 2 uses -1024).
LOGIT_LIMIT = 1.0e4
#: The logit given to a mask the user drew (add_mask): confidently inside, comparable with model logits.
DRAWN_MASK_LOGIT = 20.0


def stored_logits(logits_frame: np.ndarray | None, mask_frame: np.ndarray) -> np.ndarray:
    """Raw logits to keep for a slice: the model's where the mask is, ``-inf`` elsewhere."""
    mask_frame = np.asarray(mask_frame, dtype=bool)
    if logits_frame is None:
        values = np.full(mask_frame.shape, DRAWN_MASK_LOGIT, dtype=np.float32)
    else:
        # a positive logit is kept even where the model's own mask said 0 (components dropped by the 2D path)
        values = np.clip(
            np.maximum(np.asarray(logits_frame, dtype=np.float32), 1e-3), -LOGIT_LIMIT, LOGIT_LIMIT
        )
    return np.where(mask_frame, values, -np.inf).astype(np.float16)


def resolve_exclusive(
    logits_by_object: dict[int, np.ndarray | None], shape: tuple[int, int]
) -> dict[int, np.ndarray]:
    """Each object's exclusive mask on one slice from its raw logits (None: nothing on this slice)."""
    present = {oid: logits for oid, logits in logits_by_object.items() if logits is not None}
    masks = {oid: np.zeros(shape, dtype=bool) for oid in logits_by_object}
    if not present:
        return masks
    ids = list(present)
    stack = np.stack([present[oid].astype(np.float32) for oid in ids])
    # argmax returns the first maximum: reverse so that the later object wins a tie
    winner = len(ids) - 1 - np.argmax(stack[::-1], axis=0)
    for position, oid in enumerate(ids):
        masks[oid] = (stack[position] > 0) & (winner == position)
    return masks
