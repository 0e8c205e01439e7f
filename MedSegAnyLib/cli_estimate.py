"""``medsegany segment --estimate`` (and ``batch --estimate``): the memory a job needs and the plan that
fits, told before anything runs; also the plan a real run uses (:func:`job_estimate`).

For a catalog model not downloaded yet, the estimate comes from its card (:class:`CatalogModel`), so a
user can ask before a download whether the model fits the machine.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, TextIO


@dataclass(frozen=True)
class CatalogModel:
    """A catalog model not downloaded yet, for ``--estimate``: its memory profile from its card, and the
    device and precision it would run with."""

    profile: Any  # medsegany.memory_estimate.ModelMemoryProfile
    device: str
    precision: str


def estimate_model(args: argparse.Namespace) -> Any:
    """What ``--estimate`` sizes: the loaded model (its weights counted exactly), or, for a catalog model
    not downloaded yet, its card's profile on the device it would use (so a user can ask before a
    download whether a model fits)."""
    if args.model is not None and args.checkpoint is None and args.config is None:
        from .models.catalog import get_card
        from .models.compute import resolve_precision
        from .models.registry import resolve_device
        from .models.weight_store import WeightStore

        card = get_card(args.model)  # an unknown id fails here, as when loading
        if card.status == "supported" and not WeightStore().is_present(card):
            from .memory_estimate import profile_of_card

            device = resolve_device(args.device)
            resolve_precision(device, args.precision)  # a bad choice fails as when loading
            return CatalogModel(profile_of_card(card), device, args.precision)
    from .cli import load_cli_model

    return load_cli_model(args)


def job_estimate(model: Any, volume: Any, objects: list[Any]) -> Any:
    """The memory plan of propagating ``objects`` through ``volume`` along the first prompt's axis
    (``model``: loaded, or a :class:`CatalogModel`)."""
    from .memory_estimate import plan_for_volume

    first = objects[0].prompts[0]
    unloaded = isinstance(model, CatalogModel)
    return plan_for_volume(
        model.profile if unloaded else model,
        volume.voxels_kji.shape,
        first.axis,
        len(objects),
        first.slice_index,
        str(getattr(model, "device", "cpu")),
        volume_bytes=volume.voxels_kji.nbytes,
        precision=model.precision if unloaded else None,
    )


def estimate_job(job: Any, model: Any, stdout: TextIO) -> None:
    """``--estimate``: print what the job's run would need, by part, and its plan; ModelError (exit 1)
    after printing when it cannot fit. Nothing runs and nothing is written."""
    from .memory_estimate import describe_parts, require_fit

    estimate = job_estimate(model, job.volume, job.objects)
    print(f"{job.args.image}: {estimate.message}", file=stdout)
    for line in describe_parts(estimate):
        print(f"  {line}", file=stdout)
    if isinstance(model, CatalogModel):
        print(
            f"  (not downloaded: weights counted from the catalog's sizes, {model.profile.parameters:,} "
            "parameters)",
            file=stdout,
        )
    stdout.flush()
    require_fit(estimate)
