"""Out-of-memory errors become one-line ModelErrors; the session keeps what it had and stays usable."""

from __future__ import annotations

import numpy as np
import pytest
from fake_models import ThresholdModel
from medsegany.errors import ModelError
from medsegany.out_of_memory import is_out_of_memory, out_of_memory_as_model_error
from medsegany.session import SegmentationSession
from test_session import box_on_k, phantom

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"), True),
        (RuntimeError("MPS backend out of memory (MPS allocated: 17 GB)"), True),
        (MemoryError(), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
        (ValueError("out of memory"), False),  # not a runtime failure of the allocator
    ],
)
def test_recognises_the_out_of_memory_errors_of_each_device(error, expected):
    assert is_out_of_memory(error) is expected


def test_the_context_turns_only_out_of_memory_into_a_model_error():
    gpu, cpu = out_of_memory_as_model_error("cuda:0"), out_of_memory_as_model_error("cpu")
    with pytest.raises(ModelError, match=r"ran out of cuda:0 memory.*use the CPU"), gpu:
        raise torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(ModelError, match=r"ran out of memory.*smaller model"), cpu:
        raise MemoryError()
    with pytest.raises(RuntimeError, match="shapes"), out_of_memory_as_model_error("cpu"):
        raise RuntimeError("shapes cannot be multiplied")


class RunsOutOfMemory(ThresholdModel):
    """The fake model, failing like a full GPU on the encoder call number ``fail_at`` (then never again)."""

    device = "cuda"

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.calls = 0

    def embed_frames(self, frames):
        self.calls += 1
        if self.calls == self.fail_at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.20 GiB")
        return super().embed_frames(frames)


def test_a_run_out_of_memory_keeps_earlier_slices_and_the_session_goes_on():
    volume = phantom()
    model = RunsOutOfMemory(fail_at=4)
    session = SegmentationSession(volume, model, intensity=(0.0, 255.0), max_cached_frames=2)
    liver = session.add_object("liver")
    session.add_prompts(liver, box_on_k(volume, 14))
    after_prompt = session.mask_kji(liver).copy()
    written = []
    with pytest.raises(ModelError, match="ran out of cuda memory"):
        for result in session.propagate():
            written.append(result.slice_index)
    assert written  # slices were segmented before the failure, and they are kept
    kept = session.mask_kji(liver).copy()
    assert kept[written].any(axis=(1, 2)).all()

    session.undo()  # the interrupted run is one undo step, as a cancel
    np.testing.assert_array_equal(session.mask_kji(liver), after_prompt)
    session.redo()
    np.testing.assert_array_equal(session.mask_kji(liver), kept)

    reference = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    reference_id = reference.add_object("liver")
    reference.add_prompts(reference_id, box_on_k(volume, 14))
    list(reference.propagate())
    list(session.propagate())  # memory is back: the same call now completes the object
    np.testing.assert_array_equal(session.mask_kji(liver), reference.mask_kji(reference_id))


def test_a_gpu_that_ran_out_gets_the_features_moved_to_host_memory_for_the_next_try(monkeypatch):
    """After running out on a GPU, the session keeps its image features in host memory, those cached
    included, and says so; the next run uses them from there (negating stand-ins for the copies: an
    embedding read without its copy back would segment nothing) and gives the reference's masks."""
    import medsegany.feature_offload as feature_offload

    moved = []
    monkeypatch.setattr(feature_offload, "to_host", lambda e: moved.append(e) or -e)
    monkeypatch.setattr(feature_offload, "to_device", lambda e, device: -e)
    volume = phantom()
    session = SegmentationSession(volume, RunsOutOfMemory(fail_at=4), intensity=(0.0, 255.0))
    liver = session.add_object("liver")
    session.add_prompts(liver, box_on_k(volume, 14))
    cached = len(session.embeddings(2))
    with pytest.raises(ModelError, match="run it again: the session now keeps the image features in host"):
        list(session.propagate())
    assert session.offload_features and session.embeddings(2).offload
    assert len(moved) == len(session.embeddings(2)) > cached  # every cached slice, then none twice
    list(session.propagate())

    reference = SegmentationSession(volume, ThresholdModel(), intensity=(0.0, 255.0))
    reference_id = reference.add_object("liver")
    reference.add_prompts(reference_id, box_on_k(volume, 14))
    list(reference.propagate())
    np.testing.assert_array_equal(session.mask_kji(liver), reference.mask_kji(reference_id))
    assert len(moved) == len(session.embeddings(2))  # slices encoded after the switch went there too

    # a second failure with the features already in host memory: the usual ways out, nothing moved
    with pytest.raises(ModelError) as failure, session._computing():
        raise torch.OutOfMemoryError("CUDA out of memory")
    assert "run it again" not in str(failure.value) and "slice range" in str(failure.value)


