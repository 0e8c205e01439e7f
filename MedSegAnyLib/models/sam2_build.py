"""Build a SAM 2 / SAM 2.1 / MedSAM2 video model from Meta's hydra configs and load its checkpoint.

The model is Meta's ``SAM2VideoPredictor`` class (a ``SAM2Base`` with video post-processing settings),
built with the same hydra overrides as ``sam2.build_sam.build_sam2_video_predictor``; it is then driven
by :class:`medsegany.models.sam2_tracker.Sam2Tracker`, never through Meta's ``init_state`` loop.

Config names accepted by :func:`build_sam2_model`:

- a short name: ``sam2.1_hiera_t`` (``_s``, ``_b+``, ``_l``), ``sam2_hiera_t`` ... (SAM 2.0), and
  ``sam2.1_hiera_t512`` = MedSAM2 (SAM 2.1 tiny at 512 px, see :data:`MEDSAM2_512_OVERRIDES`);
- a config inside the sam2 package: ``configs/sam2.1/sam2.1_hiera_t.yaml``;
- the path of a user's YAML file with the same layout (a ``model:`` node with ``_target_`` entries).

Example::

    model = build_sam2_model("sam2.1_hiera_t512", Path("MedSAM2_latest.pt"), device="cpu")
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ModelError


def image_size_overrides(image_size: int) -> tuple[str, ...]:
    """Hydra overrides for a SAM 2 model at ``image_size`` px: its input size and the RoPE tables of the
    memory attention, which cover the (image_size / 16)² feature map (stride 16)."""
    feat = f"[{image_size // 16},{image_size // 16}]"
    return (
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes={feat}",
        f"++model.memory_attention.layer.cross_attention.feat_sizes={feat}",
    )


# MedSAM2 (bowang-lab) is SAM 2.1 tiny trained at 512 px: a 32 x 32 feature map instead of 64 x 64.
MEDSAM2_512_OVERRIDES: tuple[str, ...] = image_size_overrides(512)

# Exactly the overrides of sam2.build_sam.build_sam2_video_predictor (apply_postprocessing=True).
META_VIDEO_OVERRIDES: tuple[str, ...] = (
    "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
    # fall back to the multimask output when the single mask is unstable
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    # the memory of a prompted frame encodes the binary mask the user saw
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    # fill background islands of <= 8 low-res pixels before upsampling
    "++model.fill_hole_area=8",
)

# Our one deliberate difference from Meta's defaults: a correction on an already tracked frame makes it a
# conditioning frame (Meta's option add_all_frames_to_correct_as_cond), so that re-propagating from it
# carries the correction; with Meta's default the next propagation would overwrite it.
CORRECTIONS_AS_CONDITIONING_OVERRIDE = "++model.add_all_frames_to_correct_as_cond=true"

_SHORT_NAME = re.compile(r"^(sam2\.1|sam2)_hiera_(t|s|b\+|l)(512)?$")


def resolve_config(config: str | os.PathLike) -> tuple[str | None, Path | None, tuple[str, ...]]:
    """Map a config name to (packaged config name, user YAML path, extra overrides); exactly one is set.

    >>> resolve_config("sam2.1_hiera_t512")[0]
    'configs/sam2.1/sam2.1_hiera_t.yaml'
    """
    text = os.fspath(config)
    match = _SHORT_NAME.match(text)
    if match:
        family, size, at512 = match.groups()
        name = f"configs/{family}/{family}_hiera_{size}.yaml"
        return name, None, MEDSAM2_512_OVERRIDES if at512 else ()
    if text.startswith("configs/") and text.endswith(".yaml"):
        if not _packaged_config_exists(text):
            raise ModelError(
                f"config {text} is not in the installed sam2 package",
                "use a short name such as sam2.1_hiera_t or the path of your own YAML file",
            )
        return text, None, ()
    path = Path(text).expanduser()
    if path.is_file():
        return None, path, ()
    raise ModelError(
        f"unknown SAM 2 config '{text}'",
        "use sam2.1_hiera_t/_s/_b+/_l, sam2_hiera_t/..., sam2.1_hiera_t512 (MedSAM2) or a YAML file path",
    )


def _packaged_config_exists(name: str) -> bool:
    from importlib import resources

    try:
        return resources.files("sam2").joinpath(name).is_file()
    except ModuleNotFoundError:
        _raise_sam2_missing()
        raise  # unreachable: keeps type checkers happy


def _raise_sam2_missing() -> None:
    raise ModelError(
        "SAM 2 models need Meta's sam2 package, which is not installed",
        "run `pip install 'medsegany[sam2]'` (installs rf-sam-2)",
    )


def _import_sam2() -> None:
    """Import sam2 (which registers its hydra config module), re-registering it if someone cleared hydra."""
    try:
        import sam2  # noqa: F401  (import side effect: hydra knows the 'sam2' config module)
        from hydra.core.global_hydra import GlobalHydra
    except ImportError:
        _raise_sam2_missing()
    if not GlobalHydra.instance().is_initialized():
        from hydra import initialize_config_module

        initialize_config_module("sam2", version_base="1.2")


def _parse_override(override: str) -> tuple[str, Any]:
    """``++a.b=[32,32]`` -> ("a.b", [32, 32]), values parsed as YAML like hydra does for plain values."""
    import yaml

    key, sep, value = override.lstrip("+~").partition("=")
    if not sep or not key:
        raise ModelError(f"config override '{override}' is not of the form key=value", "fix the override")
    return key.strip(), yaml.safe_load(value)


def _compose_config(config: str | os.PathLike, overrides: Sequence[str]) -> Any:
    """The resolved OmegaConf config (video overrides, then the config's own, then the caller's)."""
    from omegaconf import OmegaConf

    _import_sam2()
    name, user_path, config_overrides = resolve_config(config)
    all_overrides = [*META_VIDEO_OVERRIDES, CORRECTIONS_AS_CONDITIONING_OVERRIDE, *config_overrides]
    all_overrides += list(overrides)
    if name is not None:
        from hydra import compose

        cfg = compose(config_name=name, overrides=all_overrides)
    else:
        # A file outside the sam2 package cannot be composed by hydra without re-initialising it (which
        # would unregister sam2's configs), so load it with OmegaConf and apply the overrides by hand.
        try:
            cfg = OmegaConf.load(user_path)
        except Exception as error:  # yaml errors have many types
            raise ModelError(f"cannot read config {user_path}: {error}", "check the YAML file") from None
        for override in all_overrides:
            key, value = _parse_override(override)
            OmegaConf.update(cfg, key, value, force_add=True)
    if "model" not in cfg:
        raise ModelError(f"config {config} has no 'model' section", "use a SAM 2 model config")
    OmegaConf.resolve(cfg)
    return cfg


def instantiate_sam2_model(config: str | os.PathLike, overrides: Sequence[str] = ()) -> Any:
    """The model with freshly initialised (random) weights, on the CPU, in eval mode."""
    from hydra.utils import instantiate

    cfg = _compose_config(config, overrides)
    try:
        model = instantiate(cfg.model, _recursive_=True)
    except Exception as error:  # hydra wraps constructor errors in InstantiationException
        raise ModelError(f"cannot build a model from config {config}: {error}", "check the config") from None
    return model.eval()


def _read_state_dict(checkpoint: Path, state_key: str | None) -> dict:
    import pickle

    import torch

    from .weight_store import is_tensor_mapping

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ModelError(f"checkpoint {checkpoint} does not exist", "check the path or re-install the model")
    try:
        data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names the first object that is not plain data, e.g. "Unsupported global: GLOBAL shutil.copy"
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsafe is None:
            raise ModelError(
                f"cannot read checkpoint {checkpoint} (not a PyTorch file)", "re-download it"
            ) from None
        raise ModelError(
            f"checkpoint {checkpoint} holds more than weights ({unsafe.group(1)}), refused for safety",
            "use the publisher's weights-only file",
        ) from None
    except Exception as error:  # truncated zip, not a torch file at all...
        # an empty file raises EOFError with no text; torch's zip errors go on for 5 sentences
        reason = str(error).split(". ")[0].strip() or type(error).__name__
        raise ModelError(
            f"cannot read checkpoint {checkpoint}: it is truncated or corrupt ({reason})",
            "re-download the file",
        ) from None
    if state_key is not None and is_tensor_mapping(data) and state_key not in data:
        state_key = None  # a plain state dict (a user's model.state_dict()), not wrapped as Meta does
    if state_key is not None:
        if not isinstance(data, dict) or state_key not in data:
            keys = list(data)[:5] if isinstance(data, dict) else type(data).__name__
            raise ModelError(
                f"checkpoint {checkpoint} has no '{state_key}' entry (found {keys})",
                "this is not a SAM 2 checkpoint in Meta's format, or pass the right state_key",
            )
        data = data[state_key]
    if not isinstance(data, dict):
        raise ModelError(f"checkpoint {checkpoint} does not hold a state dict", "use a SAM 2 checkpoint")
    return data


def _describe_keys(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:3])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > 3 else ''})"


def build_sam2_model(
    config: str | os.PathLike,
    checkpoint: Path | None,
    device: str = "cpu",
    overrides: Sequence[str] = (),
    state_key: str | None = "model",
) -> Any:
    """Build Meta's SAM2VideoPredictor from a config, load a checkpoint strictly, move it to ``device``.

    ``checkpoint=None`` keeps the random initial weights. ``state_key`` is the entry holding the state dict
    (Meta and MedSAM2 use ``"model"``; None when the file is the state dict itself). A checkpoint whose keys
    or shapes do not match the architecture raises :class:`ModelError` (wrong config for this checkpoint).
    """
    # read the file first: a missing or unsafe checkpoint fails before the 2-3 s of building the model
    state_dict = None if checkpoint is None else _read_state_dict(Path(checkpoint), state_key)
    model = instantiate_sam2_model(config, overrides)
    if state_dict is not None:
        try:
            result = model.load_state_dict(state_dict, strict=False)
        except RuntimeError as error:  # shape mismatches raise even with strict=False
            first = str(error).strip().splitlines()
            detail = next((line.strip() for line in first if "size mismatch" in line), first[0])
            raise ModelError(
                f"checkpoint {checkpoint} does not fit config {config}: {detail}",
                "pick the config that matches this checkpoint",
            ) from None
        if result.missing_keys or result.unexpected_keys:
            missing = _describe_keys(result.missing_keys)
            unexpected = _describe_keys(result.unexpected_keys)
            raise ModelError(
                f"checkpoint {checkpoint} does not fit config {config}: "
                f"missing keys {missing}, unexpected keys {unexpected}",
                "pick the config that matches this checkpoint (wrong model size or family)",
            )
    return model.to(device).eval()


def save_random_checkpoint(
    config: str | os.PathLike, path: Path, seed: int = 0, overrides: Sequence[str] = ()
) -> Path:
    """Save the real architecture with random weights (``torch.manual_seed(seed)``) as Meta does.

    The file is ``{"model": state_dict}``, written atomically; tests load it through
    :func:`build_sam2_model` exactly like a downloaded checkpoint.
    """
    import torch

    torch.manual_seed(seed)
    model = instantiate_sam2_model(config, overrides)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save({"model": model.state_dict()}, temp_name)
        os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.remove(temp_name)
    return path
