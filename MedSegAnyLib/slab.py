"""A slab: the slices ``first..last`` (inclusive) of a volume along one IJK axis, segmented as a volume
of its own.

When only a slab around the prompt fits in memory (the last plan of
:func:`medsegany.memory_estimate.plan_memory`), or ``--slice-range`` limits a run, the CLI hands the
session the slab instead of the whole volume. The session then windows, caches and masks only the slab's
slices, which is what the estimate counts: for a 512 x 512 x 1500 CT that is 375 MiB of windowed copy and
375 MiB of mask per object less than a range limit inside the whole volume holds.

The slab's voxels are a view of the volume's (no copy). Its IJK->RAS matrix keeps every voxel where it
was in RAS. Prompts move into the slab's indices here, and results move back into the volume's grid.
The session is told the whole volume's shape (``whole_shape_ijk``): SAM 2 scales its object pointers'
distances by the number of slices, so a slab gives the logits of the same range in the whole volume.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import PromptError
from .geometry import kji_axis
from .prompts import MaskPrompt, SlicePrompts
from .slices import AXIS_NAMES
from .volume import Volume


@dataclass(frozen=True)
class Slab:
    """Slices ``first..last`` (inclusive) along IJK ``axis`` (0 = I, 1 = J, 2 = K) of a volume."""

    axis: int
    first: int
    last: int

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2) or not 0 <= self.first <= self.last:
            raise ValueError(f"not a slab: axis {self.axis}, slices {self.first}..{self.last}")

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def describe(self) -> str:
        return f"{AXIS_NAMES[self.axis]} {self.first}..{self.last}"

    def index_kji(self) -> tuple[slice, slice, slice]:
        """The slab's part of a KJI array (basic slicing: a view)."""
        index = [slice(None)] * 3
        index[kji_axis(self.axis)] = slice(self.first, self.last + 1)
        return (index[0], index[1], index[2])

    def crop(self, volume: Volume) -> Volume:
        """The slab as a volume: a view of the voxels, the IJK->RAS matrix moved by ``first`` slices."""
        if self.last >= volume.shape_ijk[self.axis]:
            raise PromptError(
                f"slices {self.describe()} go beyond the volume's {volume.shape_ijk[self.axis]} slices",
                f"give a range within 0..{volume.shape_ijk[self.axis] - 1}",
            )
        offset_ijk = np.zeros(3)
        offset_ijk[self.axis] = self.first
        ijk_to_ras = np.array(volume.ijk_to_ras, dtype=float)
        ijk_to_ras[:3, 3] += ijk_to_ras[:3, :3] @ offset_ijk
        return Volume(volume.voxels_kji[self.index_kji()], ijk_to_ras, volume.name, dict(volume.metadata))

    def holds(self, prompts: SlicePrompts | MaskPrompt) -> bool:
        """Whether ``prompts`` lie on one of the slab's slices (prompts on another axis cross the slab)."""
        return prompts.axis == self.axis and self.first <= prompts.slice_index <= self.last

    def prompts_in_slab(self, prompts: SlicePrompts | MaskPrompt) -> SlicePrompts | MaskPrompt:
        """``prompts`` (volume indices) in the slab's indices; ValueError unless :meth:`holds`."""
        if not self.holds(prompts):
            raise ValueError(
                f"prompts on {prompts.axis_name}={prompts.slice_index} are not in {self.describe()}"
            )
        if isinstance(prompts, MaskPrompt):  # its mask lies in the slice's plane: only the index moves
            return replace(prompts, slice_index=prompts.slice_index - self.first)
        box = prompts.box_ijk
        if box is not None:
            box = tuple(
                value - self.first if index % 3 == self.axis else value for index, value in enumerate(box)
            )
        points = tuple(
            tuple(value - self.first if index == self.axis else value for index, value in enumerate(point))
            for point in prompts.points_ijk
        )
        return replace(prompts, slice_index=prompts.slice_index - self.first, box_ijk=box, points_ijk=points)

    def to_volume_index(self, slab_index: int) -> int:
        """A slice index of the slab as the volume's index along the slab's axis."""
        return slab_index + self.first

    def paste(self, slab_kji: np.ndarray, shape_kji: tuple[int, int, int]) -> np.ndarray:
        """A KJI array of the volume's ``shape_kji``: ``slab_kji`` on the slab's slices, 0 elsewhere."""
        volume_kji = np.zeros(shape_kji, dtype=slab_kji.dtype)
        volume_kji[self.index_kji()] = slab_kji
        return volume_kji


def one_axis(objects: list[Any]) -> int | None:
    """The IJK axis every prompt of ``objects`` (``prompt_file.ObjectPrompts``) lies on, or None when they
    use several (a slab along one axis would cut the others' slices)."""
    axes = {prompts.axis for entry in objects for prompts in entry.prompts}
    return axes.pop() if len(axes) == 1 else None


def objects_in_slab(objects: list[Any], slab: Slab) -> tuple[list[Any], int]:
    """``objects`` with only their prompts on the slab's slices, in the slab's indices (an object may be
    left with none: it stays, so that labels keep their values, and is not propagated), and the count
    of prompts left out. PromptError when no prompt lies in the slab."""
    kept, left_out = [], 0
    for entry in objects:
        inside = tuple(slab.prompts_in_slab(prompts) for prompts in entry.prompts if slab.holds(prompts))
        left_out += len(entry.prompts) - len(inside)
        kept.append(replace(entry, prompts=inside))
    if not any(entry.prompts for entry in kept):
        prompted = sorted({prompts.slice_index for entry in objects for prompts in entry.prompts})
        raise PromptError(
            f"slices {slab.describe()} hold no prompt (prompted: {prompted})",
            "include a prompted slice in --slice-range",
        )
    return kept, left_out


def objects_in_range(objects: list[Any], slice_range: tuple[int, int]) -> tuple[list[Any], int]:
    """``objects`` prompted on several axes, with only their prompts on slices ``low..high`` (inclusive)
    of each prompt's own axis, where a range that cannot crop (:func:`one_axis` None) limits the
    propagation; and the count left out, as :func:`objects_in_slab` (indices unchanged)."""
    low, high = slice_range
    kept, left_out = [], 0
    for entry in objects:
        inside = tuple(prompts for prompts in entry.prompts if low <= prompts.slice_index <= high)
        left_out += len(entry.prompts) - len(inside)
        kept.append(replace(entry, prompts=inside))
    if not any(entry.prompts for entry in kept):
        prompted = sorted(
            {f"{prompts.axis_name}={prompts.slice_index}" for e in objects for prompts in e.prompts}
        )
        raise PromptError(
            f"slices {low}..{high} hold no prompt (prompted: {', '.join(prompted)})",
            "include a prompted slice in --slice-range",
        )
    return kept, left_out
