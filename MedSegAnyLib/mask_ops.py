"""Small 2D mask operations used by slice-wise propagation (bounding boxes, components, interior points)."""

from __future__ import annotations

import numpy as np


def bbox_xyxy(mask_frame: np.ndarray) -> np.ndarray | None:
    """(x0, y0, x1, y1) of the mask's pixels (inclusive pixel indices), or None when empty."""
    rows = np.flatnonzero(mask_frame.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask_frame.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)


def grow_box(box_xyxy: np.ndarray, margin_px: float, frame_shape: tuple[int, int]) -> np.ndarray:
    """Move each edge outward by ``margin_px`` (negative shrinks), clipped to the frame."""
    height, width = frame_shape
    grown = np.asarray(box_xyxy, dtype=np.float64) + np.array([-margin_px, -margin_px, margin_px, margin_px])
    if grown[2] < grown[0]:
        grown[[0, 2]] = (grown[0] + grown[2]) / 2
    if grown[3] < grown[1]:
        grown[[1, 3]] = (grown[1] + grown[3]) / 2
    return np.clip(grown, 0, [width - 1, height - 1, width - 1, height - 1])


def components_touching(mask_frame: np.ndarray, reference_frame: np.ndarray) -> np.ndarray:
    """Keep the connected components (8-connected) of ``mask_frame`` that overlap ``reference_frame``.

    When none overlaps, keep the largest one (of equal ones, the first in row-major order): an object can
    shift by more than its size between thick slices, and dropping everything there would end propagation
    early. Both frames are read as booleans; the result is boolean.
    """
    from scipy import ndimage

    mask_frame = np.asarray(mask_frame, dtype=bool)
    reference_frame = np.asarray(reference_frame, dtype=bool)
    if mask_frame.shape != reference_frame.shape:
        raise ValueError(f"mask {mask_frame.shape} and reference {reference_frame.shape} differ in shape")
    kept_frame = np.zeros_like(mask_frame)
    box = bbox_xyxy(mask_frame)
    if box is None:
        return kept_frame
    # components lie inside the mask's bounding box: label that alone (an organ's box is a few % of a
    # 512 x 512 frame), and keep labels by a lookup table, not np.isin's sort
    x0, y0, x1, y1 = box.astype(int)
    inside = (slice(y0, y1 + 1), slice(x0, x1 + 1))
    labels, count = ndimage.label(mask_frame[inside], structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        kept_frame[inside] = labels > 0
        return kept_frame
    touching = np.bincount(labels[reference_frame[inside] & (labels > 0)], minlength=count + 1) > 0
    if not touching.any():
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        touching[int(np.argmax(sizes))] = True
    touching[0] = False
    kept_frame[inside] = touching[labels]
    return kept_frame


def interior_point_xy(mask_frame: np.ndarray) -> np.ndarray | None:
    """The pixel deepest inside the mask (largest distance to its border), as (x, y); None when empty."""
    from scipy import ndimage

    if not mask_frame.any():
        return None
    distance = ndimage.distance_transform_edt(np.pad(mask_frame, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([x, y], dtype=np.float64)


def dice(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    total = int(mask_a.sum()) + int(mask_b.sum())
    return 1.0 if total == 0 else 2.0 * int((mask_a & mask_b).sum()) / total
