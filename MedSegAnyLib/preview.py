"""A PNG preview: the prompted slice with its box and points, and a few propagated slices, masks overlaid.

Pillow only. Tiles follow the frame convention (rows down, columns right; see ``slices.py``) and are
stretched so that pixels have their physical aspect ratio: in a J view of 0.7 mm pixels and 5 mm slices
each row is drawn about 7 times taller than a column is wide.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import OutputError
from .exporters import SegmentInfo, atomic_write, default_segment_color
from .geometry import kji_axis
from .slices import AXIS_NAMES, frame_of

#: Longest side of a tile in pixels: 512-pixel CT slices are shown at half size, small crops enlarged.
TILE_LONG_SIDE_PX = 320
#: Shortest side of a tile in pixels: a frame of a few slices seen edge-on (a J view of a 3-slice CT is 9
#: pixels high at its aspect) is stretched to it, so that its title, prompts and masks can be seen.
MIN_TILE_SIDE_PX = 48
#: Tiles per row of the grid; the default 1 + 4 slices fit in one row.
MAX_COLUMNS = 5
GAP_PX = 4
#: Mask opacity: 0.45 keeps the anatomy under a mask readable while the colour stays unmistakable.
OVERLAY_ALPHA = 0.45
BOX_RGB = (255, 220, 0)
POSITIVE_POINT_RGB = (40, 220, 40)
NEGATIVE_POINT_RGB = (230, 40, 40)
BACKGROUND_RGB = (20, 20, 20)
#: zlib level of the PNG (Pillow's default: 6). Five 512 x 512 tiles of noisy grey (1616 x 320 pixels) took
#: 0.18 s to write at level 1 against 0.28 s at 6, for 624 KB against 603 KB, on the 2-core development CPU
#: (benchmarks/job_outputs.py; the tiles' drawing included).
PNG_COMPRESS_LEVEL = 1

#: Frame rows and columns as IJK axes, per the frame convention (K view: rows J, cols I; ...).
_ROW_COLUMN_AXES = {2: (1, 0), 1: (2, 0), 0: (2, 1)}


def preview_slices(
    labelmap_kji: np.ndarray, axis: int, prompt_slice: int, n_extra_slices: int = 4
) -> list[int]:
    """The slices a preview shows, in order: the prompted one plus up to ``n_extra_slices`` segmented ones
    spread evenly over the segmented extent (its first and last slices included)."""
    frames = np.moveaxis(np.asarray(labelmap_kji), kji_axis(axis), 0)
    segmented = np.flatnonzero(frames.reshape(frames.shape[0], -1).any(axis=1))
    others = [int(s) for s in segmented if s != prompt_slice]
    if len(others) > n_extra_slices:
        picks = (
            np.linspace(0, len(others) - 1, n_extra_slices).round().astype(int) if n_extra_slices > 0 else []
        )
        others = [others[p] for p in picks]
    return sorted({int(prompt_slice), *others})


def pixel_aspect(axis: int, spacing_ijk: Sequence[float] | None) -> float:
    """Physical height / width of one frame pixel along ``axis`` (1 without a spacing)."""
    if spacing_ijk is None:
        return 1.0
    row_axis, column_axis = _ROW_COLUMN_AXES[axis]
    return float(spacing_ijk[row_axis]) / float(spacing_ijk[column_axis])


def tile_size(frame_shape: tuple[int, int], aspect: float) -> tuple[int, int]:
    """(width, height) in pixels of a tile showing a frame of ``frame_shape`` (rows, cols) at its aspect;
    a side shorter than :data:`MIN_TILE_SIDE_PX` is stretched to it (the aspect is then not physical)."""
    rows, columns = frame_shape
    scale = TILE_LONG_SIDE_PX / max(rows * aspect, columns)
    return max(MIN_TILE_SIDE_PX, round(columns * scale)), max(MIN_TILE_SIDE_PX, round(rows * aspect * scale))


def _nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    # Pixel centres of the output mapped back to the input: the nearest-neighbour source of each pixel.
    return np.minimum((np.arange(size_out) + 0.5) * size_in / size_out, size_in - 1).astype(int)


def _tile_labels(labels_frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """The labels a tile of ``height`` x ``width`` shows: the nearest voxel's, and where that is background
    on a shrunk tile, the largest label among the voxels the pixel covers. The nearest voxel alone skips
    voxels (512 columns on 320 pixels: every third or so), so a mask a voxel wide (a vessel, an object's
    first and last slices, which the preview picks) vanished from its tile."""
    rows, columns = labels_frame.shape
    nearest = labels_frame[_nearest_indices(rows, height)][:, _nearest_indices(columns, width)]
    if height >= rows and width >= columns:
        return nearest
    covered = labels_frame
    for axis, (size_in, size_out) in enumerate(((rows, height), (columns, width))):
        if size_out < size_in:  # pixel n covers voxels starts[n] .. starts[n + 1] - 1
            starts = np.arange(size_out) * size_in // size_out
            covered = np.maximum.reduceat(covered, starts, axis=axis)
        else:
            covered = np.take(covered, _nearest_indices(size_in, size_out), axis=axis)
    return np.where(nearest != 0, nearest, covered)


def _tile(
    image_frame: np.ndarray, labels_frame: np.ndarray, size: tuple[int, int], colours: dict[int, tuple]
):
    from PIL import Image

    width, height = size
    columns = image_frame.shape[1]
    # Shrinking averages (BOX) so that thin structures do not vanish; enlarging keeps voxels square-edged.
    resample = Image.Resampling.BOX if width < columns else Image.Resampling.NEAREST
    grey = Image.fromarray(np.ascontiguousarray(image_frame)).resize((width, height), resample)
    rgb = np.repeat(np.asarray(grey, dtype=np.float32)[..., None], 3, axis=2)
    labels = _tile_labels(labels_frame, height, width)
    # A label's border pixels (a 4-neighbour differs) are drawn opaque so that small masks stay visible.
    padded = np.pad(labels, 1, mode="edge")
    border = (
        (padded[:-2, 1:-1] != labels)
        | (padded[2:, 1:-1] != labels)
        | (padded[1:-1, :-2] != labels)
        | (padded[1:-1, 2:] != labels)
    )
    for value in (int(v) for v in np.unique(labels) if v != 0):
        colour = np.array(colours.get(value, default_segment_color(value - 1)), dtype=np.float32) * 255
        inside = labels == value
        rgb[inside] = (1 - OVERLAY_ALPHA) * rgb[inside] + OVERLAY_ALPHA * colour
        rgb[inside & border] = colour
    return Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8))


def _draw_prompts(draw, scale_xy, box_frame_xyxy, points_frame_xy, point_labels) -> None:
    scale_x, scale_y = scale_xy
    if box_frame_xyxy is not None:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box_frame_xyxy).ravel())
        # Box corners are inclusive pixel indices: the outline encloses whole pixels x0..x1, y0..y1 (at
        # least one tile pixel wide: shrunk, a box one voxel wide would end left of where it starts)
        left, top = x0 * scale_x, y0 * scale_y
        right, bottom = max(left, (x1 + 1) * scale_x - 1), max(top, (y1 + 1) * scale_y - 1)
        draw.rectangle([left, top, right, bottom], outline=BOX_RGB, width=2)
    if points_frame_xy is not None:
        points = np.asarray(points_frame_xy, dtype=float).reshape(-1, 2)
        labels = np.ones(len(points), dtype=int) if point_labels is None else np.asarray(point_labels).ravel()
        for (x, y), label in zip(points, labels):
            centre_x, centre_y = (x + 0.5) * scale_x, (y + 0.5) * scale_y
            colour = POSITIVE_POINT_RGB if label else NEGATIVE_POINT_RGB
            draw.ellipse(
                [centre_x - 4, centre_y - 4, centre_x + 4, centre_y + 4], fill=colour, outline=(0, 0, 0)
            )


def edge_letters(axis: int, ijk_to_ras: np.ndarray) -> tuple[str, str]:
    """Anatomical letters of a frame's right edge (+columns) and bottom edge (+rows): R/L, A/P, S/I.

    The nearest anatomical direction of each voxel axis; an oblique axis gets its dominant one.
    """
    row_axis, column_axis = _ROW_COLUMN_AXES[axis]
    columns = np.asarray(ijk_to_ras, dtype=float)[:3, :3]

    def letter(ijk_axis: int) -> str:
        direction = columns[:, ijk_axis]
        dominant = int(np.argmax(np.abs(direction)))
        return ("RL", "AP", "SI")[dominant][0 if direction[dominant] > 0 else 1]

    return letter(column_axis), letter(row_axis)


def _draw_label(draw, xy: tuple[float, float], text: str, fill, anchor: str = "la") -> None:
    """Text on a black box, so that it reads on any image."""
    left, top, right, bottom = draw.textbbox(xy, text, anchor=anchor)
    draw.rectangle([left - 3, top - 2, right + 2, bottom + 2], fill=(0, 0, 0))
    draw.text(xy, text, fill=fill, anchor=anchor)


def _draw_title(draw, text: str, highlight: bool) -> None:
    _draw_label(draw, (3, 2), text, BOX_RGB if highlight else (255, 255, 255))


def checked_preview_path(path: str | Path) -> Path:
    """``path`` with ``~`` expanded; OutputError unless it names a .png file."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".png":
        raise OutputError(f"preview {path.name!r} is not a .png file", "name the preview something.png")
    return path


