"""SAM 2's image encoder through ``torch.compile`` (inductor), for trackers that ask for it (opt-in).

Why: on an H200 (2026-11-28, ``benchmarks/README.md``) the encoder is 1.03 of the 1.81 s that SAM 2.1
large at 1024 px takes for 100 slices (1.99x reference B, the target 2x) and 0.23 of the 1.10-1.13 s that
tiny at 512 px takes for 300 slices (the target 1.0 s). At about 10 ms an image (large) and 0.8 ms (tiny)
in batches of 16 it is far from the GPU's arithmetic rate; inductor fuses the norms, activations, casts
and residual adds between its matrix products.

What is compiled: the model's ``forward_image`` (Hiera, its FPN neck and the mask decoder's two
projections of the high-resolution levels), the call the tracker makes for each encoder batch. On CUDA
batches are padded to a power of two (``sam2_tracker.padded_batch_size``); the first size compiles
statically, the next makes the batch symbolic (:class:`~medsegany.models.compiled_call.CompiledCall`),
so a process compiles about twice. One compiled call per model object, shared by its trackers. Hiera's
memoised position embedding (:func:`~medsegany.models.sam2_speedups.memoise_position_embedding`) steps
aside while dynamo traces (its Python checks broke the encoder into two graphs), so Meta's interpolation
is part of the one graph.

Opt-in (``Sam2Tracker(compile_encoder=True)`` or ``MEDSEGANY_COMPILE_ENCODER=1``) until a GPU run
measures it end to end (``benchmarks/run_gpu.sh fusedspeed fusedlarge``). On the 2-core development CPU
it costs: 474 ms an image compiled against 329 ms eager (tiny at 512, bf16, one slice a call, median of
5, after a 39 s compile into one graph;
``benchmarks/results/sam2_encoder_compile_cpu_one_graph_2026-11-28.json``). Under bf16 its features
differ from the eager encoder's by rounding (within 1.04 % of their largest value there), so its masks
are close to the eager path's, not bitwise.
"""

from __future__ import annotations

import weakref
from typing import Any

from .compiled_call import CompiledCall

# "1" compiles the image encoder of SAM 2 trackers
COMPILE_ENCODER_VARIABLE = "MEDSEGANY_COMPILE_ENCODER"
# model -> its compiled forward_image (weak keys: it goes with the model)
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_forward_image(model: Any) -> CompiledCall:
    """The model's ``forward_image`` through ``torch.compile``, one per model object."""
    call = _SHARED.get(model)
    if call is None:
        # the class's function with the model as an argument: a bound method would hold the model, and
        # through this weakly keyed map's value keep it alive for the whole process
        call = CompiledCall(type(model).forward_image, "the image encoder")
        _SHARED[model] = call
    return call
