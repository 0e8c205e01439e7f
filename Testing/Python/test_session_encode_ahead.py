"""Image features encoded ahead of the prompt (medsegany.encode_ahead, SegmentationSession.encode_ahead):
the order, the memory budget, stopping between calls, and a propagation afterwards that encodes nothing
again and gives the same masks; and within a SAM 2 run, a batch ahead of its steps (EncodeAheadInRun)."""

from __future__ import annotations

import numpy as np
import pytest
from fake_models import ThresholdModel
from medsegany.encode_ahead import EncodeAheadInRun, outward_order
from medsegany.errors import PromptError
from medsegany.session import SegmentationSession
from test_session import box_on_k, phantom


@pytest.mark.parametrize(
    ("center", "count", "expected"),
    [
        (2, 6, [2, 3, 1, 4, 0, 5]),
        (0, 4, [0, 1, 2, 3]),
        (3, 4, [3, 2, 1, 0]),
        (0, 1, [0]),
        (1, 5, [1, 2, 0, 3, 4]),
    ],
)
def test_outward_order_visits_every_slice_once_nearest_first(center, count, expected):
    assert list(outward_order(center, count)) == expected


def test_outward_order_refuses_a_centre_outside_the_stack():
    with pytest.raises(ValueError, match=r"outside 0\.\.3"):
        list(outward_order(4, 4))


def test_encodes_from_the_slice_in_view_outward_and_propagation_then_encodes_nothing():
    volume = phantom()  # 30 axial slices
    model = ThresholdModel()
    session = SegmentationSession(volume, model, intensity=(0.0, 255.0))

    progress = list(session.encode_ahead(2, 14))

    encoded = [i for p in progress for i in p.frames]
    assert encoded[:5] == [14, 15, 13, 16, 12] and sorted(encoded) == list(range(30))
    assert len(progress) == 8  # the model's encoder batch: 4 slices a call
    assert model.encoded == 30 and progress[-1].cached == progress[-1].frame_count == 30
    assert progress[-1].encoded == progress[-1].planned == 30
    assert "30/30" in progress[-1].message
    object_id = session.add_object()
    session.add_prompts(object_id, box_on_k(volume, 14))
    list(session.propagate())
    assert model.encoded == 30  # every slice came from the cache

    reference = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    other = reference.add_object()
    reference.add_prompts(other, box_on_k(volume, 14))
    list(reference.propagate())
    np.testing.assert_array_equal(session.mask_kji(object_id), reference.mask_kji(other))


def test_a_second_request_encodes_only_what_is_missing():
    model = ThresholdModel()
    session = SegmentationSession(phantom(), model, intensity=(0.0, 255.0))
    first = session.encode_ahead(2, 10)
    next(first)  # one encoder call: 10, 11, 9, 12
    first.close()  # stopped between calls: what was encoded stays
    assert model.encoded == 4 and session.cached_frames() == 4

    progress = list(session.encode_ahead(2, 11))

    encoded = [i for p in progress for i in p.frames]
    assert encoded[:3] == [13, 14, 8] and len(encoded) == 26 and model.encoded == 30


def test_never_goes_beyond_the_sessions_frame_budget_over_all_axes():
    volume = phantom()
    model = ThresholdModel()
    session = SegmentationSession(volume, model, intensity=(0.0, 255.0), max_cached_frames=7)
    session.embeddings(1).get(20)  # a coronal slice cached by an earlier prompt

    progress = list(session.encode_ahead(2, 3))

    assert [i for p in progress for i in p.frames] == [3, 4, 2, 5, 1, 6]
    assert session.cached_frames() == 7 and 20 in session.embeddings(1)  # nothing evicted
    assert list(session.encode_ahead(2, 20)) == []  # the budget is spent: nothing to do


@pytest.mark.parametrize(
    ("axis", "index", "message"),
    [
        (3, 0, "axis 3 is not 0, 1 or 2"),
        (2, 30, "slice 30 is outside the 30 slices along K"),
        (0, -1, "slice -1 is outside"),
    ],
)
def test_a_wrong_axis_or_slice_is_a_clear_error(axis, index, message):
    session = SegmentationSession(phantom(), ThresholdModel(), intensity=(0.0, 255.0))
    with pytest.raises(PromptError, match=message):
        list(session.encode_ahead(axis, index))


class RecordingTracker:
    """What EncodeAheadInRun asks of a tracker: its batch, and the frames of each encoder call."""

    def __init__(self, batch: int) -> None:
        self.preferred_batch_size = batch
        self.calls: list[list[int]] = []

    def precompute_features(self, frames, batch_size: int) -> int:
        assert batch_size == self.preferred_batch_size or batch_size < self.preferred_batch_size
        self.calls.append(list(frames))
        return len(frames)


@pytest.mark.parametrize("step", [1, -1])
def test_a_run_asks_for_a_batch_ahead_so_the_step_launched_ahead_never_encodes_alone(step):
    # 60 slices from slice 30, batches of 16 (a GPU): forward 30..59 or backward 30..0
    tracker = RecordingTracker(16)
    in_run = range(30, 60) if step > 0 else range(30, -1, -1)
    ahead = EncodeAheadInRun(tracker, in_run, max_cached_frames=256)
    for position in range(len(in_run)):
        ahead.reached(position)
        # the run has yielded this position; the step launched ahead reads the next one
        asked = [frame for call in tracker.calls for frame in call]
        assert in_run[min(position + 1, len(in_run) - 1)] in asked
    assert [len(call) for call in tracker.calls] == ([17, 13] if step > 0 else [17, 14])
    assert [frame for call in tracker.calls for frame in call] == list(in_run)  # each once, in order


def test_a_run_asks_for_no_more_ahead_than_the_feature_cache_keeps():
    tracker = RecordingTracker(16)
    ahead = EncodeAheadInRun(tracker, range(0, 40), max_cached_frames=12)  # room for 2 x 5 + 2 frames
    for position in range(40):
        ahead.reached(position)
        assert ahead.asked - position <= 2 * 5 + 1
    assert {len(call) for call in tracker.calls[1:-1]} == {5}


def test_on_a_cpu_a_run_asks_one_frame_ahead():
    tracker = RecordingTracker(1)
    ahead = EncodeAheadInRun(tracker, range(5, 9), max_cached_frames=256)
    for position in range(4):
        ahead.reached(position)
    assert tracker.calls == [[5, 6], [7], [8]]


def test_a_run_asks_for_batches_no_larger_than_the_memory_plans():
    tracker = RecordingTracker(16)  # a GPU's batch, where the plan counted the activations of one slice
    ahead = EncodeAheadInRun(tracker, range(0, 6), max_cached_frames=256, batch_limit=1)
    for position in range(6):
        ahead.reached(position)
    assert tracker.calls == [[0, 1], [2], [3], [4], [5]]
