"""Sam2Tracker's own behaviour on a random-weight MedSAM2 (512 px) model: feature reuse, prompts,
propagation order, early stops, clearing, errors. Equality with Meta's predictor: test_sam2_equivalence.py.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from medsegany.errors import PromptError, VolumeError  # noqa: E402
from sam2_testing import CONFIG_512, blob_frames, disc_box_xyxy, random_checkpoint  # noqa: E402

NUM_FRAMES = 4


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from medsegany.models.sam2_build import build_sam2_model

    checkpoint = random_checkpoint(tmp_path_factory.mktemp("sam2"), CONFIG_512, seed=5)
    return build_sam2_model(CONFIG_512, checkpoint, device="cpu")


@pytest.fixture(scope="module")
def frames():
    return blob_frames(num_frames=NUM_FRAMES, height=56, width=72, seed=2)


@pytest.fixture(scope="module")
def encoded_tracker(model, frames):
    """A tracker whose frames were all encoded once, in batches of 2; tests call reset() to start over."""
    from medsegany.models.sam2_tracker import Sam2Tracker

    # float32: these tests check bookkeeping, the same on every CPU (bf16 is in test_sam2_equivalence)
    tracker = Sam2Tracker(model, precision="float32")
    tracker.set_frames(frames)
    assert tracker.precompute_features(batch_size=2) == NUM_FRAMES
    assert tracker.precompute_features(batch_size=2) == 0  # all cached: nothing to do
    assert tracker._cache.nbytes == NUM_FRAMES * tracker.feature_bytes_per_frame()
    return tracker


@pytest.fixture
def tracker(encoded_tracker):
    encoded_tracker.reset()
    yield encoded_tracker
    assert encoded_tracker.frames_encoded == NUM_FRAMES  # no test re-encoded a frame


def test_batched_features_equal_single_frame_features(model, frames, encoded_tracker):
    from medsegany.models.sam2_tracker import Sam2Tracker

    lazy = Sam2Tracker(model, precision="float32")
    lazy.set_frames(frames)
    with torch.inference_mode():
        single = lazy._frame_features(1)
        batched = encoded_tracker._frame_features(1)
    assert lazy.frames_encoded == 1
    for ours, theirs in zip(single[0] + single[1], batched[0] + batched[1], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("count", "limit", "expected"),
    [
        (1, 16, 1),
        (2, 16, 2),
        (3, 16, 4),
        (5, 16, 8),
        (13, 16, 16),
        (16, 16, 16),
        (12, 32, 16),
        (20, 32, 32),
        (17, 17, 17),
        (3, 3, 3),
        (5, 1, 5),
    ],
)
def test_a_short_batch_is_padded_to_a_power_of_two_within_the_batch_asked_for(count, limit, expected):
    from medsegany.models.sam2_tracker import padded_batch_size

    assert padded_batch_size(count, limit) == expected


def test_a_padded_batch_gives_the_features_of_the_frames_asked_for(model, frames, encoded_tracker):
    from medsegany.models.sam2_tracker import Sam2Tracker

    padded = Sam2Tracker(model, precision="float32", pad_batches=True)
    padded.set_frames(frames)
    encoded_batches = []
    forward_image = padded.model.forward_image
    padded.model.forward_image = lambda images: (encoded_batches.append(len(images)), forward_image(images))[
        1
    ]
    try:
        with torch.inference_mode():
            assert padded.precompute_features([0, 1, 2], batch_size=4) == 3
            ours, theirs = padded._frame_features(2), encoded_tracker._frame_features(2)
    finally:
        del padded.model.forward_image
    assert encoded_batches == [4] and padded.frames_encoded == 3 and len(padded._cache) == 3
    for mine, reference in zip(ours[0] + ours[1], theirs[0] + theirs[1], strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-4)
    assert Sam2Tracker(model, precision="float32").pad_batches is False  # on by default on CUDA only


def test_propagates_each_direction_in_order_and_reuses_features(tracker, frames):
    box = disc_box_xyxy(frames, 1)
    prompt_logits = tracker.add_prompts(4, 1, box_frame_xyxy=box)
    assert prompt_logits.shape == frames.shape[1:] and prompt_logits.dtype == np.float32
    assert tracker.conditioning_frames(4) == [1] and tracker.tracked_frames(4) == [1]

    forward = list(tracker.propagate(1, +1))
    backward = list(tracker.propagate(1, -1))
    assert [r.frame_index for r in forward] == [1, 2, 3]
    assert [r.frame_index for r in backward] == [1, 0]
    np.testing.assert_array_equal(forward[0].mask_logits_frame, prompt_logits)  # the prompt's own output
    for result in forward + backward:
        assert result.object_id == 4 and isinstance(result.object_score_logit, float)
        stored = tracker.result(4, result.frame_index)
        np.testing.assert_array_equal(stored.mask_logits_frame, result.mask_logits_frame)
        np.testing.assert_array_equal(result.mask_frame, result.mask_logits_frame > 0)
    assert tracker.tracked_frames(4) == [0, 1, 2, 3]

    # propagating again from the same prompts gives the same masks (same memory, same features)
    again = list(tracker.propagate(1, +1, end_frame=2))
    assert [r.frame_index for r in again] == [1, 2]
    np.testing.assert_array_equal(again[1].mask_logits_frame, forward[1].mask_logits_frame)


def test_encoding_and_tracking_on_a_cpu_keep_freed_memory_until_they_end(model, frames, tracker, monkeypatch):
    from medsegany import allocator
    from medsegany.models.sam2_tracker import Sam2Tracker

    lazy = Sam2Tracker(model, precision="float32")
    lazy.set_frames(frames)
    depths = []
    encode = lazy._encode_images
    monkeypatch.setattr(
        lazy,
        "_encode_images",
        lambda indices, **kw: (depths.append(allocator.retention_depth()), encode(indices, **kw)),
    )
    lazy.precompute_features([0, 1], batch_size=1)
    assert depths == [1, 1] and allocator.retention_depth() == 0

    tracker.add_prompts(4, 1, box_frame_xyxy=disc_box_xyxy(frames, 1))
    stream = tracker.propagate(1, +1)
    for _ in stream:
        assert allocator.retention_depth() == 1  # held across the whole propagation, between its frames
    assert allocator.retention_depth() == 0


def test_free_heap_pages_are_checked_before_each_encoder_batch_and_step(model, frames, tracker, monkeypatch):
    """Between two slices (medsegany.allocator.release_fragments): where a run's memory is checked."""
    from medsegany.models import sam2_tracker

    calls = []
    monkeypatch.setattr(sam2_tracker, "release_fragments", lambda: calls.append(1))
    lazy = sam2_tracker.Sam2Tracker(model, precision="float32")
    lazy.set_frames(frames)
    lazy.precompute_features([0, 1, 2], batch_size=2)
    assert len(calls) == 2  # two encoder batches
    tracker.add_prompts(4, 1, box_frame_xyxy=disc_box_xyxy(frames, 1))
    assert len(calls) == 3  # the prompted frame's step
    assert len(list(tracker.propagate(1, +1))) == NUM_FRAMES - 1
    # the prompted frame's memory, encoded as the prompts are committed, then one per tracked frame
    assert len(calls) == 3 + 1 + NUM_FRAMES - 2


