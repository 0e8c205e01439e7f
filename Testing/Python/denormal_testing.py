"""Whether a thread and its OpenMP threads flush denormals to zero, for the tests of the per-thread flag."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

# 2**-100 * 2**-30 = 2**-130: below float32's smallest normal (2**-126), made by the product itself, so
# each OpenMP thread's own flag decides it (a denormal filled in by the calling thread would be flushed,
# or not, by that thread's flag alone)
NORMAL_FACTOR, UNDERFLOWING_FACTOR = 2.0**-100, 2.0**-30
# elements a thread: twice ATen's grain (32768), so that every OpenMP thread computes one chunk
PER_THREAD = 1 << 16


def flushed_by_openmp_thread() -> list[bool]:
    """For each of the calling thread's OpenMP threads, in order: whether its product underflowed to 0.
    ATen gives thread ``t`` the ``t``-th equal chunk of an element-wise operation."""
    import torch

    threads = torch.get_num_threads()
    products = torch.full((threads * PER_THREAD,), NORMAL_FACTOR, dtype=torch.float32) * UNDERFLOWING_FACTOR
    return [bool((chunk == 0).all()) for chunk in products.chunk(threads)]


def on_new_thread(function: Callable[[], Any], timeout_s: float = 120) -> Any:
    """``function()`` on a thread of its own, made while the calling thread keeps IEEE arithmetic (a
    thread copies its maker's flag); its flag and OpenMP threads end with it. Its exception is raised."""
    import torch

    torch.set_flush_denormal(False)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # raised again on the calling thread
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"the thread did not finish within {timeout_s} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
