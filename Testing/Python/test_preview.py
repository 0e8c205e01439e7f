"""The PNG preview: tiles in the frame convention, overlays inside masks, prompts drawn, true aspect."""

from __future__ import annotations

import numpy as np
import pytest
from medsegany.errors import OutputError
from medsegany.exporters import SegmentInfo, default_segment_color
from medsegany.geometry import ijk_to_ras_matrix
from medsegany.preview import (
    BOX_RGB,
    GAP_PX,
    MIN_TILE_SIDE_PX,
    NEGATIVE_POINT_RGB,
    OVERLAY_ALPHA,
    PNG_COMPRESS_LEVEL,
    POSITIVE_POINT_RGB,
    TILE_LONG_SIDE_PX,
    edge_letters,
    preview_slices,
    write_preview_png,
)
from PIL import Image

GREY = 100
SHAPE_KJI = (10, 12, 16)  # K, J, I


def blended(colour_rgb) -> np.ndarray:
    return (1 - OVERLAY_ALPHA) * GREY + OVERLAY_ALPHA * np.array(colour_rgb) * 255


@pytest.fixture
def scene():
    """A uniform grey image and a labelmap: label 1 in a block over K 2..7, label 2 in one voxel at K 5."""
    image_kji = np.full(SHAPE_KJI, GREY, dtype=np.uint8)
    labelmap_kji = np.zeros(SHAPE_KJI, dtype=np.uint8)
    labelmap_kji[2:8, 4:10, 5:13] = 1  # rows J 4..9, columns I 5..12 in a K frame
    labelmap_kji[5, 0, 0] = 2
    return image_kji, labelmap_kji


def pixel(png, x: float, y: float) -> np.ndarray:
    return np.asarray(png)[int(y), int(x)].astype(float)


def test_prompted_tile_shows_overlay_box_and_points(tmp_path, scene):
    image_kji, labelmap_kji = scene
    path = write_preview_png(
        image_kji,
        labelmap_kji,
        axis=2,
        prompt_slice=2,
        path=tmp_path / "preview.png",
        box_frame_xyxy=[5, 4, 12, 9],
        points_frame_xy=np.array([[6, 5], [14, 1]]),
        point_labels=[1, 0],
    )
    assert path == tmp_path / "preview.png" and path.is_file()
    png = Image.open(path).convert("RGB")
    # 16 columns x 12 rows at 1:1 -> 320 x 240 tiles; slices 2 (prompt) + 4 spread over 3..7 -> 5 tiles.
    tile_w, tile_h = TILE_LONG_SIDE_PX, TILE_LONG_SIDE_PX * 12 // 16
    assert png.size == (5 * tile_w + 4 * GAP_PX, tile_h)
    scale = tile_w / 16  # 20 pixels per voxel; the prompted slice is the first tile (slices are in order)

    # Inside the mask, away from its border, the box and the points: grey blended with label 1's colour.
    inside = pixel(png, 10.5 * scale, 7.5 * scale)
    np.testing.assert_allclose(inside, blended(default_segment_color(0)), atol=1.5)
    # Outside every mask the image is untouched.
    np.testing.assert_allclose(pixel(png, 2.5 * scale, 10.5 * scale), [GREY] * 3, atol=0.5)
    # The box outline encloses pixels 5..12 x 4..9: its left edge runs down column 5's left side.
    np.testing.assert_allclose(pixel(png, 5 * scale, 6.5 * scale), BOX_RGB)
    np.testing.assert_allclose(pixel(png, (12 + 1) * scale - 1, 6.5 * scale), BOX_RGB)
    # Points are drawn at pixel centres: green for positive, red for negative.
    np.testing.assert_allclose(pixel(png, 6.5 * scale, 5.5 * scale), POSITIVE_POINT_RGB)
    np.testing.assert_allclose(pixel(png, 14.5 * scale, 1.5 * scale), NEGATIVE_POINT_RGB)
    # Nothing of the prompt is drawn on the other tiles: the same place in tile 2 is the plain overlay.
    second_x = tile_w + GAP_PX
    np.testing.assert_allclose(
        pixel(png, second_x + 5 * scale + 1, 6.5 * scale), blended(default_segment_color(0)), atol=1.5
    )


