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


def test_interior_point_and_dice():
    mask = np.zeros((11, 11), bool)
    mask[1:10, 1:10] = True
    np.testing.assert_array_equal(interior_point_xy(mask), [5, 5])
    assert dice(mask, mask) == 1.0 and dice(mask, ~mask) == 0.0
