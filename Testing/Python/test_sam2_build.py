"""Building SAM 2 models from Meta's configs and loading checkpoints in Meta's format (random weights)."""

from __future__ import annotations

import shutil
from importlib import resources

import numpy as np
import pytest

pytest.importorskip("sam2")
torch = pytest.importorskip("torch")

from medsegany.errors import ModelError  # noqa: E402
from medsegany.models.sam2_build import (  # noqa: E402
    MEDSAM2_512_OVERRIDES,
    build_sam2_model,
    resolve_config,
)
from sam2_testing import CONFIG_512, blob_frames, disc_box_xyxy, random_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint_512(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("sam2"), CONFIG_512, seed=3)


@pytest.fixture(scope="module")
def state_dict_512(checkpoint_512):
    return torch.load(checkpoint_512, map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize(
    ("config", "name", "extra"),
    [
        ("sam2.1_hiera_t", "configs/sam2.1/sam2.1_hiera_t.yaml", ()),
        ("sam2.1_hiera_b+", "configs/sam2.1/sam2.1_hiera_b+.yaml", ()),
        ("sam2_hiera_l", "configs/sam2/sam2_hiera_l.yaml", ()),
        ("sam2.1_hiera_t512", "configs/sam2.1/sam2.1_hiera_t.yaml", MEDSAM2_512_OVERRIDES),
        ("configs/sam2.1/sam2.1_hiera_s.yaml", "configs/sam2.1/sam2.1_hiera_s.yaml", ()),
    ],
)
def test_config_names_resolve_to_packaged_configs(config, name, extra):
    assert resolve_config(config) == (name, None, extra)
    assert resources.files("sam2").joinpath(name).is_file()


@pytest.mark.parametrize("config", ["sam3_hiera_t", "configs/sam2.1/sam2.1_hiera_xl.yaml", "/no/such.yaml"])
def test_unknown_config_is_a_model_error(config):
    with pytest.raises(ModelError, match="config"):
        resolve_config(config)


def test_random_checkpoint_is_meta_format_and_loads_strictly(checkpoint_512, state_dict_512):
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    raw = torch.load(checkpoint_512, map_location="cpu", weights_only=True)
    assert list(raw) == ["model"]
    model = build_sam2_model(CONFIG_512, checkpoint_512, device="cpu")
    assert isinstance(model, SAM2VideoPredictor) and not model.training
    loaded = model.state_dict()
    assert loaded.keys() == state_dict_512.keys()
    assert all(torch.equal(loaded[key], value) for key, value in state_dict_512.items())
    # MedSAM2's configuration: 512 px input, RoPE tables of a 32 x 32 feature map (1024 rows)
    assert model.image_size == 512 and model.sam_image_embedding_size == 32
    layer = model.memory_attention.layers[0]
    assert layer.self_attn.freqs_cis.shape[0] == layer.cross_attn_image.freqs_cis.shape[0] == 32 * 32
    # Meta's video post-processing settings, and corrections that become conditioning frames
    assert model.fill_hole_area == 8 and model.binarize_mask_from_pts_for_mem_enc
    assert model.sam_mask_decoder.dynamic_multimask_via_stability
    assert model.add_all_frames_to_correct_as_cond


def test_same_model_as_meta_builder(checkpoint_512, state_dict_512):
    from sam2.build_sam import build_sam2_video_predictor

    meta = build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        str(checkpoint_512),
        device="cpu",
        hydra_overrides_extra=[*MEDSAM2_512_OVERRIDES, "++model.add_all_frames_to_correct_as_cond=true"],
    )
    ours = build_sam2_model(CONFIG_512, checkpoint_512, device="cpu")
    assert type(ours) is type(meta)
    ours_state, meta_state = ours.state_dict(), meta.state_dict()
    assert ours_state.keys() == meta_state.keys()
    assert all(torch.equal(ours_state[key], meta_state[key]) for key in meta_state)
    for name in (
        "image_size",
        "fill_hole_area",
        "num_maskmem",
        "max_cond_frames_in_attn",
        "non_overlap_masks",
    ):
        assert getattr(ours, name) == getattr(meta, name), name


