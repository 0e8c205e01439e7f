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
    else:  # MedSAM_Inference.medsam_inference: box / [W, H] * 1024, bilinear resize of the 256 px logits
        box_1024 = torch.as_tensor(box / np.array([200, 300, 200, 300]) * 1024, dtype=torch.float32)[
            None, None
        ]
        with torch.no_grad():
            sparse, dense = net.prompt_encoder(points=None, boxes=box_1024, masks=None)
            low, _ = net.mask_decoder(
                image_embeddings=features,
                image_pe=net.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            reference = torch.nn.functional.interpolate(
                low, size=frame_shape, mode="bilinear", align_corners=False
            )
        np.testing.assert_allclose(ours.logits_frame, reference[0, 0].numpy(), rtol=1e-4, atol=1e-4)


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
