"""Load a model by catalog id (or a user's checkpoint and config) into what the session drives.

Two kinds of model come back from :func:`load_model`:

- a 2D :class:`~medsegany.models.base.SliceModel` (``litemedsam``, ``medsam_vit_b``, ``sam_vit_b/l/h``),
  propagated slice by slice with :mod:`medsegany.propagation`;
- a :class:`Sam2VideoModel` (SAM 2 / 2.1, MedSAM2), tracked through the slices with its memory by
  :class:`~medsegany.models.sam2_tracker.Sam2Tracker`.

Weights come from the weight store (:func:`~medsegany.models.weight_store.resolve_checkpoint`, SHA-256
checked when they arrived); a missing model raises :class:`~medsegany.errors.ModelError` naming the exact
``medsegany models download ID`` / ``import`` command. A user's own file is ``checkpoint=FILE`` with
``config=NAME``: a SAM 2 config (``sam2.1_hiera_t``, MedSAM2's ``sam2.1_hiera_t512``, a YAML path) or a
SAM-family 2D architecture (``vit_b``, ``vit_l``, ``vit_h`` with SAM's preprocessing, ``medsam_vit_b``
with MedSAM's).

Example::

    >>> model = load_model("medsam2_latest", device="auto")            # doctest: +SKIP
    >>> model = load_model(None, checkpoint="mine.pt", config="sam2.1_hiera_t512")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .base import SliceModel

#: Config names of the 2D SAM-family architectures -> (segment_anything registry name, preprocessing).
SAM_VIT_CONFIGS: dict[str, tuple[str, str]] = {
    "vit_b": ("vit_b", "sam"),
    "vit_l": ("vit_l", "sam"),
    "vit_h": ("vit_h", "sam"),
    "sam_vit_b": ("vit_b", "sam"),
    "sam_vit_l": ("vit_l", "sam"),
    "sam_vit_h": ("vit_h", "sam"),
    "medsam_vit_b": ("vit_b", "medsam"),
}


def resolve_device(device: str | None) -> str:
    """CUDA when available, then Apple MPS, else CPU (``None``/``"auto"``); an unavailable explicit device
    is a ModelError. The arithmetic is chosen by ``precision`` (see :mod:`medsegany.models.compute`)."""
    from .litemedsam import resolve_device as _resolve

    return _resolve(device)


@dataclass
class Sam2VideoModel:
    """A built SAM 2-family video model (Meta's ``SAM2VideoPredictor``) and what the session needs to know.

    The session sizes each tracker's feature cache from ``Sam2Tracker.feature_bytes_per_frame``.
    """

    model_id: str
    model: Any  # sam2.sam2_video_predictor.SAM2VideoPredictor, eval mode, on ``device``
    device: str
    image_size: int
    checkpoint: Path | None
    family: str = "sam2"
    precision: str = "auto"  # resolved by each tracker for its device (see medsegany.models.compute)

    @property
    def preferred_batch_size(self) -> int:
        """Frames per encoder call its trackers use (the memory plan sizes the encoder's activations)."""
        from .compute import device_type
        from .sam2_tracker import preferred_encoder_batch

        return preferred_encoder_batch(device_type(self.device))

    def new_tracker(self, feature_cache_mb: float = 1024.0) -> Any:
        from .sam2_tracker import Sam2Tracker

        return Sam2Tracker(self.model, feature_cache_mb=feature_cache_mb, precision=self.precision)

    def warm_up(self) -> float | None:
        """On CUDA, track a synthetic object through 40 frames now, while the model loads, and correct it
        once: the tracking step's CUDA graphs (one per memory length: 16 for a first propagation, 2 more
        for the steps after a correction far from the prompt) are recorded here (about 1 s on an H200)
        instead of during the user's first propagation and first correction. Elsewhere nothing happens
        (None)."""
        from .compute import device_type

        if device_type(self.device) != "cuda":
            return None
        return self.track_synthetic(40)

    def track_synthetic(self, num_frames: int) -> float:
        """Seconds to encode ``num_frames`` synthetic frames, track a disc both ways from the middle, then
        correct it 4 frames before the end with a click and track on from there."""
        import time

        import numpy as np

        start = time.perf_counter()
        rows, cols = np.mgrid[:64, :64]
        disc = ((rows - 32) ** 2 + (cols - 32) ** 2 < 14**2).astype(np.uint8) * 200 + 30
        tracker = self.new_tracker(feature_cache_mb=512.0)
        tracker.set_frames(np.repeat(disc[None], max(2, int(num_frames)), axis=0))
        tracker.precompute_features(batch_size=tracker.preferred_batch_size)
        middle = tracker.num_frames // 2
        tracker.add_prompts(1, middle, box_frame_xyxy=np.array([16, 16, 48, 48], np.float32))
        for direction in (+1, -1):
            for _ in tracker.propagate(middle, direction):
                pass
        corrected = max(middle + 1, tracker.num_frames - 4)
        if corrected < tracker.num_frames:
            tracker.add_prompts(
                1, corrected, points_frame_xy=np.array([[32, 32]], np.float32), point_labels=np.array([1])
            )
            for _ in tracker.propagate(corrected, +1):
                pass
        return time.perf_counter() - start


def is_sam2_model(model: Any) -> bool:
    """True for a :class:`Sam2VideoModel` (memory propagation), False for a 2D SliceModel."""
    return getattr(model, "family", None) == "sam2" and hasattr(model, "new_tracker")


def _family_of_config(config: str) -> str:
    if config in SAM_VIT_CONFIGS:
        return "sam"
    return "sam2"  # short names, packaged configs and YAML files are checked by sam2_build


def load_model(
    model_id: str | None = "litemedsam",
    device: str | None = None,
    checkpoint: str | Path | None = None,
    config: str | None = None,
    store: Any | None = None,
    precision: str = "auto",
    compile: str | bool = "auto",
    single_run: bool = False,
) -> SliceModel | Sam2VideoModel:
    """The model ``model_id`` (a catalog id) ready on ``device`` ("auto", "cpu", "cuda", "mps").

    ``checkpoint``: a user's weights file instead of the stored one (with ``config`` when the catalog id
    does not say the architecture, or to override it). ``store``: the WeightStore to look in (default:
    ``$MEDSEGANY_HOME/weights`` or the platform cache). ``precision`` ("auto", "float32", "bfloat16") and
    ``compile`` ("auto", "on", "off"; LiteMedSAM's encoder) are explained in :mod:`medsegany.models.compute`;
    ``single_run``: the model serves one run (``medsegany segment``), which "auto" does not compile for in
    float32 (:func:`~.compute.resolve_compile`).
    """
    from .catalog import get_card
    from .compute import device_type, resolve_compile, resolve_precision

    if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
        raise ModelError(f"checkpoint {checkpoint} does not exist", "check the path of --checkpoint")
    card = None
    if model_id is not None and not (config is not None and model_id == "litemedsam" and checkpoint):
        card = get_card(model_id)
        if card.status == "unsupported":
            raise ModelError(
                f"{card.id} is not supported ({card.status_reason})",
                "pick a supported model from `medsegany models list`",
            )
    if config is not None and checkpoint is None:
        raise ModelError(
            f"--config {config} was given without --checkpoint",
            "give your weights file with --checkpoint FILE, or drop --config",
        )
    family = _family_of_config(config) if config is not None else (card.family if card else None)
    if family is None:
        raise ModelError(
            "no model was named", "give a catalog id (--model) or --checkpoint FILE --config NAME"
        )
    resolved_device = resolve_device(device)
    # a bad choice fails before the weights are read
    resolved_precision = resolve_precision(resolved_device, precision)
    resolve_compile(resolved_device, compile, precision=resolved_precision)
    if device_type(resolved_device) == "cpu":
        from ..cpu_tuning import tune_cpu_once

        tune_cpu_once()  # threads per physical core, denormals flushed (what benchmarks/speed.py measures)

    if family == "litemedsam":
        from .litemedsam import LiteMedSamModel

        return LiteMedSamModel(
            checkpoint=checkpoint,
            device=resolved_device,
            precision=precision,
            compile=compile,
            single_run=single_run,
        )

    path = Path(checkpoint).expanduser() if checkpoint is not None else _stored_checkpoint(card, store)
    if family == "sam":
        from .sam_vit import SamVitModel

        if config is not None:
            registry_name, preprocessing = SAM_VIT_CONFIGS[config]
            if (
                card is not None
                and card.family == "sam"
                and card.id.startswith("medsam")
                and config.startswith("vit")
            ):
                preprocessing = "medsam"  # --model medsam_vit_b --config vit_b: MedSAM's own preprocessing
            model_name = card.id if card is not None and card.family == "sam" else config
            state_key = None
        else:
            assert card is not None
            registry_name = card.sam_registry or "vit_b"
            preprocessing = "medsam" if card.id.startswith("medsam") else "sam"
            model_name, state_key = card.id, card.state_dict_key
        return SamVitModel.from_checkpoint(
            path,
            registry_name,
            preprocessing,
            device=resolved_device,
            model_id=model_name,
            state_key=state_key,
            precision=precision,
        )

    from .sam2_build import build_sam2_model, resolve_config

    if config is not None:
        resolve_config(config)  # an unknown config name fails before the checkpoint is read
        sam2_config, overrides = config, ()
        model_name = card.id if card is not None and card.family == "sam2" else Path(str(config)).stem
    else:
        assert card is not None
        sam2_config, overrides, model_name = card.sam2_config, card.sam2_overrides, card.id
    state_key = card.state_dict_key if (card is not None and card.family == "sam2") else "model"
    model = build_sam2_model(
        sam2_config, path, device=resolved_device, overrides=overrides, state_key=state_key
    )
    return Sam2VideoModel(
        model_name, model, resolved_device, int(model.image_size), path, precision=precision
    )


def _stored_checkpoint(card: Any, store: Any | None) -> Path:
    from .weight_store import resolve_checkpoint

    return resolve_checkpoint(card.id, store=store)


def load_slice_model(
    model_id: str, device: str | None = None, checkpoint: str | Path | None = None
) -> SliceModel:
    """A 2D slice-wise model (kept for callers of the first version); SAM 2 ids raise ModelError."""
    model = load_model(model_id, device=device, checkpoint=checkpoint)
    if is_sam2_model(model):
        raise ModelError(f"{model_id} is a SAM 2-family model, not a 2D slice model", "use load_model")
    return model
