"""The slice-wise stop rule and prompt policy, one condition at a time."""

from __future__ import annotations

import numpy as np
from medsegany.models.base import FramePrediction
from medsegany.propagation import (
    ObjectAppearance,
    PropagationSettings,
    next_box,
    propagate_slicewise,
    stop_reason,
)


def disk(shape=(40, 40), centre=(20, 20), radius=8):
    y, x = np.indices(shape)
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


def prediction(mask, logit=8.0):
    return FramePrediction(np.where(mask, logit, -logit).astype(np.float32), 0.9)


def frame_with(mask, inside=180, outside=40):
    return np.where(mask, inside, outside).astype(np.uint8)


def test_next_box_is_the_tight_box_plus_the_margin_clipped_to_the_frame():
    mask = np.zeros((30, 30), bool)
    mask[1:10, 20:29] = True
    np.testing.assert_array_equal(next_box(mask, PropagationSettings()), [17, 0, 29, 12])
    assert next_box(np.zeros((5, 5), bool), PropagationSettings()) is None


def test_a_mask_like_the_previous_one_goes_on():
    previous = disk()
    frame = frame_with(previous)
    appearance = ObjectAppearance.from_mask(frame, previous)
    assert (
        stop_reason(prediction(previous), previous, previous, frame, appearance, PropagationSettings())
        is None
    )


def test_each_stop_condition():
    settings = PropagationSettings()
    previous = disk()
    key_frame = frame_with(previous)
    appearance = ObjectAppearance.from_mask(key_frame, previous)
    # other grey level: a different structure
    assert "intensity" in stop_reason(
        prediction(previous), previous, previous, frame_with(previous, 90), appearance, settings
    )
    # an unsure decoder
    assert "confidence" in stop_reason(
        prediction(previous, 1.0), previous, previous, key_frame, appearance, settings
    )
    # a jump away from the previous slice's mask
    moved = disk(centre=(20, 34), radius=5)
    assert "overlap" in stop_reason(
        prediction(moved), moved, previous, frame_with(moved), appearance, settings
    )
    # the collapse at an object's end
    tiny = disk(radius=1)
    assert "area" in stop_reason(
        prediction(tiny), tiny, previous, key_frame, appearance, settings, peak_area=400
    )
    # the naive scheme only stops on an empty mask
    naive = PropagationSettings.naive()
    assert stop_reason(prediction(moved), moved, previous, frame_with(moved, 90), appearance, naive) is None
    empty = np.zeros_like(previous)
    assert stop_reason(prediction(empty), empty, previous, key_frame, appearance, naive) == "empty mask"


def test_the_confidence_limit_follows_an_unsure_prompted_slice():
    settings = PropagationSettings()
    previous = disk()
    frame = frame_with(previous)
    unsure_key = ObjectAppearance.from_mask(frame, previous, confidence=1.6)
    sure_key = ObjectAppearance.from_mask(frame, previous, confidence=9.0)
    # a mean logit of 1.5 is as sure as the prompted slice was (limit 0.8): go on
    assert stop_reason(prediction(previous, 1.5), previous, previous, frame, unsure_key, settings) is None
    # after a confident prompted slice the absolute limit (2.5) holds
    reason = stop_reason(prediction(previous, 1.5), previous, previous, frame, sure_key, settings)
    assert "confidence" in reason


def test_propagation_yields_until_the_stop_then_one_empty_outcome():
    masks = {i: disk(radius=8 - i) for i in range(1, 8)}
    frames = {i: frame_with(masks[i]) for i in masks}

    def predict(index, box):
        return prediction(masks[index])

    key = disk(radius=9)
    appearance = ObjectAppearance.from_mask(frame_with(key), key)
    outcomes = list(
        propagate_slicewise(predict, frames.__getitem__, 0, key, +1, 7, appearance, PropagationSettings())
    )
    assert [o.slice_index for o in outcomes[:-1]] == list(range(1, len(outcomes)))
    assert outcomes[-1].stop_reason is not None and not outcomes[-1].mask_frame.any()
    assert all(o.stop_reason is None for o in outcomes[:-1])
