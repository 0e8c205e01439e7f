"""SAM 2's image encoder through torch.compile (medsegany.models.sam2_compiled_encoder), on the CPU and CUDA.

Whether it pays is for a GPU (``benchmarks/run_gpu.sh encoder_compile fusedspeed fusedlarge``); here: a
tracker that asks for it encodes through one compiled call per model, in one graph (the memoised position
embedding steps aside while dynamo traces), with the eager encoder's features in float32 (the ``[cuda]``
case in ``run_gpu.sh cudatests``).
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from sam2_testing import CONFIG_512, blob_frames, skip_unless_compilable  # noqa: E402


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_compiled_encoder_gives_the_eager_features_in_one_graph(device):
    """Float32; on CUDA (``benchmarks/run_gpu.sh cudatests``) with inductor's Triton kernels."""
    from medsegany.models.sam2_build import build_sam2_model, image_size_overrides
    from medsegany.models.sam2_compiled_encoder import compiled_forward_image
    from medsegany.models.sam2_tracker import Sam2Tracker

    skip_unless_compilable(device)
    torch.manual_seed(0)
    model = build_sam2_model(CONFIG_512, None, device=device, overrides=image_size_overrides(128))
    frames = blob_frames(num_frames=2)
    eager = Sam2Tracker(model, precision="float32")
    compiled = Sam2Tracker(model, precision="float32", compile_encoder=True)
    assert eager.encoder_compile_stats is None
    for tracker in (eager, compiled):
        tracker.set_frames(frames)
        tracker.precompute_features(range(2), batch_size=1)
    stats = compiled.encoder_compile_stats
    assert stats["compiled"] and stats["fallback_reason"] is None and stats["compile_s"] > 0
    # one batch size, one compile, one graph: the position embedding's memo would break it in two
    assert stats["compiles"] == 1 and stats["graphs"] == 1, stats
    for frame_index in range(2):
        levels = zip(compiled._cache.get(frame_index), eager._cache.get(frame_index), strict=True)
        for got, expected in levels:
            got, expected = got.cpu().numpy(), expected.cpu().numpy()
            # CUDA's float32 convolutions run in TF32 (PyTorch's default), where a rounding apart in the
            # input may move a product by 2**-10
            relative = 1e-4 if device == "cpu" else 1e-2
            np.testing.assert_allclose(got, expected, atol=relative * float(np.abs(expected).max()))
    # one compiled call per model, shared by its trackers, and it does not keep the model alive
    assert compiled_forward_image(model) is compiled._compiled_encoder
    alive = weakref.ref(model)
    del model, eager, compiled, tracker
    gc.collect()
    assert alive() is None


def test_trackers_made_with_the_defaults_read_the_environment(monkeypatch):
    """As a session makes them: the variable compiles the encoder on any device (no compile happens
    before the first batch)."""
    from medsegany.models.sam2_build import build_sam2_model, image_size_overrides
    from medsegany.models.sam2_compiled_encoder import COMPILE_ENCODER_VARIABLE
    from medsegany.models.sam2_tracker import Sam2Tracker

    model = build_sam2_model(CONFIG_512, None, device="cpu", overrides=image_size_overrides(128))
    monkeypatch.setenv(COMPILE_ENCODER_VARIABLE, "1")
    # the step has a variable of its own
    assert not Sam2Tracker(model, precision="float32", step_graphs=True).step_graph_stats["compile_step"]
    assert Sam2Tracker(model, precision="float32").encoder_compile_stats == {
        "compiled": False,
        "compiles": 0,
        "graphs": 0,
        "compile_s": None,
        "fallback_reason": None,
    }
    monkeypatch.setenv(COMPILE_ENCODER_VARIABLE, "0")
    assert Sam2Tracker(model, precision="float32").encoder_compile_stats is None
