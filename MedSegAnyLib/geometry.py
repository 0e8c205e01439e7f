"""IJK <-> RAS geometry in Slicer's convention.

A volume's ``ijk_to_ras`` is a 4x4 matrix mapping homogeneous voxel indices (i, j, k, 1), I being the
fastest-varying file axis, to millimetres in RAS. ITK and most files store LPS; RAS = diag(-1,-1,1) LPS.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: LPS <-> RAS flips the first two axes; the matrix is its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ijk_to_ras_matrix(
    spacing_ijk: Sequence[float], origin_lps: Sequence[float], direction_lps: np.ndarray | Sequence[float]
) -> np.ndarray:
    """Build a 4x4 IJK->RAS matrix from ITK's spacing, origin (LPS) and direction (LPS, 3x3 row-major).

    >>> m = ijk_to_ras_matrix([2, 1, 1], [10, 20, 30], np.eye(3))
    >>> m @ [1, 0, 0, 1]
    array([-12., -20.,  30.,   1.])
    """
    direction = np.asarray(direction_lps, dtype=float).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction @ np.diag(np.asarray(spacing_ijk, dtype=float))
    ijk_to_lps[:3, 3] = np.asarray(origin_lps, dtype=float)
    return LPS_TO_RAS @ ijk_to_lps


def itk_geometry_from_ijk_to_ras(
    ijk_to_ras: np.ndarray,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Inverse of :func:`ijk_to_ras_matrix`: (spacing_ijk, origin_lps, direction_lps flattened row-major)."""
    ijk_to_lps = LPS_TO_RAS @ np.asarray(ijk_to_ras, dtype=float)
    columns = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"ijk_to_ras has a zero-length axis: {ijk_to_ras}")
    direction = columns / spacing
    return tuple(spacing.tolist()), tuple(ijk_to_lps[:3, 3].tolist()), tuple(direction.ravel().tolist())


def apply_affine(matrix_4x4: np.ndarray, points_n3: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Apply a 4x4 affine to an (N, 3) or (3,) array of points; returns the same shape."""
    points = np.asarray(points_n3, dtype=float)
    single = points.ndim == 1
    points = np.atleast_2d(points)
    out = points @ np.asarray(matrix_4x4, dtype=float)[:3, :3].T + np.asarray(matrix_4x4, dtype=float)[:3, 3]
    return out[0] if single else out


def slice_axis_of_plane(
    normal_ras: Sequence[float], ijk_to_ras: np.ndarray, tolerance_deg: float = 1.0
) -> int | None:
    """Which IJK axis (0=I, 1=J, 2=K) a plane with this RAS normal cuts at a constant index, if any.

    A slice view is usable when its normal is parallel to one voxel axis's *normal* (the cross product
    of the other two columns), within ``tolerance_deg``; returns None for an oblique view.
    """
    normal = np.asarray(normal_ras, dtype=float)
    normal = normal / np.linalg.norm(normal)
    columns = np.asarray(ijk_to_ras, dtype=float)[:3, :3]
    for axis in range(3):
        a, b = (c for c in range(3) if c != axis)
        axis_normal = np.cross(columns[:, a], columns[:, b])
        axis_normal /= np.linalg.norm(axis_normal)
        if abs(float(normal @ axis_normal)) >= np.cos(np.deg2rad(tolerance_deg)):
            return axis
    return None


#: Position of IJK axis ``a`` in numpy KJI order.
def kji_axis(axis_ijk: int) -> int:
    """numpy axis (in KJI order) of IJK axis 0, 1 or 2."""
    return 2 - axis_ijk
