"""IJK <-> RAS geometry: property tests over random oblique and flipped grids, checked against SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from medsegany.geometry import (
    LPS_TO_RAS,
    apply_affine,
    ijk_to_ras_matrix,
    itk_geometry_from_ijk_to_ras,
    kji_axis,
    slice_axis_of_plane,
)

finite = {"allow_nan": False, "allow_infinity": False}


@st.composite
def directions_lps(draw) -> np.ndarray:
    """A random rotation (from a random unit quaternion), with one random axis negated half of the time."""
    quaternion = np.array(draw(st.lists(st.floats(-1, 1, **finite), min_size=4, max_size=4)))
    norm = np.linalg.norm(quaternion)
    if norm < 0.1:  # too short to normalise accurately: use a fixed, still oblique, rotation
        quaternion = np.array([0.9, 0.1, -0.3, 0.2])
        norm = np.linalg.norm(quaternion)
    w, x, y, z = quaternion / norm
    rotation = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    if draw(st.booleans()):
        rotation[:, draw(st.integers(0, 2))] *= -1  # flipped: a left-handed grid (determinant -1)
    return rotation


spacings = st.tuples(*[st.floats(0.05, 20.0, **finite)] * 3)
origins = st.tuples(*[st.floats(-1000.0, 1000.0, **finite)] * 3)


@given(spacing=spacings, origin=origins, direction=directions_lps())
def test_itk_geometry_from_ijk_to_ras_inverts_ijk_to_ras_matrix(spacing, origin, direction):
    matrix = ijk_to_ras_matrix(spacing, origin, direction)
    spacing_back, origin_back, direction_back = itk_geometry_from_ijk_to_ras(matrix)
    np.testing.assert_allclose(spacing_back, spacing, rtol=1e-9)
    np.testing.assert_allclose(origin_back, origin, atol=1e-9)
    np.testing.assert_allclose(np.reshape(direction_back, (3, 3)), direction, atol=1e-9)
    # And the other way round: the matrix rebuilt from the ITK triple is the same matrix.
    np.testing.assert_allclose(
        ijk_to_ras_matrix(spacing_back, origin_back, direction_back), matrix, atol=1e-9
    )
    assert np.sign(np.linalg.det(matrix[:3, :3])) == np.sign(np.linalg.det(direction))


@settings(max_examples=40, deadline=None)
@given(
    spacing=spacings,
    origin=origins,
    direction=directions_lps(),
    index=st.tuples(*[st.floats(-5.0, 300.0, **finite)] * 3),
)
def test_ijk_to_ras_matches_simpleitk_physical_points_with_lps_flipped(spacing, origin, direction, index):
    """The oracle is ITK itself: its physical point (LPS) with x and y negated is our RAS point."""
    import SimpleITK as sitk

    image = sitk.Image(2, 2, 2, sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.ravel()))
    point_lps = np.array(image.TransformContinuousIndexToPhysicalPoint(index))
    point_ras = apply_affine(ijk_to_ras_matrix(spacing, origin, direction), index)
    np.testing.assert_allclose(point_ras, point_lps * [-1, -1, 1], atol=1e-6)


@given(
    spacing=spacings,
    origin=origins,
    direction=directions_lps(),
    points_ijk=st.lists(st.tuples(*[st.floats(-50.0, 600.0, **finite)] * 3), min_size=1, max_size=6),
)
def test_apply_affine_round_trips_and_equals_homogeneous_product(spacing, origin, direction, points_ijk):
    matrix = ijk_to_ras_matrix(spacing, origin, direction)
    points_ijk = np.array(points_ijk)
    points_ras = apply_affine(matrix, points_ijk)
    assert points_ras.shape == points_ijk.shape
    homogeneous = np.c_[points_ijk, np.ones(len(points_ijk))] @ matrix.T
    np.testing.assert_allclose(points_ras, homogeneous[:, :3], atol=1e-9)
    np.testing.assert_allclose(apply_affine(np.linalg.inv(matrix), points_ras), points_ijk, atol=1e-6)
    # A single point keeps its (3,) shape and maps like a row of the batch.
    single = apply_affine(matrix, points_ijk[0])
    assert single.shape == (3,)
    np.testing.assert_allclose(single, points_ras[0], atol=1e-9)


def test_lps_to_ras_negates_x_and_y_of_a_plain_grid():
    matrix = ijk_to_ras_matrix([2.0, 1.0, 1.0], [10.0, 20.0, 30.0], np.eye(3))
    np.testing.assert_allclose(matrix @ [1, 0, 0, 1], [-12.0, -20.0, 30.0, 1.0])
    np.testing.assert_array_equal(LPS_TO_RAS @ LPS_TO_RAS, np.eye(4))


def test_itk_geometry_refuses_a_zero_length_axis():
    matrix = ijk_to_ras_matrix([1.0, 1.0, 1.0], [0, 0, 0], np.eye(3))
    matrix[:3, 1] = 0.0
    with pytest.raises(ValueError, match="zero-length"):
        itk_geometry_from_ijk_to_ras(matrix)


@given(spacing=spacings, origin=origins, direction=directions_lps(), axis=st.integers(0, 2))
def test_slice_axis_of_plane_finds_each_axis_and_refuses_oblique_views(spacing, origin, direction, axis):
    matrix = ijk_to_ras_matrix(spacing, origin, direction)
    columns = matrix[:3, :3]
    a, b = (c for c in range(3) if c != axis)
    normal_ras = np.cross(columns[:, a], columns[:, b])
    assert slice_axis_of_plane(normal_ras, matrix) == axis
    assert slice_axis_of_plane(-normal_ras, matrix) == axis  # a view looking the other way is the same plane
    # Tilted by 10 degrees within the plane spanned by the normal and an in-plane axis: no voxel axis.
    unit_normal = normal_ras / np.linalg.norm(normal_ras)
    in_plane = columns[:, a] - (columns[:, a] @ unit_normal) * unit_normal
    in_plane /= np.linalg.norm(in_plane)
    tilted = np.cos(np.deg2rad(10)) * unit_normal + np.sin(np.deg2rad(10)) * in_plane
    assert slice_axis_of_plane(tilted, matrix) is None


def test_kji_axis_matches_the_frame_convention():
    voxels_kji = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # K=2, J=3, I=4
    assert [voxels_kji.shape[kji_axis(axis)] for axis in range(3)] == [4, 3, 2]
