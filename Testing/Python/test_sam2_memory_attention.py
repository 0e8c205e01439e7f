"""SAM 2's memory attention with its keys and values prepared once (medsegany.models.sam2_memory_attention)
gives Meta's ``MemoryAttention.forward`` output bit for bit, on the CPU in float32 and under bf16 autocast,
with and without object pointer tokens, on one thread and on all (the ``[cuda]`` cases in
``benchmarks/run_gpu.sh cudatests``), with 3 fewer additions and, under autocast, 6 fewer casts a step.
"""

from __future__ import annotations

import collections

import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from sam2_testing import CONFIG_512, on_one_thread_and_all  # noqa: E402


def attention_and_inputs(device: str, pointer_tokens: int):
    """SAM 2.1 tiny's memory attention (128 px: 8 x 8 tokens a frame) and random inputs: the frame's
    tokens, 7 memory frames and ``pointer_tokens`` pointer tokens, with their positional encodings."""
    from medsegany.models.sam2_build import build_sam2_model, image_size_overrides

    torch.manual_seed(0)
    model = build_sam2_model(CONFIG_512, None, device=device, overrides=image_size_overrides(128))
    tokens = model.sam_image_embedding_size**2
    memory_tokens = 7 * tokens + pointer_tokens
    generator = torch.Generator().manual_seed(1)

    def normal(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    curr, curr_pos = normal(tokens, 1, model.hidden_dim), normal(tokens, 1, model.hidden_dim)
    memory, memory_pos = normal(memory_tokens, 1, model.mem_dim), normal(memory_tokens, 1, model.mem_dim)
    return model.memory_attention, (curr, curr_pos, memory, memory_pos)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("pointer_tokens", [0, 16])
def test_gives_metas_output_bitwise(device, precision, pointer_tokens):
    from medsegany.models.sam2_memory_attention import attend_to_memory

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    attention, (curr, curr_pos, memory, memory_pos) = attention_and_inputs(device, pointer_tokens)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    for thread_count in on_one_thread_and_all():
        with torch.inference_mode(), autocast:
            meta = attention(curr, memory, curr_pos, memory_pos, pointer_tokens)
            ours = attend_to_memory(attention, curr, curr_pos, memory, memory_pos, pointer_tokens)
        assert ours.dtype == meta.dtype and ours.shape == meta.shape == curr.shape
        assert torch.equal(ours, meta), thread_count


def test_prepares_keys_and_values_once_for_all_layers():
    """Counted by PyTorch's profiler under bf16 autocast: 4 layers, so 3 additions and 6 casts fewer."""
    from medsegany.models.sam2_memory_attention import attend_to_memory

    attention, (curr, curr_pos, memory, memory_pos) = attention_and_inputs("cpu", 16)
    assert len(attention.layers) == 4

    def profiled(call):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            call()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                call()
        return collections.Counter(event.name for event in profile.events())

    meta = profiled(lambda: attention(curr, memory, curr_pos, memory_pos, 16))
    ours = profiled(lambda: attend_to_memory(attention, curr, curr_pos, memory, memory_pos, 16))
    assert meta["aten::add"] - ours["aten::add"] == 3
    assert meta["aten::_to_copy"] - ours["aten::_to_copy"] == 6
    assert meta["aten::linear"] == ours["aten::linear"]


@pytest.mark.parametrize("why", ["other layer classes", "a forward of the instance's own"])
def test_runs_the_modules_forward_for_layers_it_does_not_mirror(monkeypatch, why):
    """Other layer classes, and an instance forward (Meta's VOS predictor compiles one), run the module."""
    from medsegany.models import sam2_memory_attention

    attention, (curr, curr_pos, memory, memory_pos) = attention_and_inputs("cpu", 0)
    calls = []
    meta_forward = type(attention).forward

    def forward(*args, **kwargs):
        calls.append(args)
        return meta_forward(attention, *args, **kwargs)

    if why == "other layer classes":
        monkeypatch.setattr(type(attention), "forward", lambda self, *a, **k: forward(*a, **k))
        monkeypatch.setattr(sam2_memory_attention, "_meta_layers", lambda attention: False)
    else:
        attention.forward = forward
    with torch.inference_mode():
        out = sam2_memory_attention.attend_to_memory(attention, curr, curr_pos, memory, memory_pos)
    assert len(calls) == 1 and out.shape == curr.shape


def test_a_bf16_memory_without_pointers_runs_in_float32_as_with_them():
    """A frame with no object pointer gets SAM 2's bf16 spatial memory alone (no float32 pointer for
    ``torch.cat`` to promote it): both paths take it as that promotion would, the same numbers as the
    memory given in float32, where the bare module stopped with a dtype error."""
    from medsegany.models.sam2_memory_attention import (
        attend_to_memory,
        promote_memory_without_pointers,
        promoted_memory,
    )

    attention, (curr, curr_pos, memory, memory_pos) = attention_and_inputs("cpu", 0)
    stored = memory.to(torch.bfloat16)  # as the memory bank keeps it
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="dtype"):
            attention(curr=curr, memory=stored, curr_pos=curr_pos, memory_pos=memory_pos)
        promoted = attention(curr=curr, memory=stored.float(), curr_pos=curr_pos, memory_pos=memory_pos)
        promote_memory_without_pointers(attention)
        promote_memory_without_pointers(attention)  # once is enough: a second install changes nothing
        assert len(attention._forward_pre_hooks) == 1
        by_keywords = attention(curr=curr, memory=stored, curr_pos=curr_pos, memory_pos=memory_pos)
        by_position = attention(curr, stored, curr_pos, memory_pos, 0)
        as_meta_calls = attention(curr=[curr], memory=stored, curr_pos=[curr_pos], memory_pos=memory_pos)
        mixed = attention([curr], memory=stored, curr_pos=[curr_pos], memory_pos=memory_pos)
        split = attend_to_memory(attention, curr, curr_pos, stored, memory_pos, 0)
    for output in (by_keywords, by_position, as_meta_calls, mixed, split):
        assert output.dtype == torch.float32
        assert torch.equal(output, promoted)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts for its projections: left as it is
        assert promoted_memory(stored, curr) is stored
    assert promoted_memory(memory, curr) is memory  # float32 already
