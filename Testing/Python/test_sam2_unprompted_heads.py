"""SAM 2's mask heads for a tracked frame on kept prompt embeddings (medsegany.models.sam2_unprompted_heads)
give Meta's ``_forward_sam_heads`` outputs bit for bit, on the CPU in float32 and under bf16 autocast, with
the object present and absent (the ``[cuda]`` cases in ``benchmarks/run_gpu.sh cudatests``); the kept
embeddings are Meta's and are kept only where that is safe.
"""

from __future__ import annotations

import gc
import weakref

import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from sam2_testing import CONFIG_512, on_one_thread_and_all  # noqa: E402


def small_model(device: str):
    from medsegany.models.sam2_build import build_sam2_model, image_size_overrides

    torch.manual_seed(0)
    return build_sam2_model(CONFIG_512, None, device=device, overrides=image_size_overrides(128))


def head_inputs(model, batch: int, device: str):
    """Random image features of a 128 px frame: the memory-conditioned ones and the two high-res levels
    (after the mask decoder's projections, as the backbone hands them over)."""
    size = model.sam_image_embedding_size
    generator = torch.Generator().manual_seed(1)
    pix_feat = torch.randn(batch, model.hidden_dim, size, size, generator=generator).to(device)
    convs = model.sam_mask_decoder
    high_res = [
        torch.randn(batch, convs.conv_s0.out_channels, 4 * size, 4 * size, generator=generator).to(device),
        torch.randn(batch, convs.conv_s1.out_channels, 2 * size, 2 * size, generator=generator).to(device),
    ]
    return pix_feat, high_res


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("appearing", [True, False])
def test_heads_give_metas_outputs_bitwise(monkeypatch, device, precision, appearing):
    from medsegany.models.sam2_unprompted_heads import forward_heads_unprompted

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model = small_model(device)
    assert model._use_multimask(False, None)  # SAM 2.1 tracks with three candidates: the argmax path
    decoder_forward = model.sam_mask_decoder.forward

    def scores_of_one_sign(*args, **kwargs):  # the object present or absent, whatever the weights say
        masks, ious, tokens, scores = decoder_forward(*args, **kwargs)
        return masks, ious, tokens, scores.abs() if appearing else -scores.abs()

    monkeypatch.setattr(model.sam_mask_decoder, "forward", scores_of_one_sign)
    pix_feat, high_res = head_inputs(model, 2, device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    # one thread too: there a CPU's upsampling rounds by the number of channels it is given
    for thread_count in on_one_thread_and_all():
        with torch.inference_mode(), autocast:
            meta = model._forward_sam_heads(
                backbone_features=pix_feat,
                point_inputs=None,
                mask_inputs=None,
                high_res_features=high_res,
                multimask_output=True,
            )
            for _ in range(2):  # the first call computes the embeddings, the second reads the kept ones
                ours = forward_heads_unprompted(model, pix_feat, high_res)
                _, _, _, low_res, high_res_masks, obj_ptr, scores = meta
                for got, expected in zip(ours, (low_res, high_res_masks, obj_ptr, scores)):
                    assert got.dtype == expected.dtype and got.shape == expected.shape
                    assert torch.equal(got, expected), thread_count
    assert bool((scores > 0).all()) == appearing
    if not appearing:
        assert bool((low_res == -1024.0).all())  # Meta's NO_OBJ_SCORE


def test_embeddings_are_metas_and_kept_only_where_safe():
    from medsegany.models import sam2_unprompted_heads as heads

    model = small_model("cpu")
    with torch.no_grad():  # not inference mode: computed every call (training may change the weights)
        first = heads.unprompted_embeddings(model, 1, "cpu")
        assert heads.unprompted_embeddings(model, 1, "cpu")[0] is not first[0]
    assert model not in heads._EMBEDDINGS
    with torch.inference_mode():
        kept = heads.unprompted_embeddings(model, 1, "cpu")
        assert heads.unprompted_embeddings(model, 1, "cpu")[0] is kept[0]
        for got, expected in zip(kept, first):
            assert torch.equal(got, expected)
        # another batch size or autocast setting is another entry, with its own numbers
        assert heads.unprompted_embeddings(model, 3, "cpu")[0].shape[0] == 3
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = heads.unprompted_embeddings(model, 1, "cpu")
        assert bf16[2].dtype == torch.bfloat16 and kept[2].dtype == torch.float32
    assert len(heads._EMBEDDINGS[model]) == 3
    # the entries go with the model
    reference = weakref.ref(model)
    del model
    gc.collect()
    assert reference() is None


def test_sine_encoding_gives_metas_and_keeps_its_frequencies_in_inference_mode():
    from medsegany.models import sam2_memory_gather as gather
    from sam2.modeling.sam2_utils import get_1d_sine_pe

    positions = torch.tensor([0.0, 1.0, 3.0, 15.0]) / 15
    gather._SINE_FREQUENCIES.clear()
    with torch.no_grad():
        assert torch.equal(gather.sine_encoding(positions, 64), get_1d_sine_pe(positions, dim=64))
    assert not gather._SINE_FREQUENCIES
    with torch.inference_mode():
        for _ in range(2):
            assert torch.equal(gather.sine_encoding(positions, 64), get_1d_sine_pe(positions, dim=64))
    assert list(gather._SINE_FREQUENCIES) == [(64, "cpu")]
