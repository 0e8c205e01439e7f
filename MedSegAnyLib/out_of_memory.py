"""Out-of-memory during a model call becomes a one-line ModelError, and the memory the model held is freed.

PyTorch reports running out of memory as ``torch.OutOfMemoryError`` (CUDA; a ``RuntimeError``), as a
``RuntimeError`` naming the allocator ("DefaultCPUAllocator: can't allocate memory", "MPS backend out of
memory"), or Python's ``MemoryError``. The session wraps every model call in
:func:`out_of_memory_as_model_error`; its transaction then keeps what was written before (one undo step,
like a cancel), so the session stays usable: the user can segment fewer slices, or free memory and go on.
On a GPU the session also moves the image features it holds there to host memory before the error is
raised (``make_room``), so running again needs less of the GPU.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import traceback
from collections.abc import Callable, Iterator

from .errors import ModelError

# Lower-case fragments of PyTorch's out-of-memory messages (CUDA, CPU allocator, Apple MPS).
OUT_OF_MEMORY_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    """True for PyTorch's and Python's out-of-memory errors, on any device."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(part in text for part in OUT_OF_MEMORY_MESSAGES)


def release_cached_memory() -> None:
    """Give PyTorch's cached blocks back (CUDA, MPS) after a failure, so the next try starts clean."""
    gc.collect()
    torch = sys.modules.get("torch")  # never import torch only for this
    if torch is None:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        mps.empty_cache()


def _forget_frames(error: BaseException | None, handled_before: BaseException | None = None) -> None:
    """Free the locals of the frames ``error`` (and the errors it was raised from or while handling) came
    through, and drop its traceback. Dropping the traceback alone did not do: every generator-based
    context manager between the model call and the caller (the session's ``_computing``) keeps the
    traceback in a local of its ``__exit__`` frame, which the error raised instead holds in its own.
    ``handled_before``: the error the caller was handling when the model call began (the chain's end
    that is not ours: the caller may still log or re-raise it with its traceback)."""
    seen: set[int] = set()
    while error is not None and error is not handled_before and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)  # frames still running (the callers') are skipped
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


class RanOutOfMemoryError(ModelError):
    """The model ran out of ``where`` ("memory", "cuda:0 memory"). ``ways_out``: what the user can do;
    ``done``: what the session did to make room for a next try (None: nothing); ``outcome``: what became
    of the work before (a session keeps it as one undo step; the CLI writes nothing: :meth:`with_outcome`).
    """

    def __init__(
        self,
        where: str,
        ways_out: str,
        done: str | None = None,
        outcome: str = "what was segmented before is kept; undo removes it",
    ) -> None:
        self.where, self.ways_out, self.done, self.outcome = where, ways_out, done, outcome
        fix = f"run it again: {done}; if it runs out again, {ways_out}" if done else ways_out
        super().__init__(f"the model ran out of {where} ({outcome})", fix)

    def with_outcome(self, outcome: str) -> RanOutOfMemoryError:
        """The same error for a caller whose session ends with it (the CLI's job): ``outcome``, and only
        the ways out (what the session did to make room went with it)."""
        return RanOutOfMemoryError(self.where, self.ways_out, None, outcome)


@contextlib.contextmanager
def out_of_memory_as_model_error(
    device: str, make_room: Callable[[], str | None] | None = None
) -> Iterator[None]:
    """Turn an out-of-memory error raised inside into a ModelError (:class:`RanOutOfMemoryError`) naming the
    device and the ways out.

    ``make_room``: called once the cached blocks are released; it may free more for the next try (the
    session moves its image features to host memory) and returns what it did, for the message, or None.
    """
    handled_before = sys.exc_info()[1]  # the caller's own error, if it calls the model while handling one
    try:
        yield
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        # The error raised below holds this one and its frames: the activations of the model call that ran
        # out (on the GPU) stayed alive for as long as the caller kept the error (the Slicer panel shows
        # it; a script may keep it), and the cached blocks released next could not include them.
        _forget_frames(error, handled_before)
        release_cached_memory()
        try:
            done = make_room() if make_room is not None else None
        except Exception as room_error:  # no room to make (host memory is full too): the usual ways out
            if not is_out_of_memory(room_error):
                raise
            done = None
        if done:
            release_cached_memory()  # what make_room let go of goes back to the device
        on_cpu = str(device).startswith("cpu")
        where = "memory" if on_cpu else f"{device} memory"
        others = "memory, or use a smaller model" if on_cpu else "GPU, or use the CPU (--device cpu)"
        ways_out = (
            f"segment a slice range instead of the whole volume, close other programs using the {others}"
        )
        raise RanOutOfMemoryError(where, ways_out, done or None) from None
