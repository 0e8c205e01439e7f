"""Prompts for one object on one slice, in IJK voxel indices (voxel centres at integers).

A slice is all voxels with index ``slice_index`` along IJK ``axis`` (0=I, 1=J, 2=K). Its frame is
``np.take(voxels_kji, slice_index, axis=2 - axis)``; a frame's columns (x) run along the lower of the two
remaining IJK axes and its rows (y) along the higher one:

===========  ==========  ==========
slice axis   x (column)  y (row)
===========  ==========  ==========
K (2)        I           J
J (1)        I           K
I (0)        J           K
===========  ==========  ==========

so a voxel at IJK ``p`` on the slice is ``frame[y, x]`` with ``(x, y) = ijk_to_frame_xy(p, axis)``.

Boxes are two opposite corners (inclusive voxel indices) that share the slice index; points carry a
label, 1 = inside the object, 0 = outside. :func:`make_slice_prompts` checks everything against a volume
and raises :class:`~medsegany.errors.PromptError` with a one-line problem and fix.

>>> import numpy as np
>>> from medsegany.volume import Volume
>>> volume = Volume(np.zeros((5, 20, 30)), np.eye(4))
>>> prompts = make_slice_prompts(volume, box_ijk=(12, 3, 2.2, 4, 9, 1.9))
>>> prompts.axis, prompts.slice_index, prompts.box_ijk
(2, 2, (4.0, 3.0, 2.0, 12.0, 9.0, 2.0))
>>> prompts.box_frame_xyxy().tolist()
[4.0, 3.0, 12.0, 9.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import PromptError

if TYPE_CHECKING:
    from .volume import Volume

AXIS_NAMES = ("I", "J", "K")
Box6 = tuple[float, float, float, float, float, float]
Point3 = tuple[float, float, float]

#: Two corners (or points) are on the same slice when they differ by less than half a voxel on the axis.
SAME_SLICE_TOLERANCE = 0.5


def frame_axes_ijk(axis: int) -> tuple[int, int]:
    """The IJK axes along a frame's x (columns) and y (rows) for slices along ``axis``."""
    _check_axis(axis)
    x_axis, y_axis = (a for a in range(3) if a != axis)
    return x_axis, y_axis


def snap_index(coordinate: float) -> int:
    """Nearest voxel index; halves go up (2.5 -> 3), unlike Python's round (2.5 -> 2)."""
    return math.floor(float(coordinate) + 0.5)


def _check_axis(axis: int) -> None:
    if axis not in (0, 1, 2):
        raise PromptError(f"slice axis {axis!r} is not 0 (I), 1 (J) or 2 (K)", "give axis 0, 1 or 2")


def ijk_to_frame_xy(points_ijk: np.ndarray | Sequence[Sequence[float]], axis: int) -> np.ndarray:
    """Frame (x, y) of IJK points on a slice along ``axis``: (N, 3) -> (N, 2), or (3,) -> (2,)."""
    x_axis, y_axis = frame_axes_ijk(axis)
    points = np.asarray(points_ijk, dtype=float)
    return points[..., [x_axis, y_axis]]


def frame_xy_to_ijk(
    points_frame_xy: np.ndarray | Sequence[Sequence[float]], axis: int, slice_index: int
) -> np.ndarray:
    """IJK points of frame (x, y) points on slice ``slice_index`` along ``axis``: (N, 2) -> (N, 3)."""
    x_axis, y_axis = frame_axes_ijk(axis)
    points_xy = np.asarray(points_frame_xy, dtype=float)
    points_ijk = np.empty((*points_xy.shape[:-1], 3))
    points_ijk[..., x_axis] = points_xy[..., 0]
    points_ijk[..., y_axis] = points_xy[..., 1]
    points_ijk[..., axis] = slice_index
    return points_ijk


