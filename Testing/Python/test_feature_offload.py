"""Features kept in host memory: every tensor of an encoder's output moves, nothing else changes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")

from medsegany.feature_offload import to_device, to_host  # noqa: E402

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


@needs_cuda
def test_cuda_features_go_to_page_locked_host_memory_and_come_back_equal():
    features = [torch.randn(1, 32, 128, 128, device="cuda").bfloat16(), torch.randn(1, 256, 32, 32).cuda()]
    host = to_host(features)
    assert all(t.device.type == "cpu" and t.is_pinned() for t in host)
    back = to_device(host, features[0].device)
    for before, after in zip(features, back):
        assert after.device == before.device and torch.equal(after, before)
