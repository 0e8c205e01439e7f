"""load_model: catalog ids, the weight store, users' checkpoints and configs, and clear errors."""

from __future__ import annotations

import dataclasses

import pytest
from medsegany.errors import ModelError
from medsegany.models.registry import is_sam2_model, load_model, load_slice_model, resolve_device


def test_bundled_litemedsam_is_a_slice_model():
    model = load_model("litemedsam", device="cpu")
    assert model.model_id == "litemedsam" and not is_sam2_model(model)


def test_missing_model_names_the_download_and_import_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEGANY_HOME", str(tmp_path))
    with pytest.raises(
        ModelError, match=r"medsegany models download medsam2_latest.*models import medsam2_latest"
    ):
        load_model("medsam2_latest", device="cpu")
    with pytest.raises(ModelError, match="medsegany models download sam_vit_b"):
        load_model("sam_vit_b", device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_id": "sam9_giant"}, "unknown model"),
        ({"model_id": "edgetam"}, "not supported"),
        ({"model_id": None, "config": "sam2.1_hiera_t"}, "without --checkpoint"),
        ({"model_id": "litemedsam", "device": "cuda:7"}, None),
    ],
)
def test_bad_requests_are_model_errors(kwargs, message):
    import torch

    if message is None:
        if torch.cuda.is_available():
            pytest.skip("a CUDA device exists here")
        message = "no CUDA GPU"
    with pytest.raises(ModelError, match=message):
        load_model(**kwargs)


def test_user_checkpoint_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(None, checkpoint=tmp_path / "nope.pt", config="sam2.1_hiera_t512")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match=r"cannot read|corrupt|not a PyTorch"):
        load_model(None, checkpoint=junk, config="sam2.1_hiera_t512")
    with pytest.raises(ModelError, match="unknown SAM 2 config"):
        load_model(None, checkpoint=junk, config="sam3_hiera_q")
    with pytest.raises(ModelError, match=r"corrupt|not a PyTorch"):
        load_model(None, checkpoint=junk, config="vit_b")


def test_slice_model_loader_refuses_sam2_and_devices_resolve(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEGANY_HOME", str(tmp_path))
    with pytest.raises(ModelError):
        load_slice_model("sam2.1_hiera_tiny")
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")


def test_sam2_warm_up_tracks_only_on_cuda():
    pytest.importorskip("sam2")
    torch = pytest.importorskip("torch")
    from medsegany.models.registry import Sam2VideoModel
    from medsegany.models.sam2_build import build_sam2_model

    torch.manual_seed(0)
    video = Sam2VideoModel(
        "t", build_sam2_model("sam2.1_hiera_t512", None), "cpu", 512, None, precision="float32"
    )
    assert video.warm_up() is None  # a CPU: nothing to record, no 40-frame run at load
    # encoder batches: one image at a time on a CPU, 16 on a GPU (what the memory plan sizes)
    assert video.preferred_batch_size == 1
    assert dataclasses.replace(video, device="cuda:0").preferred_batch_size == 16
    assert video.track_synthetic(3) > 0  # the run warm_up makes on CUDA works on any device
