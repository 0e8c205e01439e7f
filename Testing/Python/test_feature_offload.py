"""Features kept in host memory: every tensor of an encoder's output moves, nothing else changes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medsegany.feature_offload import host_buffer_like, to_device, to_host  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@dataclass(frozen=True)
class Embedding:  # as LiteMedSAM's and SAM's embeddings: a tensor and plain fields
    features: object
    frame_shape: tuple[int, int]


def test_every_tensor_of_lists_tuples_and_dataclasses_moves_and_nothing_else():
    value = [torch.ones(2), (torch.zeros(1), "name"), Embedding(torch.ones(3), (4, 5)), 7]
    moved = to_device(value, "meta")  # a device this machine has: only where the tensors are changes
    assert isinstance(moved, list) and isinstance(moved[1], tuple) and isinstance(moved[2], Embedding)
    assert moved[0].device.type == moved[1][0].device.type == moved[2].features.device.type == "meta"
    assert moved[1][1] == "name" and moved[2].frame_shape == (4, 5) and moved[3] == 7
    assert moved[2].features.shape == (3,)
    host = [torch.ones(2)]
    assert to_host(host)[0] is host[0]  # already in host memory: not copied


def test_the_host_buffer_keeps_the_layout_of_channels_last_features():
    # SAM 2's FPN features are channels-last; in another layout the GPU's convolutions round differently
    features = torch.randn(1, 32, 16, 16).bfloat16().to(memory_format=torch.channels_last)
    buffer = host_buffer_like(features, pin_memory=False)
    assert buffer.stride() == features.stride() and buffer.dtype == torch.bfloat16
    assert buffer.is_contiguous(memory_format=torch.channels_last)
    gappy = torch.randn(4, 6)[:, ::2]  # not dense: a plain contiguous buffer
    assert host_buffer_like(gappy, pin_memory=False).is_contiguous()


@needs_cuda
def test_cuda_features_go_to_page_locked_host_memory_and_come_back_equal():
    channels_last = torch.randn(1, 64, 64, 64, device="cuda").to(memory_format=torch.channels_last)
    features = [
        torch.randn(1, 32, 128, 128, device="cuda").bfloat16(),
        torch.randn(1, 256, 32, 32).cuda(),
        channels_last,
    ]
    host = to_host(features)
    assert all(t.device.type == "cpu" and t.is_pinned() for t in host)
    back = to_device(host, features[0].device)
    for before, after in zip(features, back):
        assert after.device == before.device and torch.equal(after, before)
        assert after.stride() == before.stride()


@needs_cuda
def test_a_cuda_tracker_with_its_features_in_host_memory_gives_the_same_masks():
    """On a GPU, with the default CUDA path (step graphs, a step launched ahead): features kept in
    page-locked host memory give the masks of features kept on the GPU, a correction included."""
    pytest.importorskip("sam2")
    from medsegany.models.sam2_build import build_sam2_model
    from medsegany.models.sam2_tracker import Sam2Tracker
    from sam2_testing import CONFIG_512, blob_frames, disc_box_xyxy

    torch.manual_seed(0)
    model = build_sam2_model(CONFIG_512, None, device="cuda")
    frames = blob_frames(num_frames=10)

    def track(offload):
        tracker = Sam2Tracker(model)
        tracker.offload_features = offload
        tracker.set_frames(frames)
        tracker.precompute_features(batch_size=4)
        tracker.add_prompts(1, 4, box_frame_xyxy=disc_box_xyxy(frames, 4))
        logits = {}
        for direction in (+1, -1):
            for result in tracker.propagate(4, direction):
                logits[(str(direction), result.frame_index)] = result.mask_logits_frame
        tracker.add_prompts(1, 6, points_frame_xy=np.array([[20.0, 20.0]]), point_labels=np.array([0]))
        for result in tracker.propagate(6, +1):
            logits[("correction", result.frame_index)] = result.mask_logits_frame
        return tracker, logits

    _, expected = track(False)
    tracker, got = track(True)
    assert all(t.device.type == "cpu" and t.is_pinned() for t in tracker._cache.stored(0))
    assert sorted(got) == sorted(expected)
    for key, logits in expected.items():
        np.testing.assert_array_equal(got[key], logits, err_msg=str(key))
