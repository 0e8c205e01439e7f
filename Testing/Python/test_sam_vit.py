"""SAM / MedSAM ViT-B on segment-anything: preprocessing as trained, prompt decoding as Meta's predictor,
and a random-weight ViT-B in the publisher's format loaded through the weight store and propagated."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

pytest.importorskip("segment_anything")
torch = pytest.importorskip("torch")

from medsegany.errors import ModelError  # noqa: E402
from medsegany.models.sam_vit import (  # noqa: E402
    IMAGE_SIZE,
    SamVitEmbedding,
    SamVitModel,
    build_sam_vit,
    medsam_input,
    skimage_resize_order3,
)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_sam_vit("vit_b")


def test_medsam_input_is_a_min_max_scaled_1024_square():
    frame = np.zeros((40, 60), np.uint8)
    frame[10:30, 20:40] = 200
    image = medsam_input(frame)
    assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and image.dtype == np.float32
    assert image.min() == 0.0 and image.max() == 1.0
    assert np.array_equal(image[0], image[2])
    # the cubic spline keeps a constant image constant and stays within the input's range
    np.testing.assert_allclose(skimage_resize_order3(np.full((5, 7), 9.0), (11, 3)), 9.0)
    ramp = skimage_resize_order3(np.arange(64.0).reshape(8, 8), (16, 16))
    assert ramp.min() >= 0 and ramp.max() <= 63


@pytest.mark.parametrize("shape", [(300, 180), (1400, 2100)])
def test_medsam_resize_continues_the_image_in_its_mirror_image_at_the_edges(shape):
    """MedSAM's ``transform.resize`` leaves skimage's default mode, "reflect": a frame bright up to its
    edges stays bright there (zeros beyond the edges darkened its outer rows and columns)."""
    height, width = shape
    frame = np.full(shape, 200, np.uint8)
    frame[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = 50
    image = medsam_input(frame)[0]
    assert image.min() == 0.0
    # 200 at most one grey level lower: the spline gives 199.99999... where skimage's cast truncates too
    for border in (image[:100], image[-100:], image[:, :100], image[:, -100:]):
        assert border.min() >= (199 - 50) / 150 - 1e-6


@pytest.mark.parametrize("shape", [(300, 180), (180, 300), (2048, 300), (7, 9)])
def test_medsam_input_matches_skimage(shape):
    transform = pytest.importorskip("skimage.transform")
    frame = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    img_3c = np.repeat(frame[:, :, None], 3, axis=-1)  # MedSAM_Inference.py, as written there
    img_1024 = transform.resize(
        img_3c, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True
    ).astype(np.uint8)
    img_1024 = (img_1024 - img_1024.min()) / np.clip(img_1024.max() - img_1024.min(), 1e-8, None)
    np.testing.assert_allclose(medsam_input(frame), img_1024.transpose(2, 0, 1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("preprocessing", ["sam", "medsam"])
def test_prompt_decoding_matches_the_reference_inference(net, preprocessing):
    from segment_anything import SamPredictor

    model = SamVitModel(net, preprocessing)
    torch.manual_seed(1)
    features = torch.randn(1, 256, 64, 64)
    frame_shape = (300, 200)
    input_shape = (1024, 683) if preprocessing == "sam" else (1024, 1024)
    embedding = SamVitEmbedding(features, frame_shape, input_shape)
    box = np.array([40.0, 60.0, 150.0, 220.0])
    ours = model.predict(embedding, box_frame_xyxy=box)
    assert ours.logits_frame.shape == frame_shape
    if preprocessing == "sam":
        predictor = SamPredictor(net)
        predictor.features, predictor.is_image_set = features, True
        predictor.original_size, predictor.input_size = frame_shape, input_shape
        logits, scores, _ = predictor.predict(box=box, multimask_output=False, return_logits=True)
        np.testing.assert_allclose(ours.logits_frame, logits[0], rtol=1e-4, atol=1e-4)
        assert ours.iou_score == pytest.approx(float(scores[0]), abs=1e-5)
    else:  # MedSAM_Inference.medsam_inference: box / [W, H] * 1024, bilinear resize of the 256 px sigmoid
        probability = medsam_reference_probability(net, features, box, frame_shape)
        ours_probability = torch.sigmoid(torch.from_numpy(ours.logits_frame).double()).numpy()
        np.testing.assert_allclose(ours_probability, probability, rtol=0, atol=1e-5)


def medsam_reference_probability(net, features, box, frame_shape) -> np.ndarray:
    """``medsam_inference`` of bowang-lab's MedSAM_Inference.py (float32): the probability it thresholds."""
    height, width = frame_shape
    box_1024 = box / np.array([width, height, width, height]) * 1024
    box_torch = torch.as_tensor(box_1024, dtype=torch.float)[None, None]
    with torch.no_grad():
        sparse, dense = net.prompt_encoder(points=None, boxes=box_torch, masks=None)
        low_res_logits, _ = net.mask_decoder(
            image_embeddings=features,
            image_pe=net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        low_res_pred = torch.sigmoid(low_res_logits)  # the sigmoid first, then the resize
        resized = torch.nn.functional.interpolate(
            low_res_pred, size=(height, width), mode="bilinear", align_corners=False
        )
    return resized[0, 0].numpy()


@pytest.mark.parametrize("frame_shape", [(300, 180), (180, 300), (700, 500)])
def test_medsam_masks_are_its_resized_probability_above_one_half(net, frame_shape):
    """MedSAM resizes the sigmoid of its 256 px logits, not the logits: resizing logits moved 2-28 boundary
    pixels of these frames' masks (the pixels between one far outside and one barely inside)."""
    model = SamVitModel(net, "medsam", precision="float32")
    height, width = frame_shape
    box = np.array([0.2 * width, 0.25 * height, 0.7 * width, 0.8 * height])
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        features = torch.randn(1, 256, 64, 64)
        ours = model.predict(SamVitEmbedding(features, frame_shape, (IMAGE_SIZE, IMAGE_SIZE)), box)
        probability = medsam_reference_probability(net, features, box, frame_shape)
        # the float32 reference rounds: a pixel within 1e-6 of one half may go either way
        decided = np.abs(probability - 0.5) > 1e-6
        assert decided.mean() > 0.999
        np.testing.assert_array_equal(ours.mask_frame[decided], (probability > 0.5)[decided])
        assert np.isfinite(ours.logits_frame).all()


def test_fine_tuned_checkpoint_wrapped_under_model_loads(net, tmp_path):
    # MedSAM's training script saves {"model": state_dict, "optimizer": ..., "epoch": ...}
    path = tmp_path / "medsam_model_best.pth"
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}
    torch.save({"model": net.state_dict(), "optimizer": optimizer, "epoch": 12}, path)
    model = SamVitModel.from_checkpoint(path, "vit_b", "medsam", model_id="medsam_vit_b")
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(model.net.state_dict()[key], net.state_dict()[key])
    torch.save({"model": {"other_model.weight": torch.zeros(1)}, "epoch": 1}, path)
    with pytest.raises(ModelError, match="is not a SAM vit_b checkpoint"):
        SamVitModel.from_checkpoint(path, "vit_b", "medsam")