def test_mask_prompt_becomes_the_output(tracker, frames):
    # with use_mask_input_as_output_without_sam (SAM 2.1 configs) a mask prompt is taken as the mask
    # itself, whatever the weights: the output must be the disc
    disc = frames[0] > 0.5
    logits = tracker.add_prompts(9, 0, mask_frame=disc)
    predicted = logits > 0
    iou = (predicted & disc).sum() / (predicted | disc).sum()
    assert iou > 0.9
    assert tracker.result(9, 0).object_score_logit > 0


def test_stopping_early_leaves_a_consistent_state_and_clear_outputs(tracker, frames):
    tracker.add_prompts(1, 1, box_frame_xyxy=disc_box_xyxy(frames, 1))
    for result in tracker.propagate(1, +1):
        if result.frame_index == 2:
            break  # e.g. the stop rule fired on frame 2
    assert tracker.tracked_frames(1) == [1, 2] and tracker.result(1, 3) is None

    tracker.clear_outputs(1, [1, 2, 3])  # the prompted frame 1 keeps its output
    assert tracker.tracked_frames(1) == [1] and tracker.result(1, 2) is None

    tracker.clear_prompts(1, 1)
    assert tracker.conditioning_frames(1) == []
    with pytest.raises(PromptError, match="no conditioning frame"):
        list(tracker.propagate(1, +1))


