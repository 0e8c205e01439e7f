"""Undo/redo of session interactions, stored as per-slice differences (never whole volumes).

Each interaction (``add_prompts``, ``add_mask``, a ``propagate`` run, ``remove_object``) is one
:class:`HistoryEntry`: for every slice it changed, the slice's state before and after (mask bits packed
8 to a byte, its source and origin, and its logits in "exclusive" overlap mode), and for every object it
touched, the object's small bookkeeping (prompts, roles, stop reasons) before and after. An interrupted
propagation is one entry too: the slices it wrote before it was closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Undo steps kept; the oldest are forgotten first (each holds only the slices it changed).
MAX_HISTORY = 50


@dataclass(frozen=True)
class SliceState:
    """One object's slice: packed mask bits, where it came from, its raw logits (exclusive mode only) and
    its mean logit inside the mask (a 2D model's stop rule scales by the prompted slice's).

    The logits are kept as the packed bits of the pixels that hold one and their values: the session
    stores ``-inf`` outside an object's raw mask (:func:`~medsegany.session_overlap.stored_logits`), and
    whole frames made an exclusive-mode propagation's undo step as large as every logit it wrote
    (4.3 MB against 0.5 MB for the same propagation in independent mode, 40 slices of 256 x 256).
    """

    mask_packed: np.ndarray
    shape: tuple[int, int]
    source: str | None
    origin: tuple[int, int] | None
    logits_kept: tuple[np.ndarray, np.ndarray] | None  # (packed bits where a logit is, those logits)
    confidence: float | None = None

    def mask(self) -> np.ndarray:
        count = self.shape[0] * self.shape[1]
        return np.unpackbits(self.mask_packed, count=count).reshape(self.shape).astype(bool)

    def logits(self) -> np.ndarray | None:
        """The slice's raw logits as the session stored them (``-inf`` where there was none), or None."""
        if self.logits_kept is None:
            return None
        where_packed, values = self.logits_kept
        count = self.shape[0] * self.shape[1]
        where = np.unpackbits(where_packed, count=count).reshape(self.shape).astype(bool)
        logits = np.full(self.shape, -np.inf, dtype=values.dtype)
        logits[where] = values
        return logits

    def same_as(self, other: SliceState) -> bool:
        mine, theirs = self.logits_kept, other.logits_kept
        logits_equal = (mine is None and theirs is None) or (
            mine is not None
            and theirs is not None
            and all(np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True))
        )
        return (
            self.source == other.source
            and self.origin == other.origin
            and self.confidence == other.confidence
            and np.array_equal(self.mask_packed, other.mask_packed)
            and logits_equal
        )


@dataclass(frozen=True)
class ObjectRecord:
    """An object's bookkeeping (everything but its mask, which is kept per slice)."""

    name: str
    color_rgb: tuple[float, float, float]
    axis: int | None
    prompts: dict
    mask_prompts: dict  # slice -> packed mask bytes (comparable)
    roles: dict
    dirty: frozenset
    stop_reasons: dict
    ran: frozenset = frozenset()  # (key, step) of the runs that ran to their end
    # (direction, range) of the last complete propagation; not compared: a re-run that changed nothing else
    # is no undo step
    last_run: Any = field(default=None, compare=False)


@dataclass
class HistoryEntry:
    """One interaction: ``slices[(object_id, axis, slice_index)] = (before, after)``, ``objects[id] = (before,
    after)`` where None means the object did not exist."""

    label: str
    slices: dict[tuple[int, int, int], tuple[SliceState, SliceState]] = field(default_factory=dict)
    objects: dict[int, tuple[ObjectRecord | None, ObjectRecord | None]] = field(default_factory=dict)


class Transaction:
    """Collects the states before the changes of one interaction; :meth:`finish` computes the after states."""

    def __init__(self, label: str, capture_slice, capture_object) -> None:
        self.label = label
        self._capture_slice = capture_slice
        self._capture_object = capture_object
        self._slices_before: dict[tuple[int, int, int], SliceState] = {}
        self._objects_before: dict[int, ObjectRecord | None] = {}

    def touch_slice(self, object_id: int, axis: int, slice_index: int) -> None:
        """Call before changing a slice of an object (the first call saves its state)."""
        key = (object_id, axis, slice_index)
        if key not in self._slices_before:
            self._slices_before[key] = self._capture_slice(object_id, axis, slice_index)

    def touch_object(self, object_id: int) -> None:
        """Call before changing an object's bookkeeping, creating or removing it."""
        if object_id not in self._objects_before:
            self._objects_before[object_id] = self._capture_object(object_id)

    def finish(self) -> HistoryEntry | None:
        entry = HistoryEntry(self.label)
        for key, before in self._slices_before.items():
            after = self._capture_slice(*key)
            if not before.same_as(after):
                entry.slices[key] = (before, after)
        last_run_only = {}
        for object_id, before in self._objects_before.items():
            after = self._capture_object(object_id)
            if before != after:
                entry.objects[object_id] = (before, after)
            elif before is not None and after is not None and before.last_run != after.last_run:
                last_run_only[object_id] = (before, after)
        # an object whose masks the step changed takes its last run along: without it, undoing a re-run that
        # changed masks and nothing else of the object left it the undone run's, and the same propagation
        # asked again was skipped as complete (one whose masks did not change keeps the run it has: it
        # gave them, and undo leaves its SAM 2 memory alone)
        changed_masks = {object_id for object_id, _, _ in entry.slices}
        entry.objects.update((oid, states) for oid, states in last_run_only.items() if oid in changed_masks)
        return entry if entry.slices or entry.objects else None


class History:
    """The undo and redo stacks."""

    def __init__(self, max_entries: int = MAX_HISTORY) -> None:
        self.max_entries = max_entries
        self.undo_stack: list[HistoryEntry] = []
        self.redo_stack: list[HistoryEntry] = []

    def push(self, entry: HistoryEntry | None) -> None:
        if entry is None:
            return
        self.undo_stack.append(entry)
        del self.undo_stack[: -self.max_entries]
        self.redo_stack.clear()

    def entries(self) -> list[str]:
        return [entry.label for entry in self.undo_stack]


def pack_mask(mask_frame: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask_frame, dtype=bool))


def capture_slice_state(
    mask_frame: np.ndarray, source: str | None, origin: Any, logits: Any, confidence: float | None = None
) -> SliceState:
    kept = None
    if logits is not None:
        logits = np.asarray(logits)
        where = logits != -np.inf
        kept = (pack_mask(where), logits[where])  # boolean indexing copies
    return SliceState(pack_mask(mask_frame), tuple(mask_frame.shape), source, origin, kept, confidence)
