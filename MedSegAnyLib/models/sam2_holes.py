"""Fill small holes in SAM 2 mask logits, with or without Meta's optional CUDA extension ``sam2._C``.

Meta's video predictor post-processes every low-resolution mask (``fill_hole_area=8``): each 8-connected
component of the background (logit <= 0) whose area is <= ``max_area`` pixels gets the logit 0.1, i.e.
becomes foreground (``sam2.utils.misc.fill_holes_in_mask_scores``). A "hole" is any such small background
component, also one touching the image border. The components come from ``sam2._C``, a CUDA kernel that
pip installs of sam2 often lack; Meta then skips the step with a warning, which changes the masks and the
memory built from them. :func:`connected_components` computes the same components and areas on the CPU
with SciPy (a core dependency), so the step always runs: 0.16 ms for a 128 x 128 mask (SimpleITK, used
before, took 1.25 ms, which on a GPU was a tenth of a tracking step's host time).
"""

from __future__ import annotations

from typing import Any

# Logit given to filled pixels: Meta's value, small and positive so the pixel is just inside the mask.
HOLE_FILL_LOGIT = 0.1


def connected_components(mask_n1hw: Any) -> tuple[Any, Any]:
    """8-connected components of binary masks (N, 1, H, W), as ``sam2._C.get_connected_componnets``.

    Returns ``(labels, areas)``, both int32 (N, 1, H, W): a label > 0 per foreground component (0 on the
    background) and, on each foreground pixel, the pixel count of its component (0 on the background).
    """
    import numpy as np
    import torch
    from scipy import ndimage

    mask_np = mask_n1hw.detach().to("cpu", torch.bool).numpy()
    labels_np = np.zeros(mask_np.shape, dtype=np.int32)
    areas_np = np.zeros(mask_np.shape, dtype=np.int32)
    eight_connected = np.ones((3, 3), dtype=bool)  # as Meta's kernel
    for n in range(mask_np.shape[0]):
        labels, _ = ndimage.label(mask_np[n, 0], structure=eight_connected)
        counts = np.bincount(labels.ravel())
        counts[0] = 0  # background pixels have area 0
        labels_np[n, 0] = labels
        areas_np[n, 0] = counts[labels]
    device = mask_n1hw.device
    return torch.from_numpy(labels_np).to(device), torch.from_numpy(areas_np).to(device)


def _meta_kernel() -> Any | None:
    """``sam2._C`` when it is installed, else None."""
    try:
        from sam2 import _C
    except ImportError:
        return None
    return _C


def fill_holes_in_mask_logits(mask_logits_n1hw: Any, max_area: int) -> Any:
    """Meta's ``fill_holes_in_mask_scores``: background components of <= ``max_area`` pixels get logit 0.1.

    Where the logits are: on a CPU with :func:`connected_components` (SciPy), on CUDA with ``sam2._C``
    when it is installed, else (CUDA without it, MPS) with :func:`fill_holes_without_host`, which never
    makes the device wait for the host. The same masks every way.
    """
    import torch

    if max_area <= 0:
        return mask_logits_n1hw
    kernel = _meta_kernel() if mask_logits_n1hw.is_cuda else None
    if kernel is None and mask_logits_n1hw.device.type != "cpu":
        return fill_holes_without_host(mask_logits_n1hw, max_area)
    background = mask_logits_n1hw <= 0
    if kernel is not None:
        labels, areas = kernel.get_connected_componnets(background.to(torch.uint8).contiguous())
    else:
        labels, areas = connected_components(background)
    is_hole = (labels > 0) & (areas <= max_area)
    return torch.where(is_hole, HOLE_FILL_LOGIT, mask_logits_n1hw)


def fill_holes_without_host(mask_logits_n1hw: Any, max_area: int) -> Any:
    """:func:`fill_holes_in_mask_logits`, the same masks, computed where the logits are, in a fixed number
    of operations with no host synchronisation, so a CUDA graph can hold it (``sam2_step_graphs``).

    How: every background pixel starts with its own index as label and takes, ``max_area`` times, the
    smallest label among itself and its 8 background neighbours. A component of at most ``max_area``
    pixels spans at most ``max_area - 1`` steps, so all its pixels then carry one label, which nothing
    outside it carries, and no background neighbour carries another: a hole is a pixel whose label is
    held by at most ``max_area`` pixels none of which has a neighbour labelled otherwise. In a larger
    component a label may cover a few pixels only, but then one of them borders a pixel labelled
    otherwise (the component is connected), so it is not taken for a hole.

    The labels are kept negated, so that the smallest label around a pixel is one max pooling (exact:
    the labels are integers below 2**24 in float32): 2 operations a step instead of 4, about 26 in all
    at ``max_area`` 8 (128 x 128 masks: a tracking step's hole filling at 512 px). On a CPU
    :func:`fill_holes_in_mask_logits` (SciPy) is faster.
    """
    import torch
    from torch.nn.functional import max_pool2d

    if max_area <= 0:
        return mask_logits_n1hw
    batch, _, height, width = mask_logits_n1hw.shape
    pixels = height * width
    background = mask_logits_n1hw <= 0
    none = -float(pixels)  # foreground's negated label: below every background one, so never the largest
    index = torch.arange(0, -pixels, -1, dtype=torch.float32, device=mask_logits_n1hw.device)
    negated = torch.where(background, index.view(1, 1, height, width), none)

    def largest_around(values: Any) -> Any:  # 3 x 3 maximum; max pooling pads with -inf
        return max_pool2d(values, kernel_size=3, stride=1, padding=1)

    for _ in range(int(max_area)):
        negated = torch.where(background, largest_around(negated), none)
    labels = -negated
    # the largest label around among background pixels (foreground counts as -1, below every label)
    largest_label_around = largest_around(torch.where(background, labels, -1.0))
    borders_other = background & ((largest_around(negated) != negated) | (largest_label_around != labels))
    flat = labels.view(batch, pixels).long()  # foreground: bin ``pixels``, never a hole
    area = torch.zeros(batch, pixels + 1, device=flat.device).scatter_add_(
        1, flat, background.view(batch, pixels).float()
    )
    open_label = torch.zeros(batch, pixels + 1, device=flat.device).scatter_add_(
        1, flat, borders_other.view(batch, pixels).float()
    )
    is_hole = (area.gather(1, flat) <= max_area) & (open_label.gather(1, flat) == 0)
    is_hole = background & is_hole.view(batch, 1, height, width)
    return torch.where(is_hole, HOLE_FILL_LOGIT, mask_logits_n1hw)
