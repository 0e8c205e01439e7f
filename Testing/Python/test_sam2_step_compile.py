"""The tracking step through torch.compile (medsegany.models.sam2_step_compile), on the CPU and on CUDA.

Whether it pays is measured by ``benchmarks/run_gpu.sh fused``; here: the compiled step tracks as the
eager one does through the graph path's buffers (on the CPU a stand-in replays the recorded step eagerly;
the ``[cuda]`` case records inductor's kernels, in ``run_gpu.sh cudatests``), compiles a bounded number
of times while the memory fills, in one graph each time. What happens when compiling fails:
test_compiled_call.py.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sam2_testing import (  # noqa: E402
    CONFIG_512,
    blob_frames,
    capture_eagerly,
    disc_box_xyxy,
    skip_unless_compilable,
)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_compiled_step_tracks_as_the_eager_one_through_the_graph_path(monkeypatch, device):
    """Forward while the memory fills (7 memory frames, 4 pointers: full from the 7th step), then
    backward, through the graph path's buffers; float32, where inductor's fused kernels differ from the
    eager ones by rounding only. On the CPU a stand-in replays the recorded step eagerly; on CUDA
    (``benchmarks/run_gpu.sh cudatests``) the graphs are recorded from inductor's kernels. The compiled
    step does not keep its model alive."""
    pytest.importorskip("sam2")
    from medsegany.models.sam2_build import build_sam2_model, image_size_overrides
    from medsegany.models.sam2_step_graphs import StepGraphs
    from medsegany.models.sam2_tracker import Sam2Tracker

    skip_unless_compilable(device)
    torch.manual_seed(0)
    # 128 px: the compile costs the same at any size, the steps far less
    model = build_sam2_model(CONFIG_512, None, device=device, overrides=image_size_overrides(128))
    model.max_obj_ptrs_in_encoder = 4  # 16 in the configuration
    frames = blob_frames(num_frames=12)
    key = 2

    def run(tracker):
        tracker.set_frames(frames)
        tracker.add_prompts(1, key, box_frame_xyxy=disc_box_xyxy(frames, key))
        return {
            result.frame_index: result.mask_logits_frame
            for direction in (+1, -1)
            for result in tracker.propagate(key, direction)
        }

    expected = run(Sam2Tracker(model, precision="float32", step_graphs=False))
    if device == "cpu":
        monkeypatch.setattr(StepGraphs, "_capture", capture_eagerly)
    tracker = Sam2Tracker(model, precision="float32", step_graphs=True, compile_step=True)
    tracker._steps = StepGraphs(tracker.model, capture=True, compile_step=True)
    got = run(tracker)
    stats = tracker.step_graph_stats
    assert stats["compile_step"] and stats["step_compiled"], stats
    assert stats["step_compile_fallback"] is None and stats["step_compile_s"] > 0
    # 11 steps over 10 memory lengths: the first length compiles, the next makes it symbolic, and the
    # rest reuse that graph (one compile per length would meet dynamo's limit of 8 and run eagerly)
    assert 1 <= stats["step_compiles"] <= 3, stats
    assert stats["step_compiled_graphs"] == stats["step_compiles"]  # one graph each: no graph breaks
    assert stats["replays"] > 0 and stats["fallback_reason"] is None and stats["capture"]
    assert sorted(got) == sorted(expected)
    for frame_index, logits in expected.items():
        if device == "cpu":
            assert np.array_equal(got[frame_index] > 0, logits > 0), frame_index
            np.testing.assert_allclose(got[frame_index], logits, atol=1e-4, err_msg=str(frame_index))
        else:  # CUDA's kernels for the fused and the eager operations round apart a little more
            assert np.mean((got[frame_index] > 0) == (logits > 0)) >= 0.999, frame_index
            np.testing.assert_allclose(got[frame_index], logits, atol=1e-2, err_msg=str(frame_index))
    alive = weakref.ref(model)
    del model, tracker
    gc.collect()
    assert alive() is None


def test_trackers_with_and_without_a_compiled_step_keep_their_own_graphs():
    from medsegany.models.sam2_step_graphs import step_graphs_for

    other = torch.nn.Linear(2, 2)  # any model object: graphs are keyed by it
    eager = step_graphs_for(other, True)
    compiled = step_graphs_for(other, True, compile_step=True)
    assert compiled is not eager and compiled.compiled_step is not None and eager.compiled_step is None
    assert step_graphs_for(other, True) is eager  # switching back does not record again
    assert step_graphs_for(other, True, compile_step=True) is compiled


def test_trackers_made_with_the_defaults_read_the_environment(monkeypatch):
    """As a session makes them: the variable compiles the step where the step is split (CUDA by default;
    here asked for), and nothing where it is not."""
    pytest.importorskip("sam2")
    from medsegany.models.sam2_build import build_sam2_model, image_size_overrides
    from medsegany.models.sam2_step_compile import COMPILE_STEP_VARIABLE
    from medsegany.models.sam2_tracker import Sam2Tracker

    model = build_sam2_model(CONFIG_512, None, device="cpu", overrides=image_size_overrides(128))
    monkeypatch.setenv(COMPILE_STEP_VARIABLE, "1")
    split = Sam2Tracker(model, precision="float32", step_graphs=True)
    assert split.compile_step and split.step_graph_stats["compile_step"]
    assert split.encoder_compile_stats is None  # the encoder has a variable of its own
    assert not Sam2Tracker(model, precision="float32", step_graphs=False).compile_step
    monkeypatch.setenv(COMPILE_STEP_VARIABLE, "0")
    assert not Sam2Tracker(model, precision="float32", step_graphs=True).step_graph_stats["compile_step"]