@pytest.mark.slow
def test_random_vit_b_from_the_store_propagates_in_a_session(net, tmp_path, monkeypatch):
    """About 40 s of ViT-B encoding per 1024 px frame on a busy 2-core CPU: two frames."""
    from medsegany.models import catalog
    from medsegany.models.registry import load_model
    from medsegany.models.weight_store import WeightStore
    from medsegany.prompts import make_slice_prompts
    from medsegany.session import SegmentationSession
    from medsegany.volume import Volume

    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(net.state_dict(), path)  # SAM and MedSAM publish a plain state dict
    cards = dict(catalog.load_catalog())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    cards["sam_vit_b"] = dataclasses.replace(cards["sam_vit_b"], sha256=digest, bytes=path.stat().st_size)
    monkeypatch.setattr(catalog, "load_catalog", lambda: cards)
    monkeypatch.setenv("MEDSEGANY_HOME", str(tmp_path / "home"))
    WeightStore().import_file(cards["sam_vit_b"], path)
    model = load_model("sam_vit_b", device="cpu")
    assert isinstance(model, SamVitModel) and model.preprocessing == "sam"
    voxels = np.zeros((2, 40, 48), np.float32)
    voxels[:, 10:30, 12:36] = 200
    volume = Volume(voxels, np.eye(4))
    session = SegmentationSession(volume, model, intensity=(0.0, 255.0))
    object_id = session.add_object()
    prompt = session.add_prompts(object_id, make_slice_prompts(volume, box_ijk=(12, 10, 0, 35, 29, 0)))
    assert prompt.mask_frame.shape == (40, 48)
    results = list(session.propagate())
    assert {r.slice_index for r in results} <= {1}
    assert session.embeddings(2).encoded_frames == 2
