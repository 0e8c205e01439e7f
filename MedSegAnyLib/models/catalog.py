"""The model catalog: one card per public checkpoint (where to get it, how to check it, how to build it).

The facts live in ``catalog.json`` next to this file so that they can be reviewed as data;
``Testing/Python/test_catalog.py`` checks every URL, size and SHA-256 against the project's MODELS.md.

Example::

    >>> card = get_card("medsam2_latest")
    >>> card.family, card.input_size, card.state_dict_key
    ('sam2', 512, 'model')
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from ..errors import ModelError

Family = Literal["sam2", "sam", "litemedsam"]
Status = Literal["supported", "bundled", "unsupported"]

FAMILIES: tuple[str, ...] = ("sam2", "sam", "litemedsam")
STATUSES: tuple[str, ...] = ("supported", "bundled", "unsupported")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelCard:
    """Everything the library knows about one checkpoint.

    Attributes:
        id: stable identifier used on the command line (``sam2.1_hiera_tiny``).
        name: human-readable name.
        family: ``"sam2"`` (memory-propagating video model), ``"sam"`` (2D, slice by slice) or
            ``"litemedsam"`` (2D, bundled).
        status: ``"supported"``, ``"bundled"`` (ships inside a pip package) or ``"unsupported"``.
        status_reason: why a model is unsupported or bundled; empty for supported ones.
        filename: the publisher's file name, also used in the weight store.
        urls: download mirrors, tried in order (empty: manual download and ``models import`` only).
        bytes: exact size in bytes, or None when only an approximate size is known.
        approx_bytes: size to show and to check free disk space against (equals ``bytes`` when exact).
        sha256: published SHA-256, or None (then the hash is recorded on first download: trust on first use).
        license: licence identifier(s) shown before the first download.
        license_note: restrictions or disagreements about the licence that the user must see.
        citation: the paper to cite.
        modalities: imaging modalities the weights were trained for.
        input_size: side of the square network input in pixels (None when unknown).
        sam2_config: Meta sam2 hydra config name (family sam2 only).
        sam2_overrides: hydra overrides applied on top of ``sam2_config`` (MedSAM2 at 512 px).
        sam_registry: ``segment_anything`` registry name (``vit_b``, ``vit_l``, ``vit_h``; family sam only).
        state_dict_key: key holding the state dict inside the checkpoint (``"model"`` for sam2), None when the
            file is the state dict itself.
        bundled_in: importable package that ships the weights (bundled models only).
        notes: anything else worth knowing.
    """

    id: str
    name: str
    family: Family
    status: Status
    status_reason: str
    filename: str
    urls: tuple[str, ...]
    bytes: int | None
    approx_bytes: int | None
    sha256: str | None
    license: str
    license_note: str
    citation: str
    modalities: tuple[str, ...]
    input_size: int | None
    sam2_config: str | None
    sam2_overrides: tuple[str, ...]
    sam_registry: str | None
    state_dict_key: str | None
    bundled_in: str | None
    notes: str

    @property
    def is_usable(self) -> bool:
        """True when the library can build this model (supported or bundled)."""
        return self.status != "unsupported"

    def license_text(self) -> str:
        """The licence as shown to the user before a download: identifier, then any restriction."""
        return f"{self.license}: {self.license_note}" if self.license_note else self.license

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples become lists)."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in vars(self).items()}


def _card_from_dict(entry: dict[str, Any]) -> ModelCard:
    """Build and validate one card; a malformed catalog is a packaging bug, hence ValueError."""
    fields = dict(entry)
    for name in ("urls", "modalities", "sam2_overrides"):
        fields[name] = tuple(fields.get(name) or ())
    try:
        card = ModelCard(**fields)
    except TypeError as error:
        raise ValueError(f"catalog entry {entry.get('id')!r} has wrong fields: {error}") from error
    problems = []
    if card.family not in FAMILIES:
        problems.append(f"family {card.family!r} not in {FAMILIES}")
    if card.status not in STATUSES:
        problems.append(f"status {card.status!r} not in {STATUSES}")
    if card.sha256 is not None and not _SHA256_RE.match(card.sha256):
        problems.append("sha256 is not 64 lowercase hex digits")
    if card.status != "supported" and not card.status_reason:
        problems.append("a bundled or unsupported model needs a status_reason")
    if card.status == "supported":
        if not card.urls:
            problems.append("a supported model needs at least one URL")
        if card.family == "sam2" and not card.sam2_config:
            problems.append("a supported sam2 model needs sam2_config")
        if card.family == "sam" and card.sam_registry not in ("vit_b", "vit_l", "vit_h"):
            problems.append("a supported sam model needs sam_registry vit_b, vit_l or vit_h")
    if card.status == "bundled" and not (card.bundled_in and card.sha256 and card.bytes):
        problems.append("a bundled model needs bundled_in, sha256 and bytes")
    if problems:
        raise ValueError(f"catalog entry {card.id!r}: " + "; ".join(problems))
    return card


@functools.lru_cache(maxsize=1)
def _load_catalog_cached() -> tuple[ModelCard, ...]:
    text = resources.files(__package__).joinpath("catalog.json").read_text(encoding="utf-8")
    document = json.loads(text)
    cards = tuple(_card_from_dict(entry) for entry in document["models"])
    ids = [card.id for card in cards]
    duplicates = sorted({model_id for model_id in ids if ids.count(model_id) > 1})
    if duplicates:
        raise ValueError(f"catalog has duplicate ids: {duplicates}")
    return cards


def load_catalog() -> dict[str, ModelCard]:
    """All model cards by id, in catalog order (parsed once, then cached)."""
    return {card.id: card for card in _load_catalog_cached()}


def get_card(model_id: str) -> ModelCard:
    """The card of ``model_id``; unknown ids raise ModelError naming the closest known ids."""
    catalog = load_catalog()
    if model_id in catalog:
        return catalog[model_id]
    # Case-insensitive exact match first: "MedSAM2_latest" is an obvious typo of "medsam2_latest".
    for known_id, card in catalog.items():
        if known_id.lower() == model_id.lower():
            return card
    # Suggest only models that can be used: "sam2" once suggested samed2 and sam_med2d, both unsupported.
    usable = [known_id for known_id, card in catalog.items() if card.is_usable]
    typed = model_id.lower()
    close = [known_id for known_id in usable if typed and known_id.startswith(typed)] or (
        difflib.get_close_matches(typed, usable, n=3, cutoff=0.5))
    if close:
        fix = f"did you mean {', '.join(close)}? `medsegany models list` shows them all"
    else:
        fix = f"use one of {', '.join(usable)} (`medsegany models list` describes them)"
    raise ModelError(f"unknown model '{model_id}'", fix)
