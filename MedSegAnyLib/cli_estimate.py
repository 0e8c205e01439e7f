"""``medsegany segment --estimate`` (and ``batch --estimate``): the memory a job needs and the plan that
fits, told before anything runs; also the plan a real run uses (:func:`job_estimate`).

For a catalog model not downloaded yet, the estimate comes from its card (:class:`CatalogModel`), so a
user can ask before a download whether the model fits the machine.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any, TextIO


@dataclass(frozen=True)
class CatalogModel:
    """A catalog model not downloaded yet, for ``--estimate``: its memory profile from its card, and the
    device and precision it would run with."""

    profile: Any  # medsegany.memory_estimate.ModelMemoryProfile
    device: str
    precision: str


def estimate_model(args: argparse.Namespace, single_run: bool = False) -> Any:
    """What ``--estimate`` sizes: the loaded model (its weights counted exactly), or, for a catalog model
    not downloaded yet, its card's profile on the device it would use (so a user can ask before a
    download whether a model fits). ``single_run``: as for :func:`medsegany.cli.load_cli_model` (a
    compiled encoder's memory differs from the eager one's)."""
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

    return load_cli_model(args, single_run)


def job_estimate(
    model: Any,
    volume: Any,
    objects: list[Any],
    volume_bytes: int | None = None,
    crops_slab: bool = True,
    direction: str = "both",
) -> Any:
    """The memory plan of propagating ``objects`` through ``volume`` along the first prompt's axis
    (``model``: loaded, or a :class:`CatalogModel`; ``volume_bytes``: the user's voxels held, default
    ``volume``'s; ``crops_slab`` and ``direction`` as :func:`medsegany.memory_estimate.plan_memory`)."""
    from .memory_estimate import plan_for_volume

    first = next(entry.prompts[0] for entry in objects if entry.prompts)
    unloaded = isinstance(model, CatalogModel)
    return plan_for_volume(
        model.profile if unloaded else model,
        volume.voxels_kji.shape,
        first.axis,
        len(objects),
        first.slice_index,
        str(getattr(model, "device", "cpu")),
        volume_bytes=volume.voxels_kji.nbytes if volume_bytes is None else volume_bytes,
        precision=model.precision if unloaded else None,
        crops_slab=crops_slab,
        direction=direction,
    )


@dataclass(frozen=True)
class RunPlan:
    """What one ``segment`` run propagates: ``volume`` (the user's, or a :class:`~medsegany.slab.Slab`
    of it) and ``objects`` with their prompts in its indices; ``slice_range`` for the session when a range
    cannot crop (prompts on several axes); the memory ``estimate`` (its slab, if any, in the user's
    volume's indices); ``prompts_left_out``: prompts outside the slab; ``refusal``: why the job cannot
    run as planned (raised after ``--estimate`` has printed the estimate, before a run)."""

    volume: Any
    objects: list[Any]
    slab: Any
    slice_range: tuple[int, int] | None
    estimate: Any
    prompts_left_out: int = 0
    refusal: Exception | None = None


def plan_run(
    model: Any,
    volume: Any,
    objects: list[Any],
    slice_range: tuple[int, int] | None,
    direction: str = "both",
) -> RunPlan:
    """The memory plan of one job and what it segments (see :mod:`medsegany.slab`).

    When every prompt lies on one axis, ``--slice-range`` and a plan's slab crop the volume, so the
    session holds only those slices; else the range only limits the propagation, and a plan that needs a
    slab is refused (``refusal``: a slab along one axis would leave the objects prompted on another
    unsegmented).
    """
    from .slab import Slab, objects_in_range, objects_in_slab, one_axis
    from .slices import clip_slice_range, frame_count

    axis = one_axis(objects)
    slab = None
    if slice_range is not None and axis is not None:
        low, high = clip_slice_range(slice_range, frame_count(volume.voxels_kji.shape, axis))
        slab, slice_range = Slab(axis, low, high), None

    def cut(slab: Any) -> tuple[Any, list[Any], int]:  # (the slab's volume, its objects, prompts left out)
        return (volume, objects, 0) if slab is None else (slab.crop(volume), *objects_in_slab(objects, slab))

    run_volume, run_objects, left_out = cut(slab)
    if slice_range is not None:  # several axes: prompts outside the range were segmented there, and told
        # nothing (an I=25 prompt under a range 8..10 gave its slice; on one axis it is left out, as here)
        run_objects, left_out = objects_in_range(objects, slice_range)
    estimate = job_estimate(
        model, run_volume, run_objects, volume.voxels_kji.nbytes, axis is not None, direction
    )
    inner = estimate.plan.slab
    if inner is not None and axis is not None:  # the plan's slab, inside the range, in the volume's indices
        offset = 0 if slab is None else slab.first
        slab = Slab(axis, offset + inner[0], offset + inner[1])
        run_volume, run_objects, left_out = cut(slab)
        estimate = replace(estimate, plan=replace(estimate.plan, slab=(slab.first, slab.last)))
    refusal = None
    if inner is not None and axis is None:  # a slab along one prompt's axis cuts the other views' objects
        from .errors import ModelError

        refusal = ModelError(
            f"{estimate.message.split('; plan:')[0]}: only a slab of slices fits, and the prompts lie in "
            "several views (a slab along one view's axis cuts the others' objects)",
            "segment each view in its own run (one prompt file per view), or free memory",
        )
    return RunPlan(run_volume, run_objects, slab, slice_range, estimate, left_out, refusal)


def estimate_job(job: Any, model: Any, stdout: TextIO) -> None:
    """``--estimate``: print what the job's run would need, by part, and its plan; ModelError (exit 1)
    after printing when it cannot fit. Nothing runs and nothing is written."""
    from .memory_estimate import describe_parts, require_fit

    run = plan_run(model, job.volume, job.objects, job.slice_range, job.args.direction)
    estimate = run.estimate
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
    if run.refusal is not None:
        raise run.refusal
