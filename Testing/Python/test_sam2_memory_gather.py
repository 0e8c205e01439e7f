"""The gathered memory (medsegany.models.sam2_memory_gather) is Meta's assembled memory, bitwise.

Meta's ``_prepare_memory_conditioned_features`` is run with its call of the memory attention
intercepted (``meta_assembled_memory``), on memory banks of random tensors that exercise each of its
rules: a full memory, the first frames of a stack, tracking in reverse, gaps, more conditioning frames
than it attends to (the others then serve as ordinary memories), a conditioning frame ahead (its
pointer is left out), a stack shorter than the pointer window, SAM 2.0's pointers without temporal
encoding.
"""

from __future__ import annotations

import contextlib

import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from sam2_testing import CONFIG_512  # noqa: E402


@pytest.fixture(scope="module")
def model():
    from medsegany.models.sam2_build import build_sam2_model

    torch.manual_seed(0)
    return build_sam2_model(CONFIG_512, None, device="cpu").eval()


def memory_bank(model, cond_frames, tracked_frames, seed=0, token_major_layout=True):
    """Random outputs in the tracker's layout (bf16 memory features, shared positional encoding)."""
    from medsegany.models.sam2_memory_gather import token_major
    from medsegany.models.sam2_state import FrameOutput

    generator = torch.Generator().manual_seed(seed)
    side = model.image_size // 16
    pos_enc = [torch.randn(1, model.mem_dim, side, side, generator=generator)]

    def output():
        features = torch.randn(1, model.mem_dim, side, side, generator=generator).to(torch.bfloat16)
        return FrameOutput(
            pred_masks=None,
            obj_ptr=torch.randn(1, model.hidden_dim, generator=generator),
            object_score_logits=torch.ones(1, 1),
            maskmem_features=token_major(features) if token_major_layout else features,
            maskmem_pos_enc=pos_enc,
        )

    return {
        "cond_frame_outputs": {t: output() for t in cond_frames},
        "non_cond_frame_outputs": {t: output() for t in tracked_frames},
    }


def meta_memory(model, frame_index, bank, num_frames, reverse):
    """(memory, memory_pos, num_obj_ptr_tokens) as Meta's code hands them to its memory attention."""
    from medsegany.models.sam2_memory_gather import meta_assembled_memory

    side = model.image_size // 16
    feats = [torch.zeros(side * side, 1, model.hidden_dim)]
    return meta_assembled_memory(model, frame_index, feats, [(side, side)], bank, num_frames, reverse)


def ours(model, frame_index, bank, num_frames, reverse):
    from medsegany.models.sam2_memory_gather import gather_memory, memory_from_gathered, select_memory

    selection = select_memory(model, frame_index, bank, num_frames, reverse)
    gathered = gather_memory(selection, torch.device("cpu"))
    pos_enc = selection.spatial[0][1]["maskmem_pos_enc"][-1]
    return memory_from_gathered(model, gathered, pos_enc)


# (conditioning frames, tracked frames, frame, frames in the stack, reverse, max conditioning frames)
CASES = {
    "full memory, forward": ([10], range(11, 40), 40, 100, False, -1),
    "first frames after the prompt": ([10], [11], 12, 100, False, -1),
    "reverse": ([50], range(30, 50), 29, 100, True, -1),
    "near the stack's start, reverse": ([5], range(1, 5), 0, 100, True, -1),
    "gaps in the memory": ([10], [11, 13, 14, 17, 19], 20, 100, False, -1),
    "unselected conditioning frames serve as memory": ([2, 20, 23, 26], range(3, 20), 27, 100, False, 2),
    "a conditioning frame ahead": ([10, 30], range(11, 25), 25, 100, False, -1),
    "a stack shorter than the pointer window": ([2], range(3, 7), 7, 9, False, -1),
    "a stack of two frames": ([0], [], 1, 2, False, -1),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_gathered_memory_is_metas(model, case, precision):
    cond, tracked, frame, num_frames, reverse, max_cond = CASES[case]
    bank = memory_bank(model, cond, tracked, token_major_layout=case != "gaps in the memory")
    saved = model.max_cond_frames_in_attn
    model.max_cond_frames_in_attn = max_cond
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16" else contextlib.nullcontext()
    )
    try:
        with torch.inference_mode(), autocast:
            expected = meta_memory(model, frame, bank, num_frames, reverse)
            got = ours(model, frame, bank, num_frames, reverse)
    finally:
        model.max_cond_frames_in_attn = saved
    assert got[2] == expected[2]
    for ours_tensor, meta_tensor in zip(got[:2], expected[:2]):
        assert ours_tensor.dtype == meta_tensor.dtype and ours_tensor.shape == meta_tensor.shape
        assert torch.equal(ours_tensor, meta_tensor)