def mask_frame_bbox_xyxy(mask_frame: np.ndarray) -> np.ndarray | None:
    """(x0, y0, x1, y1) of the nonzero pixels of a 2D mask, inclusive pixel indices; None when empty."""
    mask = np.asarray(mask_frame)
    if mask.ndim != 2:
        raise ValueError(f"mask_frame must be 2D, got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=float)


@dataclass(frozen=True)
class SlicePrompts:
    """A box and/or labelled points for one object on one slice, in IJK voxel indices.

    Build it with :func:`make_slice_prompts`, which also checks it against the volume; constructing it
    directly only checks that its parts agree with each other.
    """

    axis: int  # IJK axis of the slice: 0=I, 1=J, 2=K
    slice_index: int
    box_ijk: Box6 | None  # (i0, j0, k0, i1, j1, k1), min then max corner, both on slice_index
    points_ijk: tuple[Point3, ...] = ()
    point_labels: tuple[int, ...] = ()  # 1 positive, 0 negative

    def __post_init__(self) -> None:
        _check_axis(self.axis)
        if len(self.point_labels) != len(self.points_ijk):
            raise PromptError(
                f"{len(self.points_ijk)} points but {len(self.point_labels)} labels",
                "give one label (1 inside, 0 outside) per point",
            )
        if any(label not in (0, 1) for label in self.point_labels):
            raise PromptError(
                f"point labels {self.point_labels} are not all 0 or 1", "use 1 inside, 0 outside"
            )
        if self.box_ijk is not None and (
            self.box_ijk[self.axis] != self.slice_index or self.box_ijk[self.axis + 3] != self.slice_index
        ):
            raise PromptError(
                f"box {self.box_ijk} is not on slice {AXIS_NAMES[self.axis]}={self.slice_index}",
                "build prompts with make_slice_prompts",
            )
        if any(snap_index(point[self.axis]) != self.slice_index for point in self.points_ijk):
            raise PromptError(
                f"a point is not on slice {AXIS_NAMES[self.axis]}={self.slice_index}",
                "build prompts with make_slice_prompts",
            )

    @property
    def axis_name(self) -> str:
        return AXIS_NAMES[self.axis]

    def box_frame_xyxy(self) -> np.ndarray | None:
        """The box as float (x0, y0, x1, y1) in frame pixels (x = column, y = row), or None."""
        if self.box_ijk is None:
            return None
        corners_xy = ijk_to_frame_xy([self.box_ijk[:3], self.box_ijk[3:]], self.axis)
        return corners_xy.reshape(4)

    def points_frame_xy(self) -> np.ndarray:
        """The points as an (N, 2) float array of frame (x, y); (0, 2) when there are none."""
        if not self.points_ijk:
            return np.zeros((0, 2))
        return ijk_to_frame_xy(self.points_ijk, self.axis)

    def labels_array(self) -> np.ndarray:
        """The point labels as an (N,) int array."""
        return np.asarray(self.point_labels, dtype=int).reshape(len(self.point_labels))


def _numbers(values, count: int, what: str) -> tuple[float, ...]:
    """``count`` finite floats from ``values``, else a PromptError naming ``what``."""
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise PromptError(f"{what} {values!r} is not {count} numbers", f"give {count} numbers") from None
    if len(numbers) != count:
        raise PromptError(f"{what} has {len(numbers)} numbers, it needs {count}", f"give {count} numbers")
    if not all(math.isfinite(n) for n in numbers):
        raise PromptError(f"{what} {numbers} contains NaN or infinity", "give finite voxel coordinates")
    return numbers


def _flat_axes(corner0: Sequence[float], corner1: Sequence[float]) -> list[int]:
    return [a for a in range(3) if abs(corner0[a] - corner1[a]) < SAME_SLICE_TOLERANCE]


def _box_slice(box_ijk: Sequence[float], axis: int | None) -> int:
    """The slice axis of a box: the one IJK axis on which its corners differ by < 0.5 voxel."""
    corner0, corner1 = box_ijk[:3], box_ijk[3:]
    flat = _flat_axes(corner0, corner1)
    if axis is not None:
        _check_axis(axis)
        gap = abs(corner0[axis] - corner1[axis])
        if gap >= SAME_SLICE_TOLERANCE:
            raise PromptError(
                f"box corners are {gap:g} voxels apart along {AXIS_NAMES[axis]}, the slice axis",
                f"give both corners the same {AXIS_NAMES[axis]} index",
            )
        if len(flat) > 1:
            others = ", ".join(AXIS_NAMES[a] for a in flat if a != axis)
            raise PromptError(
                f"box has zero width along {others} on its {AXIS_NAMES[axis]} slice",
                "drag a box at least one voxel wide and high",
            )
        return axis
    if not flat:
        raise PromptError(
            f"box corners {tuple(corner0)} and {tuple(corner1)} share no slice index (a 3D box)",
            "give two corners with the same I, J or K index (a rectangle on one slice)",
        )
    if len(flat) > 1:
        raise PromptError(
            f"box {tuple(box_ijk)} has zero width or height (corners share {len(flat)} indices)",
            "give two opposite corners of a rectangle at least one voxel wide and high",
        )
    return flat[0]


def _in_plane_clipped(box_ijk: Sequence[float], axis: int, shape_ijk: Sequence[int]) -> Box6:
    """Min/max corners clipped to the volume in-plane; a box entirely outside is refused."""
    low = [min(box_ijk[a], box_ijk[a + 3]) for a in range(3)]
    high = [max(box_ijk[a], box_ijk[a + 3]) for a in range(3)]
    for a in frame_axes_ijk(axis):
        last = shape_ijk[a] - 1
        # Voxel a covers [a - 0.5, a + 0.5]: a box that reaches no voxel's extent is entirely outside.
        if high[a] < -0.5 or low[a] > last + 0.5:
            raise PromptError(
                f"box {AXIS_NAMES[a]} range {low[a]:g}..{high[a]:g} is outside the volume (0..{last})",
                "draw the box over the image",
            )
        low[a], high[a] = min(max(low[a], 0.0), last), min(max(high[a], 0.0), last)
        if high[a] - low[a] < SAME_SLICE_TOLERANCE:
            raise PromptError(
                f"box only touches the volume's edge along {AXIS_NAMES[a]} (0..{last})",
                "draw the box over the image",
            )
    return (low[0], low[1], low[2], high[0], high[1], high[2])


def _check_slice_in_volume(axis: int, slice_index: int, shape_ijk: Sequence[int], what: str) -> None:
    if not 0 <= slice_index < shape_ijk[axis]:
        raise PromptError(
            f"{what} is on slice {AXIS_NAMES[axis]}={slice_index}, "
            f"outside the volume (0..{shape_ijk[axis] - 1})",
            "place it on a slice of the image",
        )


def _point_axis(points: Sequence[Point3], axis: int | None) -> int:
    """Slice axis of a point-only prompt: given, or the one axis on which all points share an index."""
    if axis is not None:
        _check_axis(axis)
        return axis
    shared = [a for a in range(3) if len({snap_index(p[a]) for p in points}) == 1]
    if len(shared) == 1:
        return shared[0]
    if not shared:
        raise PromptError(
            "the points are not on one slice (no I, J or K index is common to all)",
            "put all points of one prompt on the same slice",
        )
    raise PromptError(
        "points alone do not say which slice axis they are on "
        f"(could be {'/'.join(AXIS_NAMES[a] for a in shared)})",
        "give the slice axis (I, J or K; --axis K on the command line, axis=2 in Python), or add a box",
    )


@dataclass(frozen=True, eq=False)
class MaskPrompt:
    """An object's mask on one slice given as that slice's prompt (a slice labelled by hand): the object is
    exactly there (:meth:`~medsegany.session.SegmentationSession.add_mask`). ``mask_frame``: bool (H, W)
    in the frame convention of :mod:`medsegany.slices`. No box and no points, as :class:`SlicePrompts`
    tells them (``box_ijk`` None, ``points_ijk`` empty), for code that lists prompts."""

    axis: int
    slice_index: int
    mask_frame: np.ndarray
    box_ijk: None = None
    points_ijk: tuple[Point3, ...] = ()

    def __post_init__(self) -> None:
        _check_axis(self.axis)

    @property
    def axis_name(self) -> str:
        return AXIS_NAMES[self.axis]


def make_slice_prompts(
    volume: Volume,
    box_ijk: Sequence[float] | None = None,
    points_ijk: Sequence[Sequence[float]] = (),
    point_labels: Sequence[int] = (),
    axis: int | None = None,
    corrects_a_mask: bool = False,
) -> SlicePrompts:
    """Check prompts for one object on one slice of ``volume`` and put them in canonical form.

    ``box_ijk``: two opposite corners (i0, j0, k0, i1, j1, k1) in any order; their slice axis is the
    one on which they differ by < 0.5 voxel (or ``axis``). ``point_labels`` defaults to all positive.
    The slice coordinate is snapped to the nearest index; a box partly outside the volume is clipped
    in-plane to it; points are clipped in-plane to the voxel centres when they lie within half a voxel.
    ``corrects_a_mask``: negative points alone are allowed, to remove a part of the slice's mask (the
    session refuses them on a slice where the object has none: :meth:`SegmentationSession.add_prompts`).
    """
    shape_ijk = tuple(int(n) for n in volume.shape_ijk)
    points = [_numbers(p, 3, f"point {n}") for n, p in enumerate(points_ijk)]
    labels = list(point_labels)
    if not labels:
        labels = [1] * len(points)
    if len(labels) != len(points):
        raise PromptError(
            f"{len(points)} points but {len(labels)} labels", "give one label (1 inside, 0 outside) per point"
        )
    for n, label in enumerate(labels):
        if not isinstance(label, (int, float, np.integer, np.floating, np.bool_)) or label not in (0, 1):
            raise PromptError(
                f"label {label!r} of point {n} is not 0 or 1", "use 1 inside the object, 0 outside"
            )
    labels = [int(label) for label in labels]

    box: Box6 | None = None
    if box_ijk is not None:
        box_numbers = _numbers(box_ijk, 6, "box")
        axis = _box_slice(box_numbers, axis)
        slice_index = snap_index((box_numbers[axis] + box_numbers[axis + 3]) / 2.0)
        _check_slice_in_volume(axis, slice_index, shape_ijk, "box")
        clipped = list(_in_plane_clipped(box_numbers, axis, shape_ijk))
        clipped[axis] = clipped[axis + 3] = float(slice_index)
        box = tuple(clipped)
    else:
        if not points:
            raise PromptError("no box and no point was given", "give a box or at least one positive point")
        axis = _point_axis(points, axis)
        slice_index = snap_index(points[0][axis])
        _check_slice_in_volume(axis, slice_index, shape_ijk, "point 0")

    if box is None and 1 not in labels and not corrects_a_mask:
        raise PromptError(
            "only negative points and no box: nothing says where the object is",
            "add a box or a positive point",
        )

    snapped_points: list[Point3] = []
    for n, point in enumerate(points):
        point_slice = snap_index(point[axis])
        if point_slice != slice_index:
            where = "the box's slice" if box is not None else "point 0's slice"
            raise PromptError(
                f"point {n} is on slice {AXIS_NAMES[axis]}={point_slice}, not on {where} "
                f"{AXIS_NAMES[axis]}={slice_index}",
                "put the box and all points of one prompt on the same slice",
            )
        coordinates = list(point)
        for a in frame_axes_ijk(axis):
            last = shape_ijk[a] - 1
            if not -0.5 <= coordinates[a] <= last + 0.5:
                raise PromptError(
                    f"point {n} {AXIS_NAMES[a]}={coordinates[a]:g} is outside the volume (0..{last})",
                    "place points on the image",
                )
            coordinates[a] = min(max(coordinates[a], 0.0), float(last))
        coordinates[axis] = float(slice_index)
        snapped_points.append(tuple(coordinates))

    return SlicePrompts(axis, int(slice_index), box, tuple(snapped_points), tuple(labels))


def point_ijk_from_ras(volume: Volume, point_ras: Sequence[float]) -> Point3:
    """Continuous IJK indices of a RAS point (millimetres), through the volume's ijk_to_ras."""
    point = _numbers(point_ras, 3, "RAS point")
    return tuple(float(v) for v in volume.ras_to_ijk_points(np.asarray(point)))


def box_ijk_from_corners_ras(volume: Volume, corners_ras: np.ndarray, name: str) -> Box6:
    """An IJK box (min then max corner) from the corners (N, 3) of a box drawn flat on one slice (a Slicer
    ROI's 8 corners): the slice axis is the one IJK axis along which all corners lie within half a voxel,
    and the box spans their range on the other two (an ROI rotated in-plane gives its bounding box).
    ``name`` says which box in messages. In-plane range checks are left to :func:`make_slice_prompts`."""
    corners_ijk = volume.ras_to_ijk_points(np.asarray(corners_ras, dtype=float))
    low, high = corners_ijk.min(axis=0), corners_ijk.max(axis=0)
    spans = high - low
    flat = [a for a in range(3) if spans[a] < SAME_SLICE_TOLERANCE]
    if len(flat) != 1:
        gaps = ", ".join(f"{AXIS_NAMES[a]} {spans[a]:.2f}" for a in range(3))
        problem = (
            f"{name} is a 3D box, not a rectangle on one slice (voxel spans: {gaps})"
            if not flat
            else f"{name} has zero width or height in voxels (voxel spans: {gaps})"
        )
        raise PromptError(problem, "draw the ROI in a slice view aligned with the volume (thickness 0)")
    axis = flat[0]
    low[axis] = high[axis] = float(snap_index((low[axis] + high[axis]) / 2.0))
    return (*(float(v) for v in low), *(float(v) for v in high))


def box_ijk_from_ras(volume: Volume, corner0_ras: Sequence[float], corner1_ras: Sequence[float]) -> Box6:
    """An IJK box (min then max corner) from two opposite RAS corners of a rectangle on one slice.

    The slice axis is the one IJK axis on which the two corners map less than half a voxel apart, so this
    works for any ijk_to_ras, oblique or flipped; the slice coordinate is snapped to the nearest index.
    In-plane range checks are left to :func:`make_slice_prompts`.
    """
    corner0 = point_ijk_from_ras(volume, corner0_ras)
    corner1 = point_ijk_from_ras(volume, corner1_ras)
    flat = _flat_axes(corner0, corner1)
    if len(flat) != 1:
        gaps = ", ".join(f"{AXIS_NAMES[a]} {abs(corner0[a] - corner1[a]):.2f}" for a in range(3))
        if flat:
            raise PromptError(
                f"RAS box has zero width or height in voxels (voxel gaps: {gaps})",
                "give two opposite corners of a rectangle on one slice",
            )
        # an oblique (tilted) volume: corners at the same RAS height lie on different slices
        nearest = min(range(3), key=lambda a: abs(corner0[a] - corner1[a]))
        raise PromptError(
            f"RAS box corners are not on one slice of the volume (voxel gaps: {gaps})",
            f"give both corners on one {AXIS_NAMES[nearest]} slice of the volume (an oblique volume's "
            "slices are tilted in RAS), or the box in voxel indices "
            "(--box-ijk, or boxes_ijk in a prompt file)",
        )
    axis = flat[0]
    low = [min(corner0[a], corner1[a]) for a in range(3)]
    high = [max(corner0[a], corner1[a]) for a in range(3)]
    low[axis] = high[axis] = float(snap_index((corner0[axis] + corner1[axis]) / 2.0))
    return (low[0], low[1], low[2], high[0], high[1], high[2])
