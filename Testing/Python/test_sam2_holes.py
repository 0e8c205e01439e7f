"""CPU hole filling of SAM 2 mask logits: the semantics of Meta's fill_holes_in_mask_scores and sam2._C."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medsegany.models.sam2_holes import (  # noqa: E402
    HOLE_FILL_LOGIT,
    connected_components,
    fill_holes_in_mask_logits,
)


def reference_components(mask_hw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components by breadth-first search: (labels, area on each foreground pixel)."""
    height, width = mask_hw.shape
    labels = np.zeros((height, width), np.int32)
    areas = np.zeros((height, width), np.int32)
    next_label = 0
    for row, col in zip(*np.nonzero(mask_hw), strict=True):
        if labels[row, col]:
            continue
        next_label += 1
        labels[row, col] = next_label
        members, queue = [], deque([(row, col)])
        while queue:
            r, c = queue.popleft()
            members.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < height and 0 <= cc < width and mask_hw[rr, cc] and not labels[rr, cc]:
                        labels[rr, cc] = next_label
                        queue.append((rr, cc))
        for r, c in members:
            areas[r, c] = len(members)
    return labels, areas


@pytest.mark.parametrize("seed", range(4))
def test_components_match_a_breadth_first_reference(seed):
    rng = np.random.default_rng(seed)
    masks = rng.random((3, 1, 23, 31)) < (0.3 + 0.1 * seed)
    labels, areas = connected_components(torch.from_numpy(masks))
    assert labels.shape == areas.shape == masks.shape
    assert labels.dtype == areas.dtype == torch.int32
    for n in range(masks.shape[0]):
        expected_labels, expected_areas = reference_components(masks[n, 0])
        got = labels[n, 0].numpy()
        np.testing.assert_array_equal(areas[n, 0].numpy(), expected_areas)
        np.testing.assert_array_equal(got > 0, expected_labels > 0)
        # the same partition: each reference component carries exactly one label, and vice versa
        pairs = set(zip(got[got > 0].tolist(), expected_labels[got > 0].tolist(), strict=True))
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_small_background_components_become_foreground():
    logits = np.full((1, 1, 20, 20), 5.0, np.float32)
    logits[0, 0, 2:4, 2:6] = -3.0  # 8 pixels: filled
    logits[0, 0, 10:13, 10:13] = -3.0  # 9 pixels: kept
    logits[0, 0, 17:20, 0] = -3.0  # 3 pixels touching the border: filled too (Meta's semantics)
    # 5 + 4 pixels meeting only at a corner: one 8-connected component of 9 pixels, kept
    logits[0, 0, 6, 10:15] = -3.0
    logits[0, 0, 7, 15:19] = -3.0
    filled = fill_holes_in_mask_logits(torch.from_numpy(logits), max_area=8).numpy()

    assert np.all(filled[0, 0, 2:4, 2:6] == np.float32(HOLE_FILL_LOGIT))
    assert np.all(filled[0, 0, 17:20, 0] == np.float32(HOLE_FILL_LOGIT))
    np.testing.assert_array_equal(filled[0, 0, 10:13, 10:13], -3.0)
    np.testing.assert_array_equal(filled[0, 0, 6:8], logits[0, 0, 6:8])
    changed = filled != logits
    assert changed.sum() == 8 + 3  # nothing else moved, foreground logits included


def test_large_background_and_batches_are_independent():
    logits = torch.full((2, 1, 12, 12), -2.0)
    logits[0, 0, 4:8, 4:8] = 1.0  # object in a large background: nothing to fill
    logits[1] = 1.0
    logits[1, 0, 0, 0] = -1.0  # one background pixel in the second mask only
    filled = fill_holes_in_mask_logits(logits, max_area=8)
    assert torch.equal(filled[0], logits[0])
    assert filled[1, 0, 0, 0] == pytest.approx(HOLE_FILL_LOGIT)
    assert torch.equal(fill_holes_in_mask_logits(logits, max_area=0), logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Meta's sam2._C kernel runs on CUDA only")
def test_matches_meta_cuda_kernel_when_installed():
    kernel = pytest.importorskip("sam2._C")
    masks = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(0)) < 0.4
    labels, areas = kernel.get_connected_componnets(masks.cuda().to(torch.uint8).contiguous())
    our_labels, our_areas = connected_components(masks)
    assert torch.equal(areas.cpu().int(), our_areas)
    assert torch.equal(labels.cpu() > 0, our_labels > 0)


def hole_cases() -> list[np.ndarray]:
    """Logit maps (N, 1, H, W): random speckle at several densities, and drawn holes of 8 and 9 pixels,
    a 20-pixel line (a large component that a few steps of labelling cannot span), holes on the border."""
    rng = np.random.default_rng(7)
    cases = [np.where(rng.random((3, 1, 40, 52)) < density, -1.0, 1.0) for density in (0.1, 0.3, 0.5, 0.7)]
    drawn = np.ones((1, 1, 32, 40))
    drawn[0, 0, 2, 2:10] = -1.0  # 8 pixels in a row: a hole
    drawn[0, 0, 6, 2:11] = -1.0  # 9 pixels: not
    drawn[0, 0, 10, 5:25] = -1.0  # 20 pixels in a row
    drawn[0, 0, 14:16, 30:34] = -1.0  # a 2 x 4 block: 8 pixels
    drawn[0, 0, 20:23, 30:33] = -1.0  # 3 x 3: 9 pixels
    drawn[0, 0, 0, 35:40] = -1.0  # on the border, 5 pixels
    drawn[0, 0, 25:32, 0] = -1.0  # on the border, 7 pixels
    drawn[0, 0, 26, 10:18] = -1.0  # a diagonal neighbour joins these 8 and the next 1: 9
    drawn[0, 0, 27, 18] = -1.0
    cases.append(drawn)
    cases.append(np.full((2, 1, 16, 16), -3.0))  # all background: one component, not a hole
    return [case.astype(np.float32) * rng.uniform(0.5, 2.0, case.shape).astype(np.float32) for case in cases]


@pytest.mark.parametrize("max_area", [1, 3, 8])
def test_filling_without_host_gives_the_same_masks(max_area):
    from medsegany.models.sam2_holes import fill_holes_without_host

    for case in hole_cases():
        logits = torch.from_numpy(case)
        expected = fill_holes_in_mask_logits(logits, max_area)
        got = fill_holes_without_host(logits, max_area)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got, expected)
    drawn = torch.from_numpy(hole_cases()[4])
    filled = fill_holes_without_host(drawn, 8)[0, 0]
    assert (filled[2, 2:10] == HOLE_FILL_LOGIT).all() and (filled[6, 2:11] < 0).all()
    assert (filled[10, 5:25] < 0).all() and (filled[26, 10:18] < 0).all()
