"""The encoder prepared for eager inference: norms folded where it is safe, the same function, the source
untouched; and LiteMedSAM's trained encoder through it."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medsegany.models.eager_inference import EagerInferenceEncoder, fold_batch_norms  # noqa: E402
from test_litemedsam import disc_frame  # noqa: E402


class ConvBN(torch.nn.Sequential):
    """TinyViT's Conv2d_BN: a Sequential subclass with named children."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.add_module("c", torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False))
        self.add_module("bn", torch.nn.BatchNorm2d(cout))


def trained_norms(module: torch.nn.Module) -> torch.nn.Module:
    """Running statistics and affine parameters far from the defaults, as after training."""
    generator = torch.Generator().manual_seed(1)
    for norm in module.modules():
        if isinstance(norm, torch.nn.BatchNorm2d) and norm.running_mean is not None:
            size = norm.num_features
            norm.running_mean.copy_(torch.randn(size, generator=generator))
            norm.running_var.copy_(torch.rand(size, generator=generator) * 3 + 0.1)
            norm.weight.data.copy_(torch.randn(size, generator=generator))
            norm.bias.data.copy_(torch.randn(size, generator=generator))
    return module.eval()


def test_norms_that_follow_a_convolution_in_a_sequential_are_folded():
    torch.manual_seed(0)
    net = trained_norms(
        torch.nn.Sequential(
            ConvBN(3, 8),
            torch.nn.GELU(),
            torch.nn.Conv2d(8, 8, 1),
            torch.nn.BatchNorm2d(8),
            torch.nn.BatchNorm2d(8),  # follows a norm, not a convolution: kept
            torch.nn.BatchNorm2d(8, track_running_stats=False),  # batch statistics: nothing to fold
        )
    )
    x = torch.randn(2, 3, 12, 12)
    with torch.inference_mode():
        expected = net(x)
        folded = fold_batch_norms(net)
        got = net(x)
    assert folded == 2
    assert isinstance(net[0].bn, torch.nn.Identity) and isinstance(net[3], torch.nn.Identity)
    assert type(net[4]) is type(net[5]) is torch.nn.BatchNorm2d
    assert net[0].c.bias is not None  # the norm's shift went into the convolution's bias
    # float32 rounding of the folded weights, amplified by the norms kept after them
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_a_norm_outside_a_sequential_is_not_folded():
    """Outside a Sequential the order of the calls is the forward's, not the children's: left alone."""

    class Residual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 1)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.bn(x))  # the norm runs first

    net = trained_norms(Residual())
    assert fold_batch_norms(net) == 0
    assert type(net.bn) is torch.nn.BatchNorm2d


def test_the_prepared_copy_computes_the_sources_function_and_leaves_it_alone():
    torch.manual_seed(0)
    source = trained_norms(torch.nn.Sequential(ConvBN(3, 16), torch.nn.GELU(), ConvBN(16, 4)))
    x = torch.randn(1, 3, 20, 20)
    encoder = EagerInferenceEncoder(source, bfloat16=False)
    with torch.inference_mode():
        expected = source(x)
        got = encoder(x)
    assert encoder.folded == 2
    assert type(source[0].bn) is torch.nn.BatchNorm2d  # the source keeps its norms
    assert source[0].c.weight.is_contiguous()  # and its layout
    assert encoder.module[0].c.weight.is_contiguous(memory_format=torch.channels_last)
    assert got.is_contiguous()  # laid out as the source's outputs, whatever the copy's layout
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_under_bf16_the_copy_holds_bf16_weights_and_stays_close():
    torch.manual_seed(0)
    source = trained_norms(torch.nn.Sequential(ConvBN(3, 16), torch.nn.GELU(), ConvBN(16, 4)))
    encoder = EagerInferenceEncoder(source, bfloat16=True)
    assert encoder.module[0].c.weight.dtype == torch.bfloat16
    assert source[0].c.weight.dtype == torch.float32
    x = torch.randn(1, 3, 20, 20)
    with torch.inference_mode():
        expected = source(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = encoder(x)
    # bf16 keeps 8 bits of mantissa: relative errors of about 2^-8 per product
    torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.05 * float(expected.abs().max()))


def test_litemedsams_trained_encoder_gives_the_same_features_and_masks():
    """The bundled weights: the prepared float32 encoder against the plain one, and what the model uses."""
    from medsegany.models.litemedsam import LiteMedSamModel

    frame, box = disc_frame()
    plain = LiteMedSamModel(device="cpu", precision="float32", compile="off", eager_speedups=False)
    fast = LiteMedSamModel(device="cpu", precision="float32", compile="off")
    assert isinstance(fast.encoder.eager, EagerInferenceEncoder)
    assert fast.encoder.eager.strip_blocks == 2  # the first stage's two wide blocks (models.row_strips)
    assert fast.encoder.eager.folded == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in plain.net.image_encoder.modules()
    )
    source = plain.net.image_encoder
    source_bytes = sum(t.numel() * t.element_size() for t in [*source.parameters(), *source.buffers()])
    assert 0.9 * source_bytes < fast.encoder.eager.nbytes < 1.1 * source_bytes  # what the estimate adds
    expected, got = plain.embed_frames([frame])[0], fast.embed_frames([frame])[0]
    scale = float(expected.features.abs().max())
    assert float((got.features - expected.features).abs().max()) < 1e-4 * scale
    expected_mask = plain.predict(expected, box).mask_frame
    np.testing.assert_array_equal(fast.predict(got, box).mask_frame, expected_mask)
    assert expected_mask.sum() > 500  # the disc was found
