"""A PNG preview: the prompted slice with its box and points, and a few propagated slices, masks overlaid.

Pillow only. Tiles follow the frame convention (rows down, columns right) and are stretched so that
pixels have their physical aspect ratio (a 5 mm slice spacing in a J view is 5x taller than wide).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import OutputError
from .exporters import default_segment_color
from .slices import AXIS_NAMES, frame_of

TILE_HEIGHT_PX = 256  # each tile's height; its width follows the slice's physical aspect ratio
OVERLAY_ALPHA = 0.45


def _tile(image_frame: np.ndarray, labels_frame: np.ndarray, pixel_aspect: float):
    from PIL import Image

    grey = np.repeat(image_frame[..., None], 3, axis=2).astype(np.float32)
    for value in np.unique(labels_frame):
        if value == 0:
            continue
        colour = np.array(default_segment_color(int(value) - 1), dtype=np.float32) * 255
        inside = labels_frame == value
        grey[inside] = (1 - OVERLAY_ALPHA) * grey[inside] + OVERLAY_ALPHA * colour
    tile = Image.fromarray(grey.clip(0, 255).astype(np.uint8))
    height, width = image_frame.shape
    scale = TILE_HEIGHT_PX / (height * pixel_aspect)
    size = (max(1, round(width * scale)), TILE_HEIGHT_PX)
    return tile.resize(size, Image.NEAREST), (size[0] / width, size[1] / height)


def _pixel_aspect(axis: int, spacing_ijk) -> float:
    """Physical height / width of one frame pixel (rows and columns per the frame convention)."""
    if spacing_ijk is None:
        return 1.0
    row_axis, column_axis = {2: (1, 0), 1: (2, 0), 0: (2, 1)}[axis]
    return float(spacing_ijk[row_axis]) / float(spacing_ijk[column_axis])


def write_preview_png(
    image_kji: np.ndarray,
    labelmap_kji: np.ndarray,
    axis: int,
    prompt_slice: int,
    path: str | Path,
    box_frame_xyxy: np.ndarray | None = None,
    points_frame_xy: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    n_extra_slices: int = 4,
    spacing_ijk: tuple[float, float, float] | None = None,
) -> Path:
    """Write the preview; ``image_kji`` is the windowed uint8 copy the model saw."""
    from PIL import Image, ImageDraw

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise OutputError(f"preview {path.name} is not a .png file", "name the preview something.png")
    if not path.parent.is_dir():
        raise OutputError(f"folder {path.parent} does not exist", "create it or choose another preview path")
    aspect = _pixel_aspect(axis, spacing_ijk)
    filled = np.flatnonzero(np.moveaxis(labelmap_kji, 2 - axis, 0).reshape(labelmap_kji.shape[2 - axis], -1).any(1))
    others = [int(s) for s in filled if s != prompt_slice]
    if len(others) > n_extra_slices:  # spread over the segmented extent, ends included
        others = [others[round(i)] for i in np.linspace(0, len(others) - 1, n_extra_slices)]
    slices = sorted({prompt_slice, *others})
    tiles = []
    for index in slices:
        tile, (scale_x, scale_y) = _tile(frame_of(image_kji, axis, index), frame_of(labelmap_kji, axis, index), aspect)
        draw = ImageDraw.Draw(tile)
        if index == prompt_slice:
            if box_frame_xyxy is not None:
                x0, y0, x1, y1 = np.asarray(box_frame_xyxy, dtype=float)
                draw.rectangle([x0 * scale_x, y0 * scale_y, (x1 + 1) * scale_x, (y1 + 1) * scale_y],
                               outline=(255, 220, 0), width=2)
            if points_frame_xy is not None:
                for (x, y), label in zip(np.asarray(points_frame_xy), np.asarray(point_labels)):
                    cx, cy = (x + 0.5) * scale_x, (y + 0.5) * scale_y
                    colour = (40, 220, 40) if label else (230, 40, 40)
                    draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=colour, outline=(0, 0, 0))
        title = f"{AXIS_NAMES[axis]}={index}" + (" (prompt)" if index == prompt_slice else "")
        draw.rectangle([0, 0, 7 * len(title) + 6, 14], fill=(0, 0, 0))
        draw.text((3, 1), title, fill=(255, 255, 255))
        tiles.append(tile)
    gap = 4
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), TILE_HEIGHT_PX), (20, 20, 20))
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, 0))
        x += tile.width + gap
    handle, temporary = tempfile.mkstemp(prefix=".medsegany-", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        canvas.save(temporary, format="PNG")
        os.replace(temporary, path)
    except OSError as error:
        raise OutputError(f"writing {path} failed ({error.strerror})", "check free disk space and permissions") from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path
