"""Tests for medsegany.prompts: frame convention, RAS <-> IJK boxes and every validation error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from medsegany.errors import PromptError
from medsegany.prompts import (
    SlicePrompts,
    box_ijk_from_ras,
    frame_xy_to_ijk,
    ijk_to_frame_xy,
    make_slice_prompts,
    mask_frame_bbox_xyxy,
    point_ijk_from_ras,
    snap_index,
)
from medsegany.volume import Volume

SHAPE_IJK = (30, 20, 10)


def make_volume(shape_ijk=SHAPE_IJK, ijk_to_ras=None) -> Volume:
    i, j, k = shape_ijk
    voxels_kji = np.arange(i * j * k, dtype=np.int32).reshape(k, j, i)  # every voxel unique
    return Volume(voxels_kji, np.eye(4) if ijk_to_ras is None else ijk_to_ras)


def assert_prompt_error(words: str, **kwargs) -> PromptError:
    """make_slice_prompts(**kwargs) raises a one-line PromptError whose problem contains ``words``."""
    volume = kwargs.pop("volume", None) or make_volume()
    with pytest.raises(PromptError) as caught:
        make_slice_prompts(volume, **kwargs)
    error = caught.value
    assert words in error.problem, error.problem
    assert error.fix and "\n" not in str(error)
    return error


# ---- strategies -----------------------------------------------------------------------------------


@st.composite
def oblique_ijk_to_ras(draw) -> np.ndarray:
    """A random rotation (any axis, possibly a reflection), spacing 0.3..5 mm and origin."""
    values = draw(st.lists(st.floats(-1, 1), min_size=9, max_size=9))
    matrix = np.array(values).reshape(3, 3) + np.eye(3) * draw(st.floats(-0.5, 0.5))
    assume(abs(np.linalg.det(matrix)) > 0.05)
    rotation, upper = np.linalg.qr(matrix)
    rotation = rotation * np.sign(np.diag(upper))  # a proper orthonormal basis, keeping handedness
    flips = np.diag([draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)])
    spacing = np.diag([draw(st.floats(0.3, 5.0)) for _ in range(3)])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation @ flips @ spacing
    ijk_to_ras[:3, 3] = [draw(st.floats(-300, 300)) for _ in range(3)]
    return ijk_to_ras


@st.composite
def box_on_slice(draw, shape_ijk):
    """(axis, slice_index, min corner, max corner) of a valid box inside a volume of ``shape_ijk``."""
    axis = draw(st.sampled_from([0, 1, 2]))
    slice_index = draw(st.integers(0, shape_ijk[axis] - 1))
    low, high = [0.0] * 3, [0.0] * 3
    low[axis] = high[axis] = float(slice_index)
    for a in range(3):
        if a != axis:
            start = draw(st.floats(0, shape_ijk[a] - 2))
            low[a], high[a] = start, draw(st.floats(start + 1, shape_ijk[a] - 1))
    return axis, slice_index, tuple(low), tuple(high)


# ---- frame convention -----------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_frame_xy_indexes_the_voxel_at_the_ijk_point(data):
    shape_ijk = tuple(data.draw(st.integers(1, 7)) for _ in range(3))
    volume = make_volume(shape_ijk)
    point_ijk = tuple(data.draw(st.integers(0, n - 1)) for n in shape_ijk)
    axis = data.draw(st.sampled_from([0, 1, 2]))
    frame = np.take(volume.voxels_kji, point_ijk[axis], axis=2 - axis)
    x, y = ijk_to_frame_xy(np.array([point_ijk]), axis)[0].astype(int)
    i, j, k = point_ijk
    assert frame[y, x] == volume.voxels_kji[k, j, i]
    assert frame_xy_to_ijk([[x, y]], axis, point_ijk[axis]).tolist() == [list(map(float, point_ijk))]


def test_frame_rows_and_columns_follow_the_table():
    # axis K: rows J, cols I; axis J: rows K, cols I; axis I: rows K, cols J.
    point_ijk = (5.0, 6.0, 7.0)
    assert ijk_to_frame_xy(point_ijk, 2).tolist() == [5.0, 6.0]
    assert ijk_to_frame_xy(point_ijk, 1).tolist() == [5.0, 7.0]
    assert ijk_to_frame_xy(point_ijk, 0).tolist() == [6.0, 7.0]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_box_frame_xyxy_crops_the_voxels_inside_the_ijk_box(data):
    volume = make_volume((9, 8, 7))
    axis, slice_index, low, high = data.draw(box_on_slice(volume.shape_ijk))
    low = tuple(float(round(v)) for v in low)  # integer corners so that the crop is exact
    high = tuple(float(round(v)) for v in high)
    assume(all(high[a] - low[a] >= 1 for a in range(3) if a != axis))
    prompts = make_slice_prompts(volume, box_ijk=low + high)
    x0, y0, x1, y1 = prompts.box_frame_xyxy().astype(int)
    frame = np.take(volume.voxels_kji, slice_index, axis=2 - axis)
    crop = frame[y0 : y1 + 1, x0 : x1 + 1]
    (i0, j0, k0), (i1, j1, k1) = np.array(low, int), np.array(high, int)
    block = volume.voxels_kji[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1]
    assert sorted(crop.ravel().tolist()) == sorted(block.ravel().tolist())


def test_points_frame_xy_and_labels_array():
    prompts = make_slice_prompts(
        make_volume(), points_ijk=[(3, 4, 5), (6, 7, 5)], point_labels=[1, 0], axis=2
    )
    assert prompts.points_frame_xy().tolist() == [[3.0, 4.0], [6.0, 7.0]]
    assert prompts.labels_array().tolist() == [1, 0] and prompts.labels_array().dtype.kind == "i"
    assert prompts.box_frame_xyxy() is None
    empty = make_slice_prompts(make_volume(), box_ijk=(1, 1, 2, 5, 5, 2))
    assert empty.points_frame_xy().shape == (0, 2) and empty.labels_array().shape == (0,)


def test_mask_frame_bbox_xyxy():
    mask = np.zeros((10, 12), dtype=bool)
    assert mask_frame_bbox_xyxy(mask) is None
    mask[2:5, 3:9] = True  # rows 2..4, cols 3..8
    mask[7, 1] = True
    assert mask_frame_bbox_xyxy(mask).tolist() == [1.0, 2.0, 8.0, 7.0]
    with pytest.raises(ValueError):
        mask_frame_bbox_xyxy(np.zeros((2, 2, 2)))


# ---- RAS -> IJK -----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(ijk_to_ras=oblique_ijk_to_ras(), data=st.data())
def test_ras_box_round_trips_and_finds_its_axis(ijk_to_ras, data):
    volume = make_volume((12, 9, 7), ijk_to_ras)
    axis, slice_index, low, high = data.draw(box_on_slice(volume.shape_ijk))
    corners_ras = volume.ijk_to_ras_points(np.array([low, high]))
    if data.draw(st.booleans()):  # corners in either order
        corners_ras = corners_ras[::-1]
    box_ijk = box_ijk_from_ras(volume, corners_ras[0], corners_ras[1])
    np.testing.assert_allclose(box_ijk, low + high, atol=1e-6)
    prompts = make_slice_prompts(volume, box_ijk=box_ijk)
    assert (prompts.axis, prompts.slice_index) == (axis, slice_index)
    back_ras = volume.ijk_to_ras_points(np.array([box_ijk[:3], box_ijk[3:]]))
    np.testing.assert_allclose(
        sorted(map(tuple, back_ras)),
        sorted(map(tuple, volume.ijk_to_ras_points(np.array([low, high])))),
        atol=1e-6,
    )


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_ras_box_axis_on_a_flipped_permuted_volume(axis):
    # Like the DeepLesion files: axes permuted and flipped, anisotropic spacing.
    ijk_to_ras = np.array([[0, 0, -5.0, 40], [-0.7, 0, 0, 10], [0, 0.8, 0, -30], [0, 0, 0, 1]])
    volume = make_volume((12, 9, 7), ijk_to_ras)
    low, high = [2.0, 2.0, 2.0], [8.0, 6.0, 5.0]
    low[axis] = high[axis] = 3.0
    corners_ras = volume.ijk_to_ras_points(np.array([high, low]))
    corners_ras[:, 0] += 0.01  # sub-voxel jitter from a mouse drag
    box_ijk = box_ijk_from_ras(volume, *corners_ras)
    assert make_slice_prompts(volume, box_ijk=box_ijk).axis == axis
    assert box_ijk[axis] == box_ijk[axis + 3] == 3.0


def test_ras_box_not_on_one_slice_or_degenerate_is_refused():
    volume = make_volume()
    with pytest.raises(PromptError, match="not on one slice") as refused:
        box_ijk_from_ras(volume, (1, 1, 1), (5, 6, 7))
    assert "--box-ijk" in str(refused.value)  # a way out the command line has (no slice view there)
    with pytest.raises(PromptError, match="zero width"):
        box_ijk_from_ras(volume, (1, 1, 1), (5, 1.2, 1))


@settings(max_examples=60, deadline=None)
@given(ijk_to_ras=oblique_ijk_to_ras(), point=st.tuples(*[st.floats(-50, 50)] * 3))
def test_ras_point_round_trips(ijk_to_ras, point):
    volume = make_volume((4, 4, 4), ijk_to_ras)
    point_ras = volume.ijk_to_ras_points(np.array(point))
    np.testing.assert_allclose(point_ijk_from_ras(volume, point_ras), point, atol=1e-6)


# ---- normalisation --------------------------------------------------------------------------------


def test_corners_in_any_order_are_normalised_and_the_slice_is_snapped():
    volume = make_volume()
    prompts = make_slice_prompts(volume, box_ijk=(20, 2, 4.3, 3, 15, 4.6))
    assert prompts.axis == 2 and prompts.slice_index == 4  # mean 4.45 -> 4
    assert prompts.box_ijk == (3.0, 2.0, 4.0, 20.0, 15.0, 4.0)
    assert make_slice_prompts(volume, box_ijk=(3, 2, 4.4, 20, 15, 4.6)).slice_index == 5  # 4.5 -> 5
    assert snap_index(2.5) == 3 and snap_index(-0.5) == 0 and snap_index(1.49) == 1


def test_box_with_points_on_its_slice():
    prompts = make_slice_prompts(
        make_volume(), box_ijk=(2, 3, 6, 12, 9, 6), points_ijk=[(5, 5, 6.2), (9, 4, 5.8)], point_labels=[1, 0]
    )
    assert prompts.points_ijk == ((5.0, 5.0, 6.0), (9.0, 4.0, 6.0))
    assert prompts.point_labels == (1, 0)
    assert make_slice_prompts(make_volume(), points_ijk=[(5, 5, 6)], axis=2).point_labels == (1,)


def test_point_only_axis_is_inferred_when_unambiguous():
    prompts = make_slice_prompts(make_volume(), points_ijk=[(3, 4, 5), (6, 7, 5)])
    assert (prompts.axis, prompts.slice_index) == (2, 5)
    assert make_slice_prompts(make_volume(), points_ijk=[(3, 4, 5)], axis=0).slice_index == 3


def test_box_partly_outside_is_clipped_in_plane():
    prompts = make_slice_prompts(make_volume(), box_ijk=(-5, 3, 2, 40, 25, 2))
    assert prompts.box_ijk == (0.0, 3.0, 2.0, 29.0, 19.0, 2.0)


def test_point_within_half_a_voxel_of_the_edge_is_clipped():
    prompts = make_slice_prompts(make_volume(), points_ijk=[(-0.4, 19.3, 2)], axis=2)
    assert prompts.points_ijk == ((0.0, 19.0, 2.0),)


# ---- validation errors ----------------------------------------------------------------------------


def test_error_box_corners_share_no_index():
    assert_prompt_error("share no slice index", box_ijk=(1, 1, 1, 5, 6, 7))


def test_error_box_corners_share_two_or_three_indices():
    assert_prompt_error("zero width or height", box_ijk=(1, 1, 3, 5, 1, 3))
    assert_prompt_error("zero width or height", box_ijk=(1, 1, 3, 1.2, 1.1, 3))


def test_error_box_slice_index_differs_between_corners_on_the_given_axis():
    assert_prompt_error("apart along K", box_ijk=(1, 1, 3, 5, 6, 3.7), axis=2)
    assert_prompt_error("zero width along I", box_ijk=(1, 1, 3, 1, 6, 3), axis=2)


def test_error_box_slice_outside_the_volume():
    assert_prompt_error("outside the volume (0..9)", box_ijk=(1, 1, 10, 5, 6, 10))
    assert_prompt_error("outside the volume (0..9)", box_ijk=(1, 1, -1, 5, 6, -1))
    assert_prompt_error("outside the volume (0..29)", box_ijk=(40, 1, 3, 35, 6, 3))


def test_error_box_entirely_outside_or_only_touching_the_edge():
    assert_prompt_error("outside the volume", box_ijk=(-9, 1, 3, -2, 6, 3))
    assert_prompt_error("only touches the volume's edge", box_ijk=(-9, 1, 3, 0, 6, 3))


def test_error_point_outside_the_volume():
    assert_prompt_error("outside the volume (0..19)", points_ijk=[(3, 20, 2)], axis=2)
    assert_prompt_error("outside the volume (0..9)", points_ijk=[(3, 2, 11)], axis=2)
    assert_prompt_error("outside the volume (0..29)", box_ijk=(1, 1, 3, 5, 6, 3), points_ijk=[(-1, 2, 3)])


def test_error_points_on_another_slice_than_the_box():
    error = assert_prompt_error("not on the box's slice", box_ijk=(1, 1, 3, 5, 6, 3), points_ijk=[(2, 2, 4)])
    assert "K=4" in error.problem and "K=3" in error.problem


def test_error_points_on_different_slices_from_each_other():
    assert_prompt_error("not on point 0's slice", points_ijk=[(2, 2, 4), (2, 3, 5)], axis=2)
    assert_prompt_error("not on one slice", points_ijk=[(2, 2, 4), (3, 3, 5)])


def test_error_point_only_axis_ambiguous_asks_for_the_axis():
    error = assert_prompt_error("which slice axis", points_ijk=[(2, 2, 4)])
    assert "axis" in error.fix
    assert_prompt_error("could be J/K", points_ijk=[(2, 2, 4), (5, 2, 4)])


def test_error_no_box_and_no_positive_point():
    assert_prompt_error("no box and no point")
    assert_prompt_error("only negative points", points_ijk=[(2, 2, 4)], point_labels=[0], axis=2)


@pytest.mark.parametrize("labels", [[2], [-1], [0.5], ["1"], [None]])
def test_error_labels_not_zero_or_one(labels):
    assert_prompt_error("is not 0 or 1", points_ijk=[(2, 2, 4)], point_labels=labels, axis=2)


def test_labels_may_be_bools_or_numpy_integers():
    prompts = make_slice_prompts(
        make_volume(), points_ijk=[(2, 2, 4), (3, 3, 4)], point_labels=np.array([True, False]), axis=2
    )
    assert prompts.point_labels == (1, 0) and all(type(v) is int for v in prompts.point_labels)


def test_error_label_count_mismatch():
    assert_prompt_error("2 points but 1 labels", points_ijk=[(2, 2, 4), (3, 3, 4)], point_labels=[1], axis=2)


def test_error_bad_numbers():
    assert_prompt_error("needs 6", box_ijk=(1, 2, 3, 4, 5))
    assert_prompt_error("NaN or infinity", box_ijk=(1, 2, 3, 4, float("nan"), 3))
    assert_prompt_error("needs 3", points_ijk=[(1, 2)], axis=2)
    assert_prompt_error("not 3 numbers", points_ijk=[("a", 2, 3)], axis=2)


def test_error_invalid_axis():
    assert_prompt_error("is not 0 (I), 1 (J) or 2 (K)", points_ijk=[(1, 2, 3)], axis=3)


def test_slice_prompts_checks_its_parts_agree():
    with pytest.raises(PromptError, match="not on slice K=3"):
        SlicePrompts(2, 3, (1.0, 1.0, 4.0, 5.0, 5.0, 4.0))
    with pytest.raises(PromptError, match="not on slice K=3"):
        SlicePrompts(2, 3, None, ((1.0, 1.0, 4.0),), (1,))
    with pytest.raises(PromptError, match="1 points but 0 labels"):
        SlicePrompts(2, 3, None, ((1.0, 1.0, 3.0),), ())
    with pytest.raises(PromptError, match="not all 0 or 1"):
        SlicePrompts(2, 3, None, ((1.0, 1.0, 3.0),), (3,))
