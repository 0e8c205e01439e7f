"""The tracking step split around the memory attention (medsegany.models.sam2_step_graphs) on the CPU.

Its agreement with Meta's ``track_step`` is checked in test_sam2_equivalence.py (``step_graphs=True``);
here: the intercepted ``memory_attention.forward`` is always restored, and a failed graph recording falls
back to eager steps with the same masks. Recording itself needs a CUDA GPU (benchmarks/run_gpu.sh).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from sam2_testing import CONFIG_512, blob_frames, disc_box_xyxy  # noqa: E402


@pytest.fixture(scope="module")
def model():
    from medsegany.models.sam2_build import build_sam2_model

    torch.manual_seed(0)
    return build_sam2_model(CONFIG_512, None, device="cpu")


def track(tracker, frames) -> dict[int, np.ndarray]:
    tracker.set_frames(frames)
    tracker.add_prompts(1, 1, box_frame_xyxy=disc_box_xyxy(frames, 1))
    return {r.frame_index: r.mask_logits_frame for r in tracker.propagate(1, +1)}


def test_memory_attention_forward_is_restored(model):
    from medsegany.models.sam2_tracker import Sam2Tracker

    frames = blob_frames(num_frames=3)
    tracker = Sam2Tracker(model, precision="float32", step_graphs=True)
    assert tracker._steps is not None and not tracker._steps.capture  # the CPU: the split runs eagerly
    track(tracker, frames)
    assert "forward" not in model.memory_attention.__dict__

    calls = []
    original = type(model.memory_attention).forward

    def counted_forward(*args, **kwargs):
        calls.append(1)
        return original(model.memory_attention, *args, **kwargs)

    model.memory_attention.forward = counted_forward  # e.g. torch.compile'd on the instance
    try:
        track(tracker, frames)
        assert model.memory_attention.forward is counted_forward
        assert calls  # the step still ran through the instance's forward
    finally:
        del model.memory_attention.forward


def test_failed_recording_falls_back_to_eager_steps(model, caplog):
    from medsegany.models.sam2_step_graphs import step_graphs_for
    from medsegany.models.sam2_tracker import Sam2Tracker

    frames = blob_frames(num_frames=3)
    expected = track(Sam2Tracker(model, precision="float32", step_graphs=False), frames)
    tracker = Sam2Tracker(model, precision="float32", step_graphs=True)
    tracker._steps = step_graphs_for(model, capture=True)  # no CUDA here: recording must fail
    with caplog.at_level(logging.WARNING):
        got = track(tracker, frames)
    assert not tracker._steps.capture and tracker._steps.fallback_reason
    assert "running eagerly" in caplog.text
    assert step_graphs_for(model, capture=True) is tracker._steps  # not tried again by the next tracker
    assert sorted(got) == sorted(expected) == [1, 2]
    for frame_index, logits in expected.items():
        np.testing.assert_array_equal(got[frame_index], logits)


def test_graphs_are_shared_per_model():
    from medsegany.models.sam2_step_graphs import step_graphs_for

    other = torch.nn.Linear(2, 2)  # any model object: graphs are keyed by it
    assert step_graphs_for(other, False) is step_graphs_for(other, False)
    assert step_graphs_for(other, True).capture