def test_pointers_without_temporal_encoding(model):
    """SAM 2.0's configurations add no temporal encoding to the object pointers."""
    bank = memory_bank(model, [10], range(11, 30))
    model.add_tpos_enc_to_obj_ptrs = False
    try:
        with torch.inference_mode():
            expected = meta_memory(model, 30, bank, 100, False)
            got = ours(model, 30, bank, 100, False)
    finally:
        model.add_tpos_enc_to_obj_ptrs = True
    assert got[2] == expected[2] > 0
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_selection_names_metas_frames(model):
    """Full memory, forward: the conditioning frame, then frames f-6 .. f-1; pointers: the prompt's, then
    f-1 .. f-15 (the window of 16)."""
    from medsegany.models.sam2_memory_gather import select_memory

    bank = memory_bank(model, [10], range(11, 40))
    selection = select_memory(model, 40, bank, 100, False)
    tracked = bank["non_cond_frame_outputs"]
    assert [out for _, out in selection.spatial] == [bank["cond_frame_outputs"][10]] + [
        tracked[t] for t in range(34, 40)
    ]
    # maskmem_tpos_enc index: num_maskmem - t_pos - 1 (the conditioning frame t_pos 0, the latest 6)
    assert [index for index, _ in selection.spatial] == [6, 5, 4, 3, 2, 1, 0]
    assert [distance for distance, _ in selection.pointers] == [30, *range(1, 16)]
    assert selection.max_pointers == 16


def test_gather_into_buffers(model):
    """With ``out`` (a recorded graph's buffers) the same tensors land in the buffers, no new ones."""
    from medsegany.models.sam2_memory_gather import gather_memory, select_memory

    bank = memory_bank(model, [10], range(11, 40))
    selection = select_memory(model, 40, bank, 100, False)
    fresh = gather_memory(selection, torch.device("cpu"))
    buffers = gather_memory(select_memory(model, 39, bank, 100, False), torch.device("cpu"))
    addresses = (buffers.spatial.data_ptr(), buffers.pointers.data_ptr(), buffers.indices.data_ptr())
    filled = gather_memory(selection, torch.device("cpu"), out=buffers)
    assert filled is buffers
    assert (filled.spatial.data_ptr(), filled.pointers.data_ptr(), filled.indices.data_ptr()) == addresses
    for name in ("spatial", "pointers", "indices"):
        assert torch.equal(getattr(filled, name), getattr(fresh, name))
    with pytest.raises(ValueError, match="another memory length"):
        gather_memory(select_memory(model, 12, bank, 100, False), torch.device("cpu"), out=buffers)


def test_token_major_keeps_values_and_copies_once():
    from medsegany.models.sam2_memory_gather import token_major

    features = torch.randn(1, 64, 8, 8)
    tokens = token_major(features)
    assert torch.equal(tokens, features) and tokens.shape == features.shape
    assert tokens.flatten(2).permute(2, 0, 1).is_contiguous()
    assert token_major(tokens).data_ptr() == tokens.data_ptr()  # already token-major: no copy
    assert tokens.to(torch.bfloat16).flatten(2).permute(2, 0, 1).is_contiguous()  # a cast keeps the layout


def test_the_interception_is_undone(model):
    """Meta's assembly is read by intercepting the memory attention: its own forward (or one set on the
    instance, e.g. torch.compile'd) is back afterwards."""
    bank = memory_bank(model, [10], range(11, 20))
    meta_memory(model, 20, bank, 100, False)
    assert "forward" not in model.memory_attention.__dict__

    def compiled_forward(*args, **kwargs):
        raise AssertionError("not called by the assembly")

    model.memory_attention.forward = compiled_forward
    try:
        meta_memory(model, 20, bank, 100, False)
        assert model.memory_attention.forward is compiled_forward
    finally:
        del model.memory_attention.forward


def test_models_without_memory_are_not_supported(model):
    from medsegany.models.sam2_memory_gather import supports

    assert supports(model)
    model.train()
    try:
        assert not supports(model)
    finally:
        model.eval()