def test_points_replace_or_extend_earlier_points(tracker, frames):
    centre = np.array([[frames.shape[2] / 2, frames.shape[1] / 2]])
    tracker.add_prompts(2, 3, points_frame_xy=centre, point_labels=[1])
    tracker.add_prompts(2, 3, points_frame_xy=centre + 5, point_labels=[0], keep_previous_points=True)
    prompts = tracker._objects[2].prompts[3]
    assert prompts.point_labels.tolist() == [[1, 0]]
    scale = torch.tensor([512 / frames.shape[2], 512 / frames.shape[1]])
    torch.testing.assert_close(prompts.point_coords_model[0, 0], torch.tensor(centre[0]).float() * scale)
    tracker.add_prompts(2, 3, points_frame_xy=centre, point_labels=[1])
    assert tracker._objects[2].prompts[3].point_labels.tolist() == [[1]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "no prompt"),
        ({"box_frame_xyxy": [1, 2, 3]}, "4 numbers"),
        ({"points_frame_xy": [[1, 2]]}, "together"),
        ({"points_frame_xy": [[1, 2], [3, 4]], "point_labels": [1]}, "2 points but 1 labels"),
        ({"points_frame_xy": [[1, 2]], "point_labels": [2]}, "1 .inside. or 0"),
        ({"points_frame_xy": [[np.nan, 2]], "point_labels": [1]}, "finite"),
        ({"mask_frame": np.ones((3, 3), bool)}, "shape"),
        ({"mask_frame": np.ones((56, 72), bool), "box_frame_xyxy": [1, 2, 3, 4]}, "cannot be combined"),
        ({"box_frame_xyxy": [1, 2, 3, 4], "keep_previous_points": True}, "box must come before"),
    ],
)
def test_bad_prompts_are_prompt_errors(tracker, kwargs, message):
    with pytest.raises(PromptError, match=message):
        tracker.add_prompts(1, 0, **kwargs)
    assert tracker.object_ids == []  # a refused prompt creates no object


def test_bad_calls_are_clear_errors(tracker, model):
    from medsegany.models.sam2_tracker import Sam2Tracker

    with pytest.raises(PromptError, match="outside the stack of 4 frames"):
        tracker.add_prompts(1, 4, box_frame_xyxy=[1, 2, 3, 4])
    with pytest.raises(PromptError, match="no prompts"):
        list(tracker.propagate(0, +1, object_ids=[8]))
    with pytest.raises(PromptError, match="no object"):
        tracker.propagate(0, +1)
    tracker.add_prompts(1, 2, mask_frame=np.ones((56, 72), bool))
    with pytest.raises(PromptError, match="direction"):
        tracker.propagate(2, 0)
    with pytest.raises(PromptError, match="behind"):
        tracker.propagate(2, +1, end_frame=1)
    with pytest.raises(VolumeError, match="no frames"):
        Sam2Tracker(model).add_prompts(1, 0, box_frame_xyxy=[1, 2, 3, 4])
