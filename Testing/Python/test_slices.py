from __future__ import annotations

import numpy as np
import pytest
from medsegany.errors import PromptError
from medsegany.slices import clip_slice_range, frame_count, frame_of, frame_shape, set_frame


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_frames_are_views_in_the_frame_convention(axis):
    array_kji = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    for index in range(frame_count(array_kji.shape, axis)):
        frame = frame_of(array_kji, axis, index)
        np.testing.assert_array_equal(frame, np.take(array_kji, index, axis=2 - axis))
        assert frame.shape == frame_shape(array_kji.shape, axis)
        assert np.shares_memory(frame, array_kji)
    target = np.zeros_like(array_kji)
    set_frame(target, axis, 1, frame_of(array_kji, axis, 1))
    np.testing.assert_array_equal(np.take(target, 1, axis=2 - axis), np.take(array_kji, 1, axis=2 - axis))
    assert target.sum() == np.take(array_kji, 1, axis=2 - axis).sum()


def test_a_wrong_axis_is_refused():
    with pytest.raises(ValueError):
        frame_of(np.zeros((2, 2, 2)), 3, 0)


def test_a_slice_range_is_clipped_to_the_axis_or_refused_when_nothing_is_left():
    assert clip_slice_range(None, 10) == (0, 9)
    assert clip_slice_range((-3, 4), 10) == (0, 4)
    assert clip_slice_range((7, 40), 10) == (7, 9)
    with pytest.raises(PromptError, match=r"slice range \(12, 15\) is empty"):
        clip_slice_range((12, 15), 10)