def test_each_label_gets_its_segment_colour(tmp_path, scene):
    image_kji, labelmap_kji = scene
    segments = [SegmentInfo(1, "tumour", (0.0, 0.0, 1.0))]
    path = write_preview_png(
        image_kji, labelmap_kji, 2, 5, tmp_path / "p.png", n_extra_slices=0, segments=segments
    )
    png = Image.open(path).convert("RGB")
    assert png.size == (TILE_LONG_SIDE_PX, TILE_LONG_SIDE_PX * 12 // 16)  # one tile: the prompted slice
    scale = TILE_LONG_SIDE_PX / 16
    np.testing.assert_allclose(pixel(png, 9.5 * scale, 7.5 * scale), blended((0.0, 0.0, 1.0)), atol=1.5)
    # Label 2 (one voxel at J 0, I 0, under the title bar) has no segment: its border gets the default colour.
    np.testing.assert_allclose(
        pixel(png, 0.5 * scale, scale - 1), np.array(default_segment_color(1)) * 255, atol=1.5
    )


def test_i_view_rows_are_k_and_columns_are_j(tmp_path):
    image_kji = np.full((6, 8, 5), GREY, dtype=np.uint8)
    labelmap_kji = np.zeros((6, 8, 5), dtype=np.uint8)
    labelmap_kji[4:6, 1:3, 2] = 1  # in the I=2 frame: rows K 4..5, columns J 1..2
    path = write_preview_png(image_kji, labelmap_kji, axis=0, prompt_slice=2, path=tmp_path / "i.png")
    png = Image.open(path).convert("RGB")
    scale = TILE_LONG_SIDE_PX / 8  # 8 columns (J) are the long side
    assert png.size == (TILE_LONG_SIDE_PX, 6 * scale)
    np.testing.assert_allclose(
        pixel(png, 1.5 * scale, 4.5 * scale), blended(default_segment_color(0)), atol=1.5
    )
    np.testing.assert_allclose(pixel(png, 4.5 * scale, 1.5 * scale), [GREY] * 3, atol=0.5)  # transposed place


def test_tiles_have_the_physical_aspect_ratio_of_thick_slices(tmp_path, scene):
    image_kji, labelmap_kji = scene
    # J view: rows are K (10 slices of 5 mm = 50 mm), columns I (16 of 0.7 mm = 11.2 mm).
    path = write_preview_png(
        image_kji,
        labelmap_kji,
        axis=1,
        prompt_slice=5,
        path=tmp_path / "j.png",
        n_extra_slices=0,
        spacing_ijk=(0.7, 0.7, 5.0),
    )
    width, height = Image.open(path).size
    assert height == TILE_LONG_SIDE_PX
    assert height / width == pytest.approx(50.0 / 11.2, rel=0.02)
    # Without spacing pixels are square: 10 rows x 16 columns.
    path = write_preview_png(
        image_kji, labelmap_kji, axis=1, prompt_slice=5, path=tmp_path / "square.png", n_extra_slices=0
    )
    width, height = Image.open(path).size
    assert height / width == pytest.approx(10 / 16, rel=0.02)


def test_many_slices_wrap_into_a_grid(tmp_path, scene):
    image_kji, labelmap_kji = scene
    path = write_preview_png(image_kji, labelmap_kji, 2, 0, tmp_path / "grid.png", n_extra_slices=6)
    tile_w, tile_h = TILE_LONG_SIDE_PX, TILE_LONG_SIDE_PX * 12 // 16
    # Slice 0 (prompted, empty) + all 6 segmented slices = 7 tiles: a row of 5 and a row of 2.
    assert Image.open(path).size == (5 * tile_w + 4 * GAP_PX, 2 * tile_h + GAP_PX)


def test_preview_slices_spread_over_the_segmented_extent(scene):
    _, labelmap_kji = scene
    assert preview_slices(labelmap_kji, 2, 2, 4) == [2, 3, 4, 6, 7]
    assert preview_slices(labelmap_kji, 2, 0, 2) == [0, 2, 7]  # both ends of 2..7, the prompt kept
    assert preview_slices(labelmap_kji, 2, 4, 0) == [4]
    assert preview_slices(labelmap_kji, 0, 8, 10) == [
        0,
        *range(5, 13),
    ]  # I view: I 5..12 and the label-2 voxel


@pytest.mark.parametrize("name", ["preview.jpg", "preview"])
def test_a_name_that_is_not_png_is_refused(tmp_path, scene, name):
    with pytest.raises(OutputError, match=r"not a \.png file.*something\.png"):
        write_preview_png(*scene, 2, 2, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_folder_is_refused(tmp_path, scene):
    with pytest.raises(OutputError, match="does not exist") as caught:
        write_preview_png(*scene, 2, 2, tmp_path / "absent" / "preview.png")
    assert "\n" not in str(caught.value) and caught.value.fix


def test_a_failed_save_keeps_the_previous_preview(tmp_path, scene, monkeypatch):
    target = tmp_path / "preview.png"
    target.write_bytes(b"previous preview")

    def fail(self, filename, *args, **kwargs):
        open(filename, "wb").write(b"half")  # noqa: SIM115
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(OutputError, match="No space left"):
        write_preview_png(*scene, 2, 2, target)
    assert target.read_bytes() == b"previous preview"
    assert [p.name for p in tmp_path.iterdir()] == ["preview.png"]


def test_invalid_arguments_are_programming_errors(tmp_path, scene):
    image_kji, labelmap_kji = scene
    with pytest.raises(ValueError, match=r"outside 0\.\.9"):
        write_preview_png(image_kji, labelmap_kji, 2, 10, tmp_path / "p.png")
    with pytest.raises(ValueError, match="one 3D shape"):
        write_preview_png(image_kji, labelmap_kji[:, :, :3], 2, 1, tmp_path / "p.png")
    with pytest.raises(ValueError, match="axis"):
        write_preview_png(image_kji, labelmap_kji, 3, 1, tmp_path / "p.png")


def test_edge_letters_name_the_anatomical_direction_of_columns_and_rows():
    # DeepLesion-like grid: I runs to LPS +y (posterior), J to LPS +x (left), K to LPS -z (inferior).
    ijk_to_ras = ijk_to_ras_matrix([0.7, 0.7, 5.0], [0, 0, 0], [[0, 1, 0], [1, 0, 0], [0, 0, -1]])
    assert edge_letters(2, ijk_to_ras) == ("P", "L")  # K view: columns I, rows J
    assert edge_letters(1, ijk_to_ras) == ("P", "I")  # J view: columns I, rows K
    assert edge_letters(0, ijk_to_ras) == ("L", "I")  # I view: columns J, rows K
    plain = np.diag([1.0, 1.0, 1.0, 1.0])
    assert edge_letters(2, plain) == ("R", "A")
    assert edge_letters(2, np.diag([-1.0, -1.0, 1.0, 1.0])) == ("L", "P")


def test_ijk_to_ras_gives_the_aspect_and_the_edge_letters(tmp_path, scene):
    ijk_to_ras = ijk_to_ras_matrix([0.7, 0.7, 5.0], [0, 0, 0], np.eye(3))
    plain = write_preview_png(*scene, 1, 5, tmp_path / "plain.png", n_extra_slices=0)
    path = write_preview_png(*scene, 1, 5, tmp_path / "j.png", n_extra_slices=0, ijk_to_ras=ijk_to_ras)
    width, height = Image.open(path).size
    assert height / width == pytest.approx(50.0 / 11.2, rel=0.02)  # spacing taken from the matrix

    def right_edge_middle(png_path):
        pixels = np.asarray(Image.open(png_path).convert("RGB")).astype(int)
        return pixels[pixels.shape[0] // 2 - 8 : pixels.shape[0] // 2 + 8, -12:]

    # The right edge's letter ("L": I runs to LPS +x) is light text on black at mid-height; without the
    # matrix the same place shows the grey image.
    labelled = right_edge_middle(path)
    assert (labelled.min(axis=2) > 200).any() and (labelled.max(axis=2) == 0).any()
    assert (right_edge_middle(plain) == GREY).all()


def test_the_png_is_compressed_at_the_fast_level(tmp_path, scene):
    """zlib's header in the first IDAT chunk tells the level apart (FLEVEL: 0 fastest, 2 default), so a
    save that fell back to Pillow's level 6 (2.4x slower for five CT tiles) fails here."""
    image_kji, labelmap_kji = scene
    path = write_preview_png(image_kji, labelmap_kji, axis=2, prompt_slice=2, path=tmp_path / "fast.png")
    data = path.read_bytes()
    idat = data.index(b"IDAT") + 4
    assert PNG_COMPRESS_LEVEL == 1 and data[idat] == 0x78 and data[idat + 1] >> 6 == 0


def test_a_box_one_voxel_wide_on_a_shrunk_tile_is_drawn(tmp_path):
    """A 1024-column slice shrinks to a 320-pixel tile: the outline of a box one voxel wide ended left of
    where it began, and Pillow raised (after the labelmap was written)."""
    image_kji = np.full((3, 1024, 1024), GREY, dtype=np.uint8)
    labelmap_kji = np.zeros(image_kji.shape, dtype=np.uint8)
    labelmap_kji[1, 500:520, 600] = 1
    path = write_preview_png(
        image_kji,
        labelmap_kji,
        axis=2,
        prompt_slice=1,
        path=tmp_path / "p.png",
        box_frame_xyxy=[600, 500, 600, 519],
    )
    png = np.asarray(Image.open(path).convert("RGB"))
    column = int(600 * TILE_LONG_SIDE_PX / 1024)
    assert (png[:, column - 1 : column + 3] == BOX_RGB).all(axis=-1).any()  # the outline is there


def test_a_thin_volume_seen_edge_on_gets_tiles_tall_enough_to_read(tmp_path):
    """A J view of a 3-slice CT (0.7 mm pixels, 5 mm slices) was 13 pixels high at its aspect: the title
    covered the whole tile and the box and masks could not be seen."""
    image_kji = np.full((3, 512, 512), GREY, dtype=np.uint8)
    labelmap_kji = np.zeros(image_kji.shape, dtype=np.uint8)
    labelmap_kji[:, 200:300, 100:400] = 1
    path = write_preview_png(
        image_kji,
        labelmap_kji,
        axis=1,
        prompt_slice=250,
        path=tmp_path / "thin.png",
        box_frame_xyxy=[100, 0, 399, 2],
        n_extra_slices=0,
        spacing_ijk=(0.7, 0.7, 5.0),
    )
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape[:2] == (MIN_TILE_SIDE_PX, TILE_LONG_SIDE_PX)
    scale = TILE_LONG_SIDE_PX / 512
    # Below the title, inside the box outline, the mask shows across the middle row.
    middle = png[MIN_TILE_SIDE_PX // 2, int(150 * scale) : int(350 * scale)].astype(float)
    expected = np.broadcast_to(blended(default_segment_color(0)), middle.shape)
    np.testing.assert_allclose(middle, expected, atol=1)
    assert (png[-2:, int(200 * scale)] == BOX_RGB).all(axis=-1).any()  # the box's bottom edge


def test_a_mask_one_voxel_wide_stays_visible_on_a_shrunk_tile(tmp_path):
    """512 columns on a 320-pixel tile: the nearest voxel of each pixel skips every third column or so, and
    a vessel one voxel wide on a skipped column (or an object's first or last slice, which the preview
    picks) vanished from its tile."""
    image_kji = np.full((3, 512, 512), GREY, dtype=np.uint8)
    labelmap_kji = np.zeros(image_kji.shape, dtype=np.uint8)
    skipped = next(i for i in range(200, 210) if i not in {int((n + 0.5) * 512 / 320) for n in range(320)})
    labelmap_kji[1, 100:300, skipped] = 1  # on the prompted slice
    labelmap_kji[2, 400, 1] = 2  # one voxel on the last segmented slice
    colours = [SegmentInfo(1, "vessel", (1.0, 0.0, 0.0)), SegmentInfo(2, "dot", (0.0, 0.0, 1.0))]
    path = write_preview_png(
        image_kji, labelmap_kji, axis=2, prompt_slice=1, path=tmp_path / "p.png", segments=colours
    )
    png = np.asarray(Image.open(path).convert("RGB"))
    scale = TILE_LONG_SIDE_PX / 512

    def pixels_of_voxel(index: int) -> set[int]:  # the tile pixels voxel ``index`` overlaps
        return {int(index * scale), int((index + 1) * scale)}

    prompted, last = png[:, :TILE_LONG_SIDE_PX], png[:, TILE_LONG_SIDE_PX + GAP_PX :]
    rows, columns = np.nonzero((prompted == (255, 0, 0)).all(axis=-1))
    assert len(set(columns)) == 1 and set(columns) <= pixels_of_voxel(skipped)  # where the vessel is
    assert rows.min() <= 100 * scale + 1 and rows.max() >= 300 * scale - 2  # over its whole length
    ((row, column),) = np.argwhere((last == (0, 0, 255)).all(axis=-1))  # one pixel
    assert row in pixels_of_voxel(400) and column in pixels_of_voxel(1)
