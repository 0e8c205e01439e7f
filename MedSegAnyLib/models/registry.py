"""Load a model by catalog id into the interface the session uses."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from .base import SliceModel


def load_slice_model(model_id: str, device: str | None = None, checkpoint: str | Path | None = None) -> SliceModel:
    """A 2D slice-wise model (LiteMedSAM today) ready on ``device`` ("auto", "cpu", "cuda", "mps")."""
    from .catalog import get_card

    card = get_card(model_id)
    if card.family == "litemedsam":
        from .litemedsam import LiteMedSamModel

        return LiteMedSamModel(checkpoint=checkpoint, device=device)
    raise ModelError(
        f"model {card.id} ({card.family} family) cannot run in the slice-wise session yet",
        "use --model litemedsam",
    )
