"""The tracking step through torch.compile (medsegany.models.sam2_step_compile), on the CPU.

What a GPU adds (Triton kernels recorded into the step graphs, and whether it pays) is measured by
``benchmarks/run_gpu.sh fused``; here: the compiled step tracks as the eager one does through the graph
path's buffers (a stand-in replays the recorded step eagerly), compiles a bounded number of times while
the memory fills, and any compiler failure runs the step eagerly with the reason kept.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sam2_testing import CONFIG_512, blob_frames, capture_eagerly, disc_box_xyxy  # noqa: E402


def test_compiling_the_step_is_asked_for_or_read_from_the_environment(monkeypatch):
    from medsegany.models.sam2_step_compile import COMPILE_STEP_VARIABLE, compile_step_requested

    monkeypatch.delenv(COMPILE_STEP_VARIABLE, raising=False)
    assert not compile_step_requested(None)  # off by default
    assert compile_step_requested(True)
    monkeypatch.setenv(COMPILE_STEP_VARIABLE, "1")
    assert compile_step_requested(None)
    assert not compile_step_requested(False)  # the caller's choice wins
    monkeypatch.setenv(COMPILE_STEP_VARIABLE, "0")
    assert not compile_step_requested(None)


def test_a_compiler_failure_runs_the_step_eagerly_with_the_reason(monkeypatch, caplog):
    from medsegany.models.sam2_step_compile import CompiledStep

    attempts = []

    def failing_compile(function, **options):
        attempts.append(options)

        def compiled(*args, **kwargs):
            raise RuntimeError("Cannot find a working triton installation\nmore lines")

        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    step = CompiledStep(lambda x, scale=1: x * scale + 1)
    assert step(torch.ones(2), scale=3).tolist() == [4.0, 4.0]  # the eager step's result
    assert not step.active and not step.report.compiled and step.compiles == 0
    assert step.report.fallback_reason == "RuntimeError: Cannot find a working triton installation"
    assert "running it eagerly" in caplog.text
    assert step(torch.zeros(1)).tolist() == [1.0]
    assert len(attempts) == 1  # never tried again
    assert attempts[0]["mode"] == "default"  # no CUDA graph trees: the step graphs record the kernels


def test_running_out_of_memory_while_compiling_is_raised(monkeypatch):
    from medsegany.models.sam2_step_compile import CompiledStep

    def compile_out_of_memory(function, **options):
        def compiled(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        return compiled

    monkeypatch.setattr(torch, "compile", compile_out_of_memory)
    step = CompiledStep(lambda x: x)
    with pytest.raises(torch.OutOfMemoryError):
        step(torch.ones(1))
    assert step.active  # not a compiler failure: the next run compiles again


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("sam2")
    from medsegany.models.sam2_build import build_sam2_model, image_size_overrides

    torch.manual_seed(0)
    # 128 px: the compile costs the same at any size, the steps far less
    return build_sam2_model(CONFIG_512, None, device="cpu", overrides=image_size_overrides(128))


def test_the_compiled_step_tracks_as_the_eager_one_through_the_graph_path(model, monkeypatch):
    """Forward while the memory fills (7 memory frames, 4 pointers: full from the 7th step), then
    backward, through the graph path's buffers; float32, where inductor's fused kernels differ from the
    eager ones by rounding only."""
    pytest.importorskip("sam2")
    from medsegany.models.compute import cpp_compiler_available
    from medsegany.models.sam2_step_graphs import StepGraphs
    from medsegany.models.sam2_tracker import Sam2Tracker

    if not cpp_compiler_available():
        pytest.skip("inductor needs a C++ compiler on a CPU")
    monkeypatch.setattr(model, "max_obj_ptrs_in_encoder", 4)
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
    assert stats["replays"] > 0 and stats["fallback_reason"] is None
    assert sorted(got) == sorted(expected)
    for frame_index, logits in expected.items():
        assert np.array_equal(got[frame_index] > 0, logits > 0), frame_index
        np.testing.assert_allclose(got[frame_index], logits, atol=1e-4, err_msg=str(frame_index))


def test_trackers_with_and_without_a_compiled_step_keep_their_own_graphs():
    from medsegany.models.sam2_step_graphs import step_graphs_for

    other = torch.nn.Linear(2, 2)  # any model object: graphs are keyed by it
    eager = step_graphs_for(other, True)
    compiled = step_graphs_for(other, True, compile_step=True)
    assert compiled is not eager and compiled.compiled_step is not None and eager.compiled_step is None
    assert step_graphs_for(other, True) is eager  # switching back does not record again
    assert step_graphs_for(other, True, compile_step=True) is compiled
