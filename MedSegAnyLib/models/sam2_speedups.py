"""Exact speed-ups of Meta's SAM 2 modules for inference: same numbers, less repeated work.

- Hiera's absolute position embedding is re-interpolated (bicubic, 96 x 7 x 7 -> 96 x 128 x 128 at 512 px)
  on every image: 15 ms of the 330 ms bf16 encoder on the 2-core CPU. With frozen weights it depends only
  on the feature size, so it is computed once per size and kept (inference mode only: a tensor made
  there cannot take part in autograd, and training must see the live parameters).
"""

from __future__ import annotations

from typing import Any

MEMO_ATTRIBUTE = "_medsegany_pos_embed_memo"


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