def test_a_cpu_that_ran_out_moves_nothing():
    session = SegmentationSession(phantom(), ThresholdModel(), intensity=(0.0, 255.0))
    with pytest.raises(ModelError, match="ran out of memory") as failure, session._computing():
        raise MemoryError()
    assert not session.offload_features and "run it again" not in str(failure.value)


def test_making_room_that_runs_out_too_still_ends_in_the_one_line_error():
    def no_room():
        raise MemoryError()  # the host memory the features would move to is full as well

    failing = out_of_memory_as_model_error("cuda", no_room)
    with pytest.raises(ModelError, match="ran out of cuda memory") as failure, failing:
        raise torch.OutOfMemoryError("CUDA out of memory")
    assert "run it again" not in str(failure.value) and "slice range" in str(failure.value)


def test_a_caller_whose_session_ends_gets_only_the_ways_out():
    from medsegany.out_of_memory import RanOutOfMemoryError

    error = RanOutOfMemoryError("cuda:0 memory", "segment a slice range", "the session now keeps features")
    assert "kept; undo removes it" in str(error) and "run it again: the session now keeps" in str(error)
    ended = error.with_outcome("nothing was written")
    assert str(ended) == "the model ran out of cuda:0 memory (nothing was written). segment a slice range."


def test_the_failed_calls_tensors_are_freed_before_making_room_and_not_kept_by_the_error():
    """The error raised keeps the one that ran out, whose frames held the failed call's activations (on a
    GPU, the very memory the user is told to try again with) for as long as the caller kept it."""
    import gc
    import weakref

    held = []
    alive_when_making_room = []

    class HoldsActivations(RunsOutOfMemory):
        def embed_frames(self, frames):
            activations = torch.empty(1_000_000)  # what a model call holds when the next allocation fails
            held.append(weakref.ref(activations))
            return super().embed_frames(frames)

    volume = phantom()
    session = SegmentationSession(volume, HoldsActivations(fail_at=3), intensity=(0.0, 255.0))
    real_make_room = session._features_to_host_memory

    def make_room():
        alive_when_making_room.append(held[-1]() is not None)
        return real_make_room()

    session._features_to_host_memory = make_room
    liver = session.add_object("liver")
    session.add_prompts(liver, box_on_k(volume, 14))
    with pytest.raises(ModelError, match="ran out of cuda memory") as caught:
        for _ in session.propagate():
            pass
    kept = caught.value  # a caller that keeps the error (the Slicer panel shows it)
    gc.collect()
    assert alive_when_making_room == [False]
    assert held[-1]() is None and kept.__context__.__traceback__ is None


def test_an_error_the_caller_was_handling_keeps_its_traceback():
    """The frames of the error that ran out are cleared, and those of the errors it was raised while
    handling; the chain went on into the caller's own error (one it handled when it called the model),
    whose traceback was dropped: re-raised or logged afterwards, it showed none of its frames."""

    def read_cache():
        raise KeyError("slice 7")

    def model_call():
        raise MemoryError()

    try:
        read_cache()
    except KeyError as first:
        guard = out_of_memory_as_model_error("cpu")
        with pytest.raises(ModelError, match="ran out of memory") as failure, guard:
            model_call()
        assert failure.value.__context__.__traceback__ is None  # the one that ran out: dropped
        assert first.__traceback__ is not None and first.__traceback__.tb_next is not None
