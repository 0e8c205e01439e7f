"""The tracking step split around the memory attention (medsegany.models.sam2_step_graphs) on the CPU.

Its agreement with Meta's ``track_step`` is checked in test_sam2_equivalence.py (``step_graphs=True``);
here: the step calls the memory attention instance's own forward, a graph input is copied only when
its source changed, and a failed graph recording falls back to eager steps with the same masks.
Recording itself needs a CUDA GPU (benchmarks/run_gpu.sh); a stand-in "graph" that replays the step
eagerly into its output tensors runs everything around the recording on the CPU.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from sam2_testing import CONFIG_512, blob_frames, capture_eagerly, disc_box_xyxy  # noqa: E402


@pytest.fixture(scope="module")
def model():
    from medsegany.models.sam2_build import build_sam2_model

    torch.manual_seed(0)
    return build_sam2_model(CONFIG_512, None, device="cpu")


def track(tracker, frames) -> dict[int, np.ndarray]:
    tracker.set_frames(frames)
    tracker.add_prompts(1, 1, box_frame_xyxy=disc_box_xyxy(frames, 1))
    return {r.frame_index: r.mask_logits_frame for r in tracker.propagate(1, +1)}


def test_steps_run_through_the_instance_forward(model):
    """A forward set on the memory attention instance (e.g. torch.compile'd) is the one the split calls."""
    from medsegany.models.sam2_tracker import Sam2Tracker

    frames = blob_frames(num_frames=3)
    tracker = Sam2Tracker(model, precision="float32", step_graphs=True)
    assert tracker._steps is not None and not tracker._steps.capture  # the CPU: the split runs eagerly
    calls = []
    original = type(model.memory_attention).forward

    def counted_forward(*args, **kwargs):
        calls.append(1)
        return original(model.memory_attention, *args, **kwargs)

    model.memory_attention.forward = counted_forward
    try:
        track(tracker, frames)
        assert model.memory_attention.forward is counted_forward
        assert len(calls) == 1  # frame 2, the one tracked step (frame 1 is the prompt)
    finally:
        del model.memory_attention.forward


def test_graph_inputs_copy_only_changed_sources():
    from medsegany.models.sam2_step_graphs import _Input

    source = torch.arange(6.0).reshape(2, 3)
    graph_input = _Input(torch.zeros(2, 3))
    graph_input.load(source)
    assert torch.equal(graph_input.buffer, source)
    graph_input.buffer.zero_()  # a marker: a skipped copy leaves it
    graph_input.load(source.view(2, 3))  # another view of the same memory, unchanged: skipped
    assert not graph_input.buffer.any()
    source.add_(1.0)  # changed in place: its version moved on
    graph_input.load(source)
    assert torch.equal(graph_input.buffer, source)
    other = source.clone()
    graph_input.buffer.zero_()
    graph_input.load(other)  # another tensor
    assert torch.equal(graph_input.buffer, other)
    graph_input.load(source.t().contiguous().t())  # same values elsewhere: copied, not compared
    assert torch.equal(graph_input.buffer, source)


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


def test_the_graph_path_gives_the_eager_masks(model, monkeypatch):
    """Buffers, gathering into them, copies only of what changed, clones of the outputs and the holes
    filled inside the step, on the CPU: forward (the memory fills, then consecutive steps replay one
    graph), backward, then a correction, as on a GPU."""
    from medsegany.models.sam2_step_graphs import StepGraphs
    from medsegany.models.sam2_tracker import Sam2Tracker

    # 4 object pointers at most (16 in the configuration): the memory is full from the 7th step on
    monkeypatch.setattr(model, "max_obj_ptrs_in_encoder", 4)
    frames = blob_frames(num_frames=12)
    key, corrected = 2, 8
    box = disc_box_xyxy(frames, key)
    point = np.array([[frames.shape[2] / 2, frames.shape[1] / 2]], np.float32)

    def run(tracker):
        tracker.set_frames(frames)
        tracker.add_prompts(1, key, box_frame_xyxy=box)
        logits = {}
        for direction in (+1, -1):
            for result in tracker.propagate(key, direction):
                logits[(result.frame_index, 0)] = result.mask_logits_frame
        tracker.add_prompts(1, corrected, points_frame_xy=point, point_labels=np.array([0]))
        for result in tracker.propagate(corrected, +1):
            logits[(result.frame_index, 1)] = result.mask_logits_frame
        return logits

    expected = run(Sam2Tracker(model, precision="float32", step_graphs=False, lookahead=False))
    monkeypatch.setattr(StepGraphs, "_capture", capture_eagerly)
    tracker = Sam2Tracker(model, precision="float32", step_graphs=True, lookahead=True)
    tracker._steps = StepGraphs(tracker.model, capture=True)
    got = run(tracker)
    steps = tracker._steps
    assert steps.capture and steps.fallback_reason is None
    # 9 steps forward, 2 backward, 3 after the correction; frames 10 and 11 replay one graph both times
    assert steps.replays == 14 and 0 < steps.recorded <= 11
    assert sorted(got) == sorted(expected)
    for name, logits in expected.items():
        np.testing.assert_array_equal(got[name], logits, err_msg=str(name))


# operations that wait for the device to learn a size or a value: a CUDA graph cannot hold them
HOST_SYNCHRONISING = {
    "aten._local_scalar_dense.default",
    "aten.nonzero.default",
    "aten.masked_select.default",
    "aten.repeat_interleave.Tensor",
    "aten._unique2.default",
    "aten.unique_consecutive.default",
}


def test_the_recorded_step_never_waits_for_the_host(model, monkeypatch):
    """Everything a graph records (the memory from its buffers, the step, the hole filling) avoids the
    operations that would synchronise with the host, checked on the CPU with a stand-in recording."""
    import medsegany.models.sam2_step_graphs as step_graphs
    from medsegany.models.sam2_tracker import Sam2Tracker
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: set[str] = set()

    class Recording(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(str(func))
            return func(*args, **(kwargs or {}))

    original = step_graphs.step_from_gathered

    def recorded(*args, **kwargs):
        with Recording():
            return original(*args, **kwargs)

    monkeypatch.setattr(step_graphs, "step_from_gathered", recorded)
    monkeypatch.setattr(step_graphs.StepGraphs, "_capture", capture_eagerly)
    tracker = Sam2Tracker(model, precision="float32", step_graphs=True, lookahead=True)
    tracker._steps = step_graphs.StepGraphs(tracker.model, capture=True)
    track(tracker, blob_frames(num_frames=4))
    assert "aten.scatter_add_.default" in seen  # the hole filling ran inside
    assert "aten.index_select.default" in seen  # and the memory's temporal encodings
    assert not seen & HOST_SYNCHRONISING


def test_graphs_are_shared_per_model():
    from medsegany.models.sam2_step_graphs import step_graphs_for

    other = torch.nn.Linear(2, 2)  # any model object: graphs are keyed by it
    assert step_graphs_for(other, False) is step_graphs_for(other, False)
    assert step_graphs_for(other, True).capture


def test_graphs_go_with_their_model():
    """The shared graphs hold their model weakly: a model dropped by every tracker is freed, with them."""
    import gc
    import weakref

    from medsegany.models import sam2_step_graphs

    other = torch.nn.Linear(2, 2)
    graphs = sam2_step_graphs.step_graphs_for(other, False)
    assert graphs.model is other
    model_ref, graphs_ref = weakref.ref(other), weakref.ref(graphs)
    del other, graphs
    gc.collect()
    assert model_ref() is None and graphs_ref() is None


def test_running_out_of_memory_while_recording_is_raised_not_a_fallback(model, monkeypatch):
    """A full GPU is not a lack of graph support: the error reaches the run (which reports it and keeps
    what was segmented), and the graphs are recorded again next time instead of running eagerly for good."""
    from medsegany.models.sam2_step_graphs import StepGraphs
    from medsegany.models.sam2_tracker import Sam2Tracker

    def capture_out_of_memory(self, body, device):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(StepGraphs, "_capture", capture_out_of_memory)
    tracker = Sam2Tracker(model, precision="float32", step_graphs=True, lookahead=False)
    tracker._steps = StepGraphs(tracker.model, capture=True)
    with pytest.raises(RuntimeError, match="out of memory"):
        track(tracker, blob_frames(num_frames=3))
    assert tracker._steps.capture and tracker._steps.fallback_reason is None
    monkeypatch.setattr(StepGraphs, "_capture", capture_eagerly)
    track(tracker, blob_frames(num_frames=3))  # the next run records
    assert tracker._steps.recorded == 1 and tracker._steps.fallback_reason is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="recording a graph needs a CUDA GPU")
def test_a_failed_capture_leaves_the_current_stream_as_it_was():
    """torch.cuda.graph leaves its capture stream current when the body fails; every later kernel would
    queue there. The recording restores the stream the caller had."""
    from medsegany.models.sam2_step_graphs import StepGraphs

    values = torch.ones(4, device="cuda")
    graphs = StepGraphs(torch.nn.Linear(2, 2).cuda(), capture=True)
    before = torch.cuda.current_stream()

    def body():
        return (values * 2).sum().item()  # a host synchronisation: refused while capturing

    with pytest.raises(RuntimeError):
        graphs._capture(body, values.device)
    assert torch.cuda.current_stream() == before
    assert float((values + 1).sum()) == 8.0  # and work on it still runs


def test_new_frames_let_the_graphs_inputs_forget_the_old_features(model, monkeypatch):
    """The model and its graphs outlive a session: new frames make every graph input let its last source
    go (else each graph keeps one old frame's features), and the next run copies afresh, same masks."""
    from medsegany.models.sam2_step_graphs import StepGraphs
    from medsegany.models.sam2_tracker import Sam2Tracker

    monkeypatch.setattr(StepGraphs, "_capture", capture_eagerly)
    tracker = Sam2Tracker(model, precision="float32", step_graphs=True, lookahead=False)
    tracker._steps = StepGraphs(tracker.model, capture=True)
    frames = blob_frames(num_frames=4)
    first = track(tracker, frames)
    inputs = [i for graph in tracker._steps._graphs.values() for i in graph.inputs]
    assert inputs and all(i._source is not None for i in inputs)
    tracker.set_frames(frames)
    assert all(i._source is None and i._signature is None for i in inputs)
    second = track(tracker, frames)
    for frame_index, logits in first.items():
        np.testing.assert_array_equal(second[frame_index], logits)
