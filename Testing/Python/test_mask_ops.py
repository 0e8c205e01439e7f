from __future__ import annotations

import numpy as np
from medsegany.mask_ops import bbox_xyxy, components_touching, dice, grow_box, interior_point_xy


def test_bbox_and_grow_box():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    np.testing.assert_array_equal(bbox_xyxy(mask), [3, 2, 8, 4])
    np.testing.assert_array_equal(grow_box(bbox_xyxy(mask), 3, mask.shape), [0, 0, 11, 7])
    assert bbox_xyxy(np.zeros((3, 3), bool)) is None


def test_components_touching_keeps_the_connected_part_or_the_largest():
    mask = np.zeros((20, 20), bool)
    mask[2:6, 2:6] = True
    mask[12:19, 12:19] = True
    reference = np.zeros_like(mask)
    reference[3, 3] = True
    np.testing.assert_array_equal(
        components_touching(mask, reference), mask & (np.indices(mask.shape)[0] < 10)
    )
    far = np.zeros_like(mask)
    far[0, 19] = True
    assert components_touching(mask, far).sum() == 49  # none touches: the largest is kept


def components_kept_one_by_one(mask_frame, reference_frame):
    """The rule spelt out component by component on the whole frame: those under the reference, else the
    largest (the first of equal ones in row-major order)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask_frame, structure=np.ones((3, 3), dtype=bool))
    components = [labels == label for label in range(1, count + 1)]
    touching = [component for component in components if (component & reference_frame).any()]
    if not touching and components:
        touching = [max(components, key=lambda component: component.sum())]  # max keeps the first of ties
    return np.logical_or.reduce(touching, axis=0) if touching else np.zeros_like(mask_frame)


def test_components_touching_on_the_masks_box_equals_the_rule_on_the_whole_frame():
    """Speckled masks of many components (ties of size included), near the frame's edges, with and without
    a component under the reference: the same pixels as the rule applied to each component of the frame."""
    rng = np.random.default_rng(5)
    for trial in range(60):
        mask = rng.random((48, 64)) < rng.choice([0.02, 0.1, 0.3, 0.55])
        if trial % 3 == 0:  # a mask in one corner only: its box is small
            mask[:, 20:] = False
            mask[30:] = False
        reference = rng.random(mask.shape) < rng.choice([0.0, 0.001, 0.02, 0.2])
        kept = components_touching(mask, reference)
        assert kept.dtype == bool
        np.testing.assert_array_equal(kept, components_kept_one_by_one(mask, reference))
    empty = np.zeros((5, 6), bool)
    np.testing.assert_array_equal(components_touching(empty, ~empty), empty)
    speckled = (rng.random((48, 64)) < 0.1).astype(np.uint8) * 255  # any dtype reads as a mask
    near = (rng.random((48, 64)) < 0.02).astype(np.uint8)
    np.testing.assert_array_equal(
        components_touching(speckled, near), components_kept_one_by_one(speckled > 0, near > 0)
    )


def test_interior_point_and_dice():
    mask = np.zeros((11, 11), bool)
    mask[1:10, 1:10] = True
    np.testing.assert_array_equal(interior_point_xy(mask), [5, 5])
    assert dice(mask, mask) == 1.0 and dice(mask, ~mask) == 0.0