def write_preview_png(
    image_kji: np.ndarray,
    labelmap_kji: np.ndarray,
    axis: int,
    prompt_slice: int,
    path: str | Path,
    box_frame_xyxy: np.ndarray | Sequence[float] | None = None,
    points_frame_xy: np.ndarray | None = None,
    point_labels: np.ndarray | Sequence[int] | None = None,
    n_extra_slices: int = 4,
    spacing_ijk: Sequence[float] | None = None,
    segments: Sequence[SegmentInfo] | None = None,
    ijk_to_ras: np.ndarray | None = None,
    first_slice_index: int = 0,
) -> Path:
    """Write a PNG grid of tiles along IJK ``axis``: the prompted slice and segmented slices, masks overlaid.

    ``image_kji`` is the windowed uint8 copy the model saw (other dtypes are clipped to 0..255).
    ``box_frame_xyxy`` (inclusive pixel corners) and ``points_frame_xy`` (x = column, y = row; green for a
    label of 1, red for 0) are drawn on the prompted tile. Each tile is titled with its slice index, e.g.
    ``K=7 (prompt)``. Masks use ``segments``' colours, else :func:`default_segment_color` (label - 1).
    With ``spacing_ijk`` (or, without it, ``ijk_to_ras``'s column lengths) tiles show the physical aspect
    ratio; with ``ijk_to_ras`` the right and bottom edges of each tile carry their anatomical letter
    (R/L, A/P, S/I). Tiles are never flipped: they stay in the frame convention. ``first_slice_index``: the
    user's index of slice 0 along ``axis`` (a slab cut from a volume), for the titles. Returns ``path``;
    raises OutputError for a name not ending in .png or a folder that is missing or not writable. The
    write is atomic.
    """
    path = checked_preview_path(path)
    image_kji, labelmap_kji = np.asarray(image_kji), np.asarray(labelmap_kji)
    if image_kji.ndim != 3 or image_kji.shape != labelmap_kji.shape:
        raise ValueError(f"image {image_kji.shape} and labelmap {labelmap_kji.shape} must be one 3D shape")
    if axis not in _ROW_COLUMN_AXES:
        raise ValueError(f"axis must be 0 (I), 1 (J) or 2 (K), not {axis}")
    if not 0 <= prompt_slice < image_kji.shape[kji_axis(axis)]:
        raise ValueError(f"slice {prompt_slice} is outside 0..{image_kji.shape[kji_axis(axis)] - 1}")
    if image_kji.dtype != np.uint8:
        image_kji = np.clip(image_kji, 0, 255).astype(np.uint8)

    from PIL import Image, ImageDraw  # lazy: importing medsegany loads no imaging library

    if spacing_ijk is None and ijk_to_ras is not None:
        spacing_ijk = tuple(np.linalg.norm(np.asarray(ijk_to_ras, dtype=float)[:3, :3], axis=0))
    letters = edge_letters(axis, ijk_to_ras) if ijk_to_ras is not None else None
    colours = {int(info.label_value): tuple(info.color_rgb) for info in segments or []}
    slices = preview_slices(labelmap_kji, axis, prompt_slice, n_extra_slices)
    frame_shape = frame_of(image_kji, axis, prompt_slice).shape
    width, height = tile_size(frame_shape, pixel_aspect(axis, spacing_ijk))
    columns = min(len(slices), MAX_COLUMNS)
    rows = -(-len(slices) // columns)
    canvas = Image.new(
        "RGB", (columns * width + (columns - 1) * GAP_PX, rows * height + (rows - 1) * GAP_PX), BACKGROUND_RGB
    )
    for position, index in enumerate(slices):
        tile = _tile(
            frame_of(image_kji, axis, index), frame_of(labelmap_kji, axis, index), (width, height), colours
        )
        draw = ImageDraw.Draw(tile)
        if index == prompt_slice:
            scale_xy = (width / frame_shape[1], height / frame_shape[0])
            _draw_prompts(draw, scale_xy, box_frame_xyxy, points_frame_xy, point_labels)
        _draw_title(
            draw,
            f"{AXIS_NAMES[axis]}={index + first_slice_index}"
            + (" (prompt)" if index == prompt_slice else ""),
            highlight=index == prompt_slice,
        )
        if letters is not None:
            _draw_label(draw, (width - 3, height / 2), letters[0], (255, 255, 255), anchor="rm")
            _draw_label(draw, (width / 2, height - 3), letters[1], (255, 255, 255), anchor="mb")
        row, column = divmod(position, columns)
        canvas.paste(tile, (column * (width + GAP_PX), row * (height + GAP_PX)))
    return atomic_write(
        path, lambda target: canvas.save(target, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    )
