"""The exact SAM 2 speed-ups give the same numbers and do no repeated work."""

from __future__ import annotations

import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")


def test_position_embedding_is_memoised_per_size_in_inference_mode_only():
    from medsegany.models.sam2_build import build_sam2_model
    from medsegany.models.sam2_speedups import MEMO_ATTRIBUTE, memoise_position_embedding

    model = build_sam2_model("sam2.1_hiera_t512", None)
    trunk = model.image_encoder.trunk
    with torch.no_grad():
        expected = {hw: trunk._get_pos_embed(hw) for hw in ((128, 128), (64, 64))}
    calls = []
    original = trunk._get_pos_embed
    trunk._get_pos_embed = lambda hw: calls.append(hw) or original(hw)
    assert memoise_position_embedding(model) and memoise_position_embedding(model)  # twice: harmless
    with torch.inference_mode():
        first = trunk._get_pos_embed((128, 128))
        again = trunk._get_pos_embed((128, 128))
        other = trunk._get_pos_embed((64, 64))
    assert again is first and calls == [(128, 128), (64, 64)]
    torch.testing.assert_close(first, expected[(128, 128)], rtol=0, atol=0)
    torch.testing.assert_close(other, expected[(64, 64)], rtol=0, atol=0)
    with torch.no_grad():
        trunk._get_pos_embed((128, 128))  # outside inference mode: computed live, never memoised
    assert calls[-1] == (128, 128) and len(getattr(trunk, MEMO_ATTRIBUTE)) == 2
    assert not memoise_position_embedding(torch.nn.Linear(2, 2))  # no Hiera trunk: nothing to do


def test_shared_bf16_copy_casts_linear_and_conv_weights_once():
    from medsegany.models.sam2_build import build_sam2_model
    from medsegany.models.sam2_speedups import shared_bf16_copy

    torch.manual_seed(0)
    model = build_sam2_model("sam2.1_hiera_t512", None, device="cpu")
    copy = shared_bf16_copy(model)
    assert copy is not model and shared_bf16_copy(model) is copy  # one copy per model
    assert copy.memory_attention.layers[0].linear1.weight.dtype == torch.bfloat16
    assert copy.sam_mask_decoder.conv_s0.weight.dtype == torch.bfloat16
    assert copy.memory_attention.norm.weight.dtype == torch.float32  # norms stay float32, as autocast
    assert model.memory_attention.layers[0].linear1.weight.dtype == torch.float32  # the source untouched
    # under bf16 autocast the copy computes exactly what the float32 model computes
    x = torch.randn(2, 16, 256)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model.memory_attention.layers[0].linear1(x)
        got = copy.memory_attention.layers[0].linear1(x)
    assert torch.equal(expected, got)


def test_constants_are_kept_in_inference_mode_only_and_not_while_dynamo_traces():
    from medsegany.models.sam2_speedups import constants_may_be_kept

    assert not constants_may_be_kept("cpu")
    with torch.no_grad():
        assert not constants_may_be_kept("cpu")
    with torch.inference_mode():
        assert constants_may_be_kept("cpu")
        assert constants_may_be_kept(torch.device("cpu"))

    seen = []

    def traced(x):
        seen.append(constants_may_be_kept(x.device))
        return x + 1

    with torch.inference_mode():
        torch.compile(traced, backend="eager")(torch.ones(2))
    assert seen == [False]  # during the trace; the compiled call does not run the Python again
