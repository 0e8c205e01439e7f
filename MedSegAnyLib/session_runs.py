"""Which slices each prompted slice propagates to: the run plan shared by the 2D and SAM 2 paths.

Every prompted slice (a *key*) has a *role*: 0 for a fresh prompt, or +1 / -1 for a correction made on a
slice that a run in that direction had propagated to. Between two adjacent keys ``a < b``:

- if ``b`` corrects a forward run (role +1) or ``a`` corrects a backward run (role -1), the run that made
  the corrected slice keeps the gap: ``a`` forward up to ``b - 1`` (resp. ``b`` backward down to ``a + 1``),
  so a correction changes only the slices *beyond* it, never those between it and the prompt it came from
  (for SAM 2 what Meta's ``propagate_in_video(start_frame_idx=correction)`` changes, mask for mask; Meta's
  predictor re-run from its first prompt changes those too, as every conditioning frame is in every frame's
  memory: 2, 10 and 12 of about 2500 px on slices 0, 2, 3 after a click on slice 4 of 6 prompted on 1,
  test_sam2_equivalence.py; a deliberate choice, so a correction never moves the slices the user accepted);
- if ``b`` is a backward correction or ``a`` a forward one, the correction owns the gap;
- between two fresh keys, a 2D model splits the gap at the midpoint (each half is closer to its own
  prompt), a SAM 2 model goes forward from ``a`` through to ``b`` as Meta's ``propagate_in_video`` does.

Outside the outermost keys, the lowest key runs backward and the highest forward, to the ends of the
volume. A slice range (:func:`clip_runs`) keeps the runs whose key lies inside it, cut at its edges: the
plan is the whole volume's, so a range never changes which prompt owns a slice, only how far runs go.
A later ``propagate()`` re-runs only the runs that start at a changed key, and (SAM 2) a run between two
keys that has not yet written its whole gap: a fresh key placed past where an outer run had stopped gives
that run the gap up to it, though the run's own key did not change. SAM 2: the slices beyond the next key
keep their masks, where Meta's run from the changed key would go on through that key with the new memory
(a click on slice 2 between boxes on 1 and 4 of 7 moved 2 and 1 px on slices 5 and 6 there, random
weights): each key owns its runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    """Propagate from prompted slice ``key`` in direction ``step`` up to ``last`` (inclusive).

    ``outer`` runs reach past the outermost prompt: the stop rule applies to them. Inner runs end at the
    next prompt (a 2D model still applies its stop rule there; SAM 2 carries on to the prompt).
    """

    key: int
    step: int
    last: int
    outer: bool


def plan_runs(
    roles: dict[int, int], low: int, high: int, direction: str = "both", family: str = "slice"
) -> list[Run]:
    """Runs for the keys (``roles``: slice -> 0, +1 or -1) within ``low..high``.

    ``family``: "slice" (2D models) or "sam2".
    """
    keys = sorted(key for key in roles if low <= key <= high)
    runs: list[Run] = []
    if not keys:
        return runs
    if keys[0] > low:
        runs.append(Run(keys[0], -1, low, True))
    if keys[-1] < high:
        runs.append(Run(keys[-1], +1, high, True))
    for a, b in itertools.pairwise(keys):
        if b - a < 2:
            continue
        role_a, role_b = roles[a], roles[b]
        if role_b == +1 or role_a == -1:
            owner = "a" if role_b == +1 else "b"
        elif role_b == -1:
            owner = "b"
        elif role_a == +1 or family == "sam2":
            owner = "a"
        else:
            owner = "split"
        if owner == "a":
            runs.append(Run(a, +1, b - 1, False))
        elif owner == "b":
            runs.append(Run(b, -1, a + 1, False))
        else:
            middle = (a + b) // 2
            if middle > a:
                runs.append(Run(a, +1, middle, False))
            if middle + 1 < b:
                runs.append(Run(b, -1, middle + 1, False))
    if direction == "forward":
        runs = [run for run in runs if run.step > 0]
    elif direction == "backward":
        runs = [run for run in runs if run.step < 0]
    return runs


def clip_runs(runs: list[Run], low: int, high: int) -> tuple[list[Run], set[int]]:
    """(the runs that start inside ``low..high``, cut at its edges; the keys whose runs the range cut).

    A run whose key lies outside the range is dropped (its key is "cut"); a run reaching past an edge ends
    there (its key is "cut" too: its work beyond the range is still to do).
    """
    kept: list[Run] = []
    cut: set[int] = set()
    for run in runs:
        if not low <= run.key <= high:
            cut.add(run.key)
            continue
        last = min(run.last, high) if run.step > 0 else max(run.last, low)
        if last != run.last:
            cut.add(run.key)
        if (last - run.key) * run.step > 0:
            kept.append(Run(run.key, run.step, last, run.outer))
    return kept, cut
