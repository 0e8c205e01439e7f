from __future__ import annotations

import numpy as np
import pytest
from medsegany.slices import frame_count, frame_of, frame_shape, set_frame


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
