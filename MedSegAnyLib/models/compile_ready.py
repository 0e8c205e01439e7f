"""A prepared encoder made ready for ``torch.compile`` without frozen weights, so its compile is cached.

Why: with frozen weights (inductor's ``freezing``) the compiled graph holds oneDNN-packed weights that its
FX graph cache cannot store, so every process compiled LiteMedSAM's encoder again: 21-33 s on the 2-core
development CPU, in every ``medsegany segment`` run and every Slicer start. Compiled without freezing,
the graph takes the weights as inputs and the cache serves every later process (and every checkpoint of
the same architecture): 5-7 s after the first compile, which takes 20-40 s.

Without freezing, inductor neither folds batch norms (the prepared copy of
:mod:`~medsegany.models.eager_inference` has done that) nor turns convolutions into oneDNN's fused ones,
and the GELU after each of LiteMedSAM's first-stage convolutions made one more pass over a 32 MiB
activation (8.7 ms a call). Two reroutings give it back what freezing gave:

- each ``Conv2d`` calls oneDNN's ``mkldnn._convolution_pointwise`` directly (the same convolution, dense
  weights); inductor's post-grad passes then fuse the GELU or residual add that follows into it, as they
  do for frozen graphs;
- each ``Linear`` is a matrix product plus its bias: ``addmm`` first copies the bias into every row of
  its output (45 copies a slice, 12 ms), the bias add instead fuses into the next kernel.

LiteMedSAM's encoder, a slice, bf16, 2026-11-28 (``benchmarks/eager_encoder.py``): see
``benchmarks/README.md``. A CPU without oneDNN keeps its convolutions (the linears still change).
"""

from __future__ import annotations

import copy
from typing import Any

from .eager_inference import EagerInferenceEncoder


def onednn_convolution_available() -> bool:
    """True where PyTorch has oneDNN's fused convolution op (x86 builds; not every ARM build)."""
    import torch

    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return False
    acl = getattr(torch.ops.mkldnn, "_is_mkldnn_acl_supported", None)
    return not (acl is not None and acl())  # ARM's ACL: inductor does not fuse into its convolutions


def _rerouted_modules() -> tuple[type, type]:
    """The two replacement module classes (made on first use: torch is imported lazily)."""
    import torch

    class OneDnnConv2d(torch.nn.Module):
        """A ``Conv2d`` (zero padding) through oneDNN's pointwise convolution op with no fused operation:
        the form inductor's oneDNN fusion passes match."""

        def __init__(self, conv: torch.nn.Conv2d) -> None:
            super().__init__()
            self.weight, self.bias = conv.weight, conv.bias
            self.padding, self.stride = list(conv.padding), list(conv.stride)
            self.dilation, self.groups = list(conv.dilation), conv.groups

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # autocast does not know this op: cast the input as autocast casts a convolution's (the
            # weights are bf16 exactly when the encoder runs under bf16 autocast)
            return torch.ops.mkldnn._convolution_pointwise(
                x.to(self.weight.dtype),
                self.weight,
                self.bias,
                self.padding,
                self.stride,
                self.dilation,
                self.groups,
                "none",
                [],
                "",
            )

    class MatmulLinear(torch.nn.Module):
        """A ``Linear`` as a matrix product, then its bias added (fused by inductor into what follows)."""

        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            self.weight, self.bias = linear.weight, linear.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.matmul(x.to(self.weight.dtype), self.weight.t())
            return out if self.bias is None else out + self.bias

    return OneDnnConv2d, MatmulLinear


def reroute_for_inductor(module: Any, convolutions: bool | None = None) -> dict[str, int]:
    """Replace, in place, ``module``'s ``Conv2d`` (zero padding; only where ``convolutions``, by default
    where :func:`onednn_convolution_available`) and ``Linear`` layers by the forms above; returns how many
    of each were replaced. Meant for a CPU copy that is compiled, never trained."""
    import torch

    if convolutions is None:
        convolutions = onednn_convolution_available()
    conv_class, linear_class = _rerouted_modules()
    counts = {"convolutions": 0, "linears": 0}
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):
            if convolutions and type(child) is torch.nn.Conv2d and child.padding_mode == "zeros":
                parent._modules[name] = conv_class(child)
                counts["convolutions"] += 1
            elif type(child) is torch.nn.Linear:
                parent._modules[name] = linear_class(child)
                counts["linears"] += 1
    return counts


def compile_ready_copy(encoder: EagerInferenceEncoder) -> EagerInferenceEncoder:
    """A copy of a prepared encoder (its own modules, rerouted) to hand to ``torch.compile``; ``encoder``
    keeps its modules, to run eagerly if compiling fails. Both hold the same weight tensors (inference
    never changes them; a second copy would cost LiteMedSAM 17 MiB under bf16, 28 MiB in float32).
    ``rerouted`` on the copy says what changed."""
    shared = {id(tensor): tensor for tensor in (*encoder.module.parameters(), *encoder.module.buffers())}
    ready = copy.copy(encoder)
    ready.module = copy.deepcopy(encoder.module, memo=shared)
    ready.rerouted = reroute_for_inductor(ready.module)
    return ready
