"""A volume seen as 2D frames along one IJK axis, and the frame <-> volume index bookkeeping.

Frame convention: along IJK axis ``a`` the frame at index ``s`` is ``np.take(array_kji, s, axis=2 - a)``;
its rows and columns are the two remaining KJI axes in order (axis K: rows J, cols I; axis J: rows K,
cols I; axis I: rows K, cols J). Prompt coordinates in a frame are x = column, y = row.
"""

from __future__ import annotations

import numpy as np

from .errors import PromptError
from .geometry import kji_axis

AXIS_NAMES = ("I", "J", "K")


def frame_of(array_kji: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A view of one frame of a KJI array (no copy)."""
    return _frame_view(array_kji, axis, index)


def _frame_view(array_kji: np.ndarray, axis: int, index: int) -> np.ndarray:
    # Basic slicing returns views; np.take would copy a 512 x 512 frame each call.
    if axis == 2:
        return array_kji[index, :, :]
    if axis == 1:
        return array_kji[:, index, :]
    if axis == 0:
        return array_kji[:, :, index]
    raise ValueError(f"axis must be 0 (I), 1 (J) or 2 (K), not {axis}")


def set_frame(array_kji: np.ndarray, axis: int, index: int, frame: np.ndarray) -> None:
    """Write one frame into a KJI array in place."""
    _frame_view(array_kji, axis, index)[...] = frame


def frame_count(shape_kji: tuple[int, int, int], axis: int) -> int:
    return shape_kji[kji_axis(axis)]


def frame_shape(shape_kji: tuple[int, int, int], axis: int) -> tuple[int, int]:
    remaining = [size for position, size in enumerate(shape_kji) if position != kji_axis(axis)]
    return remaining[0], remaining[1]


def clip_slice_range(slice_range: tuple[int, int] | None, count: int) -> tuple[int, int]:
    """``slice_range`` (inclusive; None: every slice) within ``0..count - 1``; PromptError when nothing
    of it is left."""
    if slice_range is None:
        return 0, count - 1
    low, high = max(0, slice_range[0]), min(count - 1, slice_range[1])
    if low > high:
        raise PromptError(f"slice range {slice_range} is empty", f"give a range within 0..{count - 1}")
    return low, high
