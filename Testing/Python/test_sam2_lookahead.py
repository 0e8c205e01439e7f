"""A tracking step launched ahead (medsegany.models.sam2_lookahead): a caller that stops after frame k
leaves no trace of frame k+1, and a stale generator closed late never undoes a newer run.

Same masks as without lookahead: test_sam2_equivalence.py (``gpu_path=True``) compares with Meta.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from sam2_testing import CONFIG_512, blob_frames, disc_box_xyxy  # noqa: E402

KEY = 1


@pytest.fixture(scope="module")
def model():
    from medsegany.models.sam2_build import build_sam2_model

    torch.manual_seed(0)
    return build_sam2_model(CONFIG_512, None, device="cpu")


@pytest.fixture
def frames():
    return blob_frames(num_frames=5)


def new_tracker(model, frames, lookahead=True):
    from medsegany.models.sam2_tracker import Sam2Tracker

    tracker = Sam2Tracker(model, precision="float32", lookahead=lookahead)
    tracker.set_frames(frames)
    tracker.add_prompts(1, KEY, box_frame_xyxy=disc_box_xyxy(frames, KEY))
    return tracker


def test_stopping_after_a_frame_forgets_the_frame_launched_after_it(model, frames):
    tracker = new_tracker(model, frames)
    seen = []
    for result in tracker.propagate(KEY, +1):
        seen.append(result.frame_index)
        if result.frame_index == KEY + 1:
            break  # frame KEY + 2 is already computed at this point
    assert seen == [KEY, KEY + 1]
    assert tracker.tracked_frames(1) == [KEY, KEY + 1]
    assert tracker._objects[1].visited_direction == {KEY: 1, KEY + 1: 1}


def test_a_stopped_rerun_puts_back_the_earlier_output(model, frames):
    tracker = new_tracker(model, frames)
    full = {r.frame_index: r.mask_logits_frame for r in tracker.propagate(KEY, +1)}
    track = tracker._objects[1]
    earlier = track.tracked[KEY + 2]
    generator = tracker.propagate(KEY, +1)
    assert [next(generator).frame_index, next(generator).frame_index] == [KEY, KEY + 1]
    assert track.tracked[KEY + 2] is not earlier  # launched ahead: replaced in the bank
    generator.close()
    assert track.tracked[KEY + 2] is earlier
    np.testing.assert_array_equal(tracker.result(1, KEY + 2).mask_logits_frame, full[KEY + 2])


def test_a_stale_generator_closed_late_keeps_the_newer_run(model, frames):
    tracker = new_tracker(model, frames)
    stale = tracker.propagate(KEY, +1)
    next(stale), next(stale)  # frame KEY + 2 launched, never yielded
    newer = {r.frame_index: r for r in tracker.propagate(KEY, +1)}
    newest_output = tracker._objects[1].tracked[KEY + 2]
    stale.close()
    assert tracker._objects[1].tracked[KEY + 2] is newest_output
    assert tracker.tracked_frames(1) == sorted(newer)


def test_results_equal_the_strict_order(model, frames):
    ahead = new_tracker(model, frames, lookahead=True)
    strict = new_tracker(model, frames, lookahead=False)
    for direction in (+1, -1):
        got = list(ahead.propagate(KEY, direction))
        expected = list(strict.propagate(KEY, direction))
        assert [r.frame_index for r in got] == [r.frame_index for r in expected]
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a.mask_logits_frame, b.mask_logits_frame)
            assert a.object_score_logit == b.object_score_logit


def test_an_error_in_a_later_step_leaves_only_the_yielded_frames(model, frames):
    """E.g. the GPU runs out of memory launching step k+2: step k+1 was launched but never yielded."""
    tracker = new_tracker(model, frames)
    original = tracker._track_frame
    calls = []

    def failing_track_frame(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(*args, **kwargs)

    tracker._track_frame = failing_track_frame
    seen = []
    with pytest.raises(RuntimeError, match="out of memory"):
        for result in tracker.propagate(KEY, +1):
            seen.append(result.frame_index)
    assert seen == [KEY]  # frame KEY + 1 was computed, then KEY + 2 failed before it was yielded
    assert tracker.tracked_frames(1) == [KEY]