def test_user_yaml_file_builds_the_same_model(tmp_path, checkpoint_512, state_dict_512):
    yaml_path = tmp_path / "my_medsam2.yaml"
    packaged = resources.files("sam2").joinpath("configs/sam2.1/sam2.1_hiera_t.yaml")
    yaml_path.write_text(packaged.read_text(encoding="utf-8"))
    model = build_sam2_model(yaml_path, checkpoint_512, overrides=MEDSAM2_512_OVERRIDES)
    assert model.image_size == 512 and model.fill_hole_area == 8
    assert model.memory_attention.layers[0].self_attn.freqs_cis.shape[0] == 32 * 32
    assert torch.equal(model.state_dict()["no_mem_embed"], state_dict_512["no_mem_embed"])


def test_plain_state_dict_without_the_model_wrapper_loads(tmp_path, state_dict_512):
    # a user's own file saved as torch.save(model.state_dict(), path), not wrapped as Meta does
    path = tmp_path / "plain.pt"
    torch.save(state_dict_512, path)
    model = build_sam2_model(CONFIG_512, path)
    assert torch.equal(model.state_dict()["no_mem_embed"], state_dict_512["no_mem_embed"])


def test_checkpoint_of_another_architecture_is_a_model_error(tmp_path, state_dict_512):
    changed = dict(state_dict_512)
    first_key = next(iter(changed))
    del changed[first_key]
    changed["extra.weight"] = torch.zeros(2)
    path = tmp_path / "other.pt"
    torch.save({"model": changed}, path)
    with pytest.raises(
        ModelError, match=r"missing keys 1 .*unexpected keys 1 .*matches this checkpoint"
    ) as info:
        build_sam2_model(CONFIG_512, path)
    assert first_key in str(info.value) and "\n" not in str(info.value)

    resized = dict(state_dict_512)
    resized["no_mem_embed"] = torch.zeros(1, 1, 7)
    torch.save({"model": resized}, path)
    with pytest.raises(ModelError, match=r"size mismatch.*no_mem_embed"):
        build_sam2_model(CONFIG_512, path)


def test_unreadable_or_unsafe_checkpoints_are_model_errors(tmp_path, checkpoint_512):
    with pytest.raises(ModelError, match="does not exist"):
        build_sam2_model(CONFIG_512, tmp_path / "absent.pt")
    with pytest.raises(ModelError, match="no 'weights' entry"):
        build_sam2_model(CONFIG_512, checkpoint_512, state_key="weights")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        build_sam2_model(CONFIG_512, garbage)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")  # a copy that never got its bytes
    with pytest.raises(ModelError, match=r"empty.pt: it is truncated or corrupt \(EOFError\)"):
        build_sam2_model(CONFIG_512, empty)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(checkpoint_512.read_bytes()[:100_000])
    with pytest.raises(ModelError, match=r"corrupt \(PytorchStreamReader[^.]*\)\. re-download") as info:
        build_sam2_model(CONFIG_512, cut)
    assert "internal miniz error" not in str(info.value)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": {}, "optimizer": shutil.copy}, unsafe)  # a function: needs full unpickling
    with pytest.raises(ModelError, match="more than weights"):
        build_sam2_model(CONFIG_512, unsafe)


def test_sam21_tiny_at_1024_tracks_two_frames(tmp_path):
    """The 1024 px configuration end to end on 2 frames (about 25 s of CPU: 10 s per image encoding)."""
    from medsegany.models.sam2_tracker import Sam2Tracker

    checkpoint = random_checkpoint(tmp_path, "sam2.1_hiera_t", seed=1)
    model = build_sam2_model("sam2.1_hiera_t", checkpoint)
    assert model.image_size == 1024 and model.sam_image_embedding_size == 64
    frames = (blob_frames(num_frames=2, height=48, width=56) * 255).astype(np.uint8)
    tracker = Sam2Tracker(model)
    tracker.set_frames(frames)
    logits = tracker.add_prompts(0, 0, box_frame_xyxy=disc_box_xyxy(frames / 255.0, 0))
    results = list(tracker.propagate(0, +1))
    assert [r.frame_index for r in results] == [0, 1]
    np.testing.assert_array_equal(results[0].mask_logits_frame, logits)
    assert all(
        r.mask_logits_frame.shape == (48, 56) and np.isfinite(r.mask_logits_frame).all() for r in results
    )
    assert tracker.frames_encoded == 2
