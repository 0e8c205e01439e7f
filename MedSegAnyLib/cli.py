"""The ``medsegany`` command line: ``segment`` one volume, ``batch`` many, and manage ``models``.

Every error a user can cause ends with one line ``medsegany: error: <problem>. <fix>.`` and exit code 1;
Ctrl-C exits 130; an output is written whole or not at all (existing ones are left as they were until
then), and the message names any written before the interruption.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .errors import MedSegAnyError, PromptError

EXIT_OK, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 130


class SliceProgress:
    """A one-line progress display of propagated slices on stderr (redrawn in place on a terminal): the
    object being propagated, how many of its slices are done, the last one.

    Each object counts its own slices once: the count ran over all objects, and in exclusive mode (the
    default of --mask-prompts) the slices where an object gave or took pixels from another and the
    slices cleared beyond a stop counted too, under the name of the other object: 2 labels on a 5-slice
    volume read "label_1: 10 slices, at K=4" (the summary then said 3 and 5 slices).
    """

    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.count = 0  # slices propagated, all objects
        self._slices: dict[str, set[str]] = {}  # object name -> its slices propagated
        self._last = 0.0

    def update(self, object_name: str, slice_label: str) -> None:
        """One slice of ``object_name`` propagated (a slice given again counts once)."""
        slices = self._slices.setdefault(object_name, set())
        if slice_label in slices:
            return
        slices.add(slice_label)
        self.count += 1
        if not self.enabled:
            return
        now = time.monotonic()
        count = f"{len(slices)} slice" + ("s" if len(slices) > 1 else "")
        line = f"{object_name}: {count}, at {slice_label}, {now - self.started:5.1f} s"
        if self.interactive:
            if now - self._last >= 0.1:
                self.stream.write("\r" + line.ljust(70))
                self.stream.flush()
                self._last = now
        elif len(slices) % 10 == 1:
            self.stream.write(line + "\n")

    def close(self) -> None:
        if self.enabled and self.interactive:
            self.stream.write("\r" + " " * 70 + "\r")
            self.stream.flush()


def _parse_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in text.split(","))
    except ValueError:
        raise PromptError(
            f"--slice-range {text!r} is not two integers LO,HI", "write it like 10,40"
        ) from None
    if low > high:
        raise PromptError(f"--slice-range {text!r} has LO > HI", "write the smaller index first")
    return low, high


#: The options that choose the model: one set for ``segment`` and for ``batch`` (which refuses them on a
#: job's line: every job uses the batch's model).
MODEL_OPTIONS = ("--model", "--checkpoint", "--config", "--device", "--precision", "--compile")
#: What running out of host memory says, on ``segment`` and for a job of ``batch``.
OUT_OF_MEMORY_MESSAGE = "out of memory. Crop the volume, use --slice-range, or free memory"


def add_model_options(parser: Any) -> None:
    """:data:`MODEL_OPTIONS` on ``parser`` (a parser or an argument group)."""
    parser.add_argument(
        "--model",
        default=None,
        help="catalog model id: litemedsam (default, bundled), "
        "medsam2_latest, sam2.1_hiera_tiny ... sam2.1_hiera_large, sam2_hiera_*, medsam_vit_b, "
        "sam_vit_b/l/h (see `medsegany models list`)",
    )
    parser.add_argument(
        "--checkpoint", help="your own weights file (for --model's architecture, or --config's)"
    )
    parser.add_argument(
        "--config",
        help="architecture of --checkpoint: sam2.1_hiera_t (_s, _b+, _l), "
        "sam2_hiera_t ..., sam2.1_hiera_t512 (MedSAM2), a SAM 2 YAML file, vit_b/vit_l/vit_h "
        "(SAM) or medsam_vit_b",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    parser.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="auto: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), else float32",
    )
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="compile LiteMedSAM's encoder (auto: on a CPU with a C++ compiler; 20-40 s the first time, "
        "then ~5 s a run from inductor's cache; 1.3x in bf16, 1.05-1.25x in float32; a float32 `segment` "
        "skips it)",
    )


#: ``--frame-pixels`` choices: what a 2D model whose resize keeps the aspect (LiteMedSAM, SAM) sees of a frame
#: whose pixels are not square (a coronal or sagittal slice of thick slices; medsegany.frame_aspect).
FRAME_PIXELS = ("square", "as-given")


def add_frame_pixels_option(parser: Any, default_text: str = "square") -> None:
    """``--frame-pixels`` on ``parser`` (default None: ``segment`` reads it as square, a batch line as the
    batch's choice)."""
    parser.add_argument(
        "--frame-pixels",
        choices=FRAME_PIXELS,
        default=None,
        help="LiteMedSAM/SAM on a coronal or sagittal slice of thick slices: resample its pixels to "
        "square ones as the model was trained (square), or give them as they are (as-given; default: "
        f"{default_text})",
    )


def square_pixels(args: argparse.Namespace) -> bool:
    """Whether ``args`` leave frames with non-square pixels resampled to square ones (the default)."""
    return getattr(args, "frame_pixels", None) != "as-given"


def add_segment_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "segment",
        help="segment one volume from a box and/or points on one slice",
        description="Segment an object from a box and/or points on one slice and propagate it through the "
        "volume. Coordinates are voxel indices (IJK, as in Slicer's data probe) or RAS millimetres.",
    )
    parser.add_argument("image", help="NIfTI, NRRD/NHDR, MHA/MHD file or DICOM series folder")
    prompt = parser.add_argument_group("prompts (one slice; or --prompts FILE for several objects)")
    prompt.add_argument("--box-ijk", metavar="I0,J0,K0,I1,J1,K1", help="box corners; they share one index")
    prompt.add_argument("--box-ras", metavar="X0,Y0,Z0,X1,Y1,Z1", help="box corners in RAS mm")
    prompt.add_argument(
        "--point-ijk",
        metavar="I,J,K[:-]",
        action="append",
        default=[],
        help="a point (':-' negative); repeatable",
    )
    prompt.add_argument(
        "--point-ras",
        metavar="X,Y,Z[:-]",
        action="append",
        default=[],
        help="a point in RAS mm (':-' negative); repeatable",
    )
    prompt.add_argument(
        "--markups",
        metavar="FILE.mrk.json[:-]",
        action="append",
        default=[],
        help="a 3D Slicer markups file: an ROI drawn on a slice is the box, a point list's points are "
        "clicks (':-' after the name: negative); repeatable",
    )
    prompt.add_argument(
        "--mask-prompts",
        metavar="LABELS",
        help="a labelmap on the image's grid with each object drawn on a few slices: every label is an "
        "object (keeping its value), every slice it covers along --axis (default K) its mask prompt; the "
        "slices between and beyond are segmented",
    )
    prompt.add_argument(
        "--axis", choices=["I", "J", "K"], help="slice axis of a points-only prompt, or of --mask-prompts"
    )
    prompt.add_argument("--prompts", metavar="FILE.json", help='{"objects": [{"name":…, "boxes_ijk": […]}]}')
    prompt.add_argument("--name", default=None, help="segment name (single-object prompts)")
    prompt.add_argument(
        "--structure",
        metavar="NAME",
        default=None,
        help="what the object is (liver, kidney_left, IVC, tumour...): standard name, colour and SNOMED CT "
        "terminology in .seg.nrrd (single-object prompts)",
    )
    intensity = parser.add_argument_group("intensity (applied to a copy)")
    exclusive = intensity.add_mutually_exclusive_group()
    exclusive.add_argument("--window", metavar="LO,HI", help="explicit intensity window")
    exclusive.add_argument(
        "--preset",
        default="auto",
        help="auto, ct-soft-tissue, ct-lung, ct-bone, ct-brain, "
        "ct-liver, ct-mediastinum, percentile (default: auto)",
    )
    run = parser.add_argument_group("model and propagation")
    add_model_options(run)
    run.add_argument(
        "--overlap",
        choices=["independent", "exclusive"],
        default=None,
        help="several objects: may overlap (independent, the default) or not (exclusive: highest logit wins; "
        "the default with --mask-prompts, whose labels cannot overlap and whose drawn slices must stay)",
    )
    run.add_argument("--frame", type=int, default=None, help="time point of a 4D image")
    run.add_argument(
        "--series",
        metavar="UID",
        help="of a DICOM folder holding several series: the one to segment, by its Series Instance UID "
        "(or a part of it only that one holds; the note on a folder's series lists them); default: the "
        "largest",
    )
    run.add_argument("--direction", choices=["both", "forward", "backward"], default="both")
    run.add_argument(
        "--slice-range",
        metavar="LO,HI",
        help="segment only these slice indices of the prompts' axis (with every prompt on one axis, "
        "only they are held in memory)",
    )
    run.add_argument("--naive", action="store_true", help="the reference scheme (bbox+3 px, stop when empty)")
    add_frame_pixels_option(run)
    run.add_argument(
        "--estimate",
        action="store_true",
        help="print the memory this run needs on the device, by part, and the plan that fits, then stop: "
        "the model loads, nothing runs, nothing is written (-o not needed); exit code 1 if it cannot fit",
    )
    output = parser.add_argument_group("outputs")
    output.add_argument(
        "-o",
        "--output",
        action="append",
        default=None,
        metavar="OUT",
        help=".nii.gz, .nii, .nrrd, .mha, .mhd or .seg.nrrd (repeatable; required unless --estimate)",
    )
    output.add_argument(
        "--preview", metavar="PNG", help="write a PNG preview of the prompted and propagated slices"
    )
    output.add_argument("--overwrite", action="store_true", help="replace existing output files")
    output.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress display and no notes (errors and the summary line are still printed)",
    )
    parser.set_defaults(func=run_segment)
    return parser


def check_prompt_options(args: argparse.Namespace) -> None:
    """PromptError for prompt options that cannot go together; needs no file, so a batch checks every line
    with it before the model loads."""
    single = args.box_ijk or args.box_ras or args.point_ijk or args.point_ras or args.markups
    if args.prompts:
        if args.structure is not None:
            raise PromptError(
                "--structure was given with --prompts",
                "use --structure with --box/--point prompts (one object)",
            )
        if single or args.mask_prompts:
            raise PromptError(
                "--prompts was given with --box/--point/--markups/--mask-prompts options",
                "put every prompt in the file",
            )
    elif args.mask_prompts and single:
        raise PromptError(
            "--mask-prompts was given with --box/--point/--markups options", "give one kind of prompt"
        )


def _single_object_prompts(args: argparse.Namespace, volume):
    from .prompt_file import ObjectPrompts, parse_box_arg, parse_point_arg
    from .prompts import box_ijk_from_ras, make_slice_prompts, point_ijk_from_ras

    if args.box_ijk and args.box_ras:
        raise PromptError("both --box-ijk and --box-ras were given", "give one box")
    box_ijk = None
    if args.box_ijk:
        box_ijk = parse_box_arg(args.box_ijk)
    elif args.box_ras:
        values = parse_box_arg(args.box_ras)
        box_ijk = box_ijk_from_ras(volume, values[:3], values[3:])
    # each point's name in messages: make_slice_prompts numbers them over all options and files ("point 3"
    # was the second point of the second --markups file)
    points, labels, names = [], [], []
    for text in args.point_ijk:
        point, label = parse_point_arg(text)
        points.append(point)
        labels.append(label)
        names.append(f"--point-ijk {text}")
    for text in args.point_ras:
        point, label = parse_point_arg(text)
        points.append(point_ijk_from_ras(volume, point))
        labels.append(label)
        names.append(f"--point-ras {text}")
    for text in args.markups:
        box_ijk = _add_markups_file(text, volume, box_ijk, points, labels, names)
    if box_ijk is None and not points:
        problem = (
            "the markups files given hold no placed point or ROI" if args.markups else "no prompt was given"
        )
        raise PromptError(problem, "add --box-ijk/--box-ras, --point-ijk/--point-ras, --markups or --prompts")
    axis = None if args.axis is None else "IJK".index(args.axis)
    try:
        prompts = make_slice_prompts(
            volume, box_ijk=box_ijk, points_ijk=points, point_labels=labels, axis=axis
        )
    except PromptError as error:
        problem = re.sub(r"\bpoint (\d+)", lambda match: names[int(match[1])], error.problem)
        raise PromptError(problem, error.fix) from None
    return [ObjectPrompts(args.name or "segment_1", (prompts,))]


def _add_markups_file(text: str, volume, box_ijk, points: list, labels: list, names: list):
    """Add a ``--markups FILE[:-]``'s points to ``points``/``labels`` (their names in messages to
    ``names``); the box, its ROI's or ``box_ijk``."""
    from .markups_file import read_markups_file
    from .prompts import box_ijk_from_corners_ras, point_ijk_from_ras

    negative = text.endswith(":-")
    content = read_markups_file(text[:-2] if negative else text)
    if content.rois_corners_ras:
        if negative:
            raise PromptError(
                f"{content.path} holds an ROI and was given as negative (':-')", "drop the ':-'"
            )
        if box_ijk is not None or len(content.rois_corners_ras) > 1:
            raise PromptError("more than one box was given (ROIs count as boxes)", "give one box per object")
        box_ijk = box_ijk_from_corners_ras(volume, content.rois_corners_ras[0], f"the ROI of {content.path}")
    for point_ras, name in zip(content.points_ras, content.point_names, strict=True):
        points.append(point_ijk_from_ras(volume, point_ras))
        labels.append(0 if negative else 1)
        names.append(f"{content.path} {name}")
    return box_ijk


def output_paths(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """(outputs, previews) a ``segment`` command writes (``~`` expanded, as the writers do)."""
    outputs = [Path(path).expanduser() for path in args.output or []]
    return outputs, [Path(args.preview).expanduser()] if args.preview else []


def _check_outputs(outputs: list[Path], previews: list[Path], overwrite: bool) -> None:
    """Every name refused before any work that the writers would refuse after it (then the outputs
    written before the bad one stayed, and a rerun with the name mended met "already exists")."""
    from .errors import OutputError
    from .exporters import companion_files, output_suffix
    from .preview import checked_preview_path

    for path in outputs:
        output_suffix(path)
    for path in previews:
        checked_preview_path(path)
    for path in outputs + previews:
        if path.is_dir():
            raise OutputError(f"{path} is a folder", "give a file name inside it")
        written = [path, *(companion_files(path) if path in outputs else [])]
        existing = next((file for file in written if file.exists()), None)
        if existing is not None and not overwrite:
            raise OutputError(f"{existing} already exists", "pass --overwrite or choose another output name")
        if not path.parent.exists():
            raise OutputError(
                f"folder {path.parent} does not exist", "create it or choose another output path"
            )


@dataclass
class SegmentJob:
    """One volume to segment, read and checked (everything a ``segment`` command needs but the model)."""

    args: argparse.Namespace
    outputs: list[Path]
    previews: list[Path]
    volume: Any
    objects: list[Any]
    structure: Any
    slice_range: tuple[int, int] | None
    intensity: Any
    settings: Any


def run_segment(args: argparse.Namespace, stderr: TextIO | None = None) -> int:
    stderr = stderr or sys.stderr
    started = time.monotonic()
    job = prepare_job(args, stderr)  # the inputs fail before the model loads (a compile takes 5-40 s)
    if args.estimate:
        from .cli_estimate import estimate_job, estimate_model

        estimate_job(job, estimate_model(args, single_run=True), sys.stdout)
    else:
        segment_job(job, load_cli_model(args, single_run=True), stderr, started)
    return EXIT_OK


def prepare_job(args: argparse.Namespace, stderr: TextIO) -> SegmentJob:
    """Check the outputs, read the volume and the prompts of one ``segment`` command."""
    from .intensity import parse_window
    from .prompt_file import load_prompt_file
    from .propagation import PropagationSettings
    from .terminology import resolve_structure
    from .volume import read_volume, read_volume_header

    outputs, previews = output_paths(args)
    if not args.estimate:  # an estimate writes nothing
        if not outputs:  # a preview alone is not a segmentation
            from .errors import OutputError

            raise OutputError("no output file was given", "add -o OUT.nii.gz (or .seg.nrrd, .nrrd, .mha)")
        _check_outputs(outputs, previews, args.overwrite)
    # an estimate needs sizes, not voxels: the header alone (a 512 x 512 x 1000 CT: 2 s less a volume)
    read = read_volume_header if args.estimate else read_volume
    volume = read(args.image, frame=args.frame, series=args.series)
    if not args.estimate:
        from .exporters import check_output_geometry

        for path in outputs:  # a format that cannot hold the volume's geometry fails before the run
            check_output_geometry(path, volume)
    if volume.metadata.get("dicom_series_count", 1) > 1 and not args.quiet:  # a note: -q hides it
        _note_other_series(args.image, volume.metadata, stderr)
    structure = resolve_structure(args.structure)  # an unknown name fails before any work
    check_prompt_options(args)
    if args.prompts:
        objects = load_prompt_file(args.prompts, volume)
    elif args.mask_prompts:
        from .mask_prompts import load_mask_prompts

        axis = "IJK".index(args.axis) if args.axis else 2
        objects = load_mask_prompts(args.mask_prompts, volume, axis, args.name)
        if structure is not None and len(objects) > 1:  # every object would take the structure's name
            raise PromptError(
                f"--structure was given, but {args.mask_prompts} holds {len(objects)} labels",
                "drop --structure (each label is named label_<value>) or give a labelmap of one label",
            )
    else:
        objects = _single_object_prompts(args, volume)
    return SegmentJob(
        args=args,
        outputs=outputs,
        previews=previews,
        volume=volume,
        objects=objects,
        structure=structure,
        slice_range=_parse_range(args.slice_range) if args.slice_range else None,
        intensity=parse_window(args.window) if args.window else args.preset,
        settings=PropagationSettings.naive() if args.naive else PropagationSettings(),
    )


def load_cli_model(args: argparse.Namespace, single_run: bool = False) -> Any:
    """The model the command's options name (LiteMedSAM when none), on the chosen device; ``single_run``
    for ``segment`` (one run: "auto" does not compile a float32 encoder for it, see ``resolve_compile``)."""
    from .models.registry import load_model

    model_id = args.model if args.model is not None else (None if args.config else "litemedsam")
    return load_model(
        model_id,
        device=args.device,
        checkpoint=args.checkpoint,
        config=args.config,
        precision=args.precision,
        compile=args.compile,
        single_run=single_run,
    )


def segment_job(job: SegmentJob, model: Any, stderr: TextIO, started: float) -> None:
    """Propagate one prepared job with ``model``, write its outputs and print its summary line(s)."""
    import numpy as np

    from .exporters import write_labelmap
    from .intensity import window_for
    from .out_of_memory import RanOutOfMemoryError
    from .prompts import MaskPrompt
    from .session import SegmentationSession
    from .terminology import terminology_entry_string

    args, volume, structure = job.args, job.volume, job.structure
    # the whole volume's window, also for a slab: an automatic window from the slab's voxels alone would
    # differ, and so would the masks
    intensity = window_for(volume, job.intensity)
    run = _run_plan(model, job, stderr, args.quiet)
    encoder = getattr(model, "encoder", None)
    compiles_now = getattr(encoder, "active", False) and not getattr(encoder.report, "compiled", False)
    if compiles_now and not args.quiet:  # (in a batch, only the first volume's run compiles)
        print(
            "compiling the image encoder for this CPU (about 5 s from inductor's cache, 20-40 s the first "
            "time; --compile off skips it)",
            file=stderr,
            flush=True,
        )
    session = SegmentationSession(
        run.volume,
        model,
        intensity=intensity,
        settings=job.settings,
        overlap=overlap_mode(args),
        # a slab's SAM 2 memory is told the whole volume's slices: the slab then gets its numbers exactly
        whole_shape_ijk=volume.shape_ijk,
        square_pixels=square_pixels(args),
        **run.estimate.plan.session_options,
    )
    progress = SliceProgress(stderr, enabled=not args.quiet)
    try:
        prompted = []
        for entry in run.objects:
            if structure is not None and args.name is None:
                entry = replace(entry, name=structure.name)
            object_id = session.add_object(entry.name, structure.color_rgb_float if structure else None)
            for prompts in entry.prompts:
                if isinstance(prompts, MaskPrompt):
                    session.add_mask(object_id, prompts.axis, prompts.slice_index, prompts.mask_frame)
                else:
                    session.add_prompts(object_id, prompts)
            if entry.prompts:  # an object whose prompts all lie outside the slab keeps its label, empty
                prompted.append(object_id)
        for result in session.propagate(prompted, direction=args.direction, slice_range=run.slice_range):
            if result.source != "propagated":  # a slice cleared, or another object's given or taken pixels
                continue
            name = session.objects[result.object_id].name
            progress.update(name, f"{'IJK'[result.axis]}={_volume_index(run, result.slice_index)}")
    except RanOutOfMemoryError as error:  # the session kept its slices, but this job writes none of them
        raise error.with_outcome("nothing was written") from None
    finally:
        progress.close()

    labelmap_kji = session.labelmap_kji()
    # independent objects may overlap, and a labelmap holds one value a voxel: what each one lost there
    hidden = {
        object_id: int(np.count_nonzero(labelmap_kji[obj.mask_kji] != object_id))
        for object_id, obj in session.objects.items()
    }
    segments = session.segments()
    labelmap_kji, segments = _with_label_values(labelmap_kji, segments, run.objects)
    if run.slab is not None:
        labelmap_kji = run.slab.paste(labelmap_kji, volume.voxels_kji.shape)
    if structure is not None:
        segments = [replace(info, terminology=terminology_entry_string(structure)) for info in segments]
    written: list[Path] = []
    try:
        for path in job.outputs:
            write_labelmap(labelmap_kji, volume, path, segments=segments)
            written.append(path)
        if job.previews:
            prompted_objects = [entry for entry in run.objects if entry.prompts]
            _write_preview(session, prompted_objects, job.previews[0], run.slab)
    except KeyboardInterrupt:
        raise InterruptedWhileWriting(written) from None
    seconds = time.monotonic() - started
    for object_id, obj in session.objects.items():
        voxels = int(obj.mask_kji.sum())
        if hidden[object_id] and not args.quiet:
            print(
                f"medsegany: note: {hidden[object_id]} of {obj.name}'s {voxels} voxels are under objects "
                "listed after it in the labelmap (later objects win); list it last, or use --overlap "
                "exclusive",
                file=stderr,
            )
        if not args.quiet:
            _note_empty_prompted_slices(session, obj, run, stderr)
        present = sorted(index for index, source in obj.slice_sources.items() if source)
        filled = [_volume_index(run, index) for index in present if _slice_has_voxels(obj, index)]
        extent = f"{'IJK'[obj.axis]} {min(filled)}..{max(filled)}" if filled else "none"
        print(
            f"{obj.name}: {len(filled)} slices ({extent}), {voxels} voxels, "
            f"{voxels * volume.voxel_volume_ml:.1f} mL, {seconds:.1f} s -> {', '.join(map(str, job.outputs))}"
        )


def _run_plan(model: Any, job: SegmentJob, stderr: TextIO, quiet: bool) -> Any:
    """What the job propagates within the device's free memory (``cli_estimate.plan_run``), told before
    the run; ModelError when nothing fits. A slab around the prompt replaces the whole volume only when no
    --slice-range was given, or within it."""
    from .cli_estimate import plan_run
    from .memory_estimate import require_fit

    run = plan_run(model, job.volume, job.objects, job.slice_range, job.args.direction)
    require_fit(run.estimate)
    if run.refusal is not None:
        raise run.refusal
    if not quiet and run.estimate.gave_way:
        print(f"medsegany: note: {run.estimate.message}", file=stderr)
    if not quiet and run.prompts_left_out:
        low, high = run.slice_range or (0, 0)
        where = run.slab.describe() if run.slab is not None else f"{low}..{high} of their axis"
        print(
            f"medsegany: note: {run.prompts_left_out} prompted slice(s) outside slices {where} are not used",
            file=stderr,
        )
    return run


def _volume_index(run: Any, slice_index: int) -> int:
    """A slice index of the run's volume as the user's volume's index (they differ on a slab)."""
    return slice_index if run.slab is None else run.slab.to_volume_index(slice_index)


def overlap_mode(args: argparse.Namespace) -> str:
    """--overlap, or its default: exclusive for --mask-prompts (under independent objects a later label's
    propagated mask covered an earlier label's drawn slices: one label drawn on K=1 lost all its voxels),
    independent otherwise."""
    if args.overlap is not None:
        return args.overlap
    return "exclusive" if getattr(args, "mask_prompts", None) else "independent"


def _with_label_values(labelmap_kji: Any, segments: list, objects: list) -> tuple[Any, list]:
    """The labelmap and segments with each object's own ``label_value`` (an input labelmap's) instead of
    its place in the list; unchanged when no object has one."""
    import numpy as np

    values = [entry.label_value for entry in objects]
    if all(value is None for value in values):
        return labelmap_kji, segments
    lut = np.arange(len(objects) + 1, dtype=np.int64)  # object n (1-based) -> its value
    lut[1:] = [value if value is not None else n for n, value in enumerate(values, start=1)]
    dtype = np.uint8 if lut.max() < 256 else np.uint16  # values over 65535 are refused when read
    relabelled = lut.astype(dtype)[labelmap_kji]
    return relabelled, [replace(info, label_value=int(lut[info.label_value])) for info in segments]


def _note_empty_prompted_slices(session: Any, obj: Any, run: Any, stderr: TextIO) -> None:
    """Say why an object got nothing where it was prompted (the run stops there, so its summary alone
    reads "0 slices"), with the way out that fits its prompt."""

    def slices(indices: list[int]) -> str:
        return ", ".join(f"{'IJK'[obj.axis]}={_volume_index(run, index)}" for index in indices)

    empty = [index for index in sorted(obj.prompts) if not _slice_has_voxels(obj, index)]
    # --overlap exclusive: the model may have found the object there (its logits are kept only for a
    # non-empty mask) while objects it is surer of took every voxel; "found nothing" would send the
    # user to check a box that is right
    outscored = [index for index in empty if index in getattr(obj, "logits_frames", {})]
    if outscored:
        print(
            f"medsegany: note: on its prompted slice {slices(outscored)} every voxel the model found for "
            f"{obj.name} went to objects it is surer of there (--overlap exclusive); prompt what only this "
            "object covers, or use --overlap independent",
            file=stderr,
        )
    empty = [index for index in empty if index not in outscored]
    if not empty:
        return
    if all(obj.prompts[index].box_ijk is not None for index in empty):
        fix = (
            "check that the box covers the object and that the intensity window shows it (--preset, --window)"
        )
    elif session.is_sam2 or getattr(session.model, "preprocessing", None) == "sam":
        # SAM 2 and Meta's SAM (sam_vit_b/l/h: SAM's preprocessing) were trained with points as well
        fix = "add a box, or more positive points on the object"
    else:  # LiteMedSAM and MedSAM were trained with boxes: points alone often give nothing
        fix = f"add a box ({getattr(session.model, 'model_id', 'this model')} was trained with boxes)"
    print(
        f"medsegany: note: the model found nothing for {obj.name} on its prompted slice {slices(empty)}; "
        f"{fix}",
        file=stderr,
    )


def _slice_has_voxels(obj, index: int) -> bool:
    from .slices import frame_of

    return bool(frame_of(obj.mask_kji, obj.axis, index).any())


def _write_preview(session, objects, path: Path, slab: Any = None) -> None:
    """The preview of the session's volume; tiles titled with the user's slice indices (``slab``: where
    the session's volume was cut from)."""
    from .preview import write_preview_png
    from .prompts import SlicePrompts

    first = objects[0].prompts[0]
    points = first.points_frame_xy() if isinstance(first, SlicePrompts) else []
    write_preview_png(
        session.windowed_kji,
        session.labelmap_kji(),
        first.axis,
        first.slice_index,
        path,
        box_frame_xyxy=first.box_frame_xyxy() if isinstance(first, SlicePrompts) else None,
        points_frame_xy=points if len(points) else None,
        point_labels=first.labels_array() if len(points) else None,
        spacing_ijk=session.volume.spacing_ijk,
        ijk_to_ras=session.volume.ijk_to_ras,
        segments=session.segments(),
        first_slice_index=slab.first if slab is not None and slab.axis == first.axis else 0,
    )


def build_parser() -> argparse.ArgumentParser:
    from .cli_batch import add_batch_parser
    from .cli_models import add_models_parser

    parser = argparse.ArgumentParser(
        prog="medsegany", description="Promptable 3D medical image segmentation."
    )
    parser.add_argument("--version", action="version", version=f"medsegany {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_segment_parser(subparsers)
    add_batch_parser(subparsers)
    add_models_parser(subparsers)
    return parser


class InterruptedWhileWriting(KeyboardInterrupt):
    """Ctrl-C between a job's outputs: ``written`` (complete files; each is written atomically) say which
    are there."""

    def __init__(self, written: list[Path]) -> None:
        super().__init__()
        self.written = list(written)


# a value that starts with a minus sign: "-160,240", "-12.5,30,4e1", a point's "-12,30,4:-" (argparse
# takes such a word for an option)
NEGATIVE_VALUE = re.compile(r"-\.?\d[\d.,eE+-]*(?::[+-])?")
# the options whose value may start below zero (an abbreviation argparse accepts counts too)
NEGATIVE_VALUE_OPTIONS = ("--window", "--box-ras", "--point-ras", "--box-ijk", "--point-ijk", "--slice-range")


def _note_other_series(image: str, metadata: dict, stderr: TextIO) -> None:
    """Which series of a DICOM folder was read, the others, and how to choose one of them."""
    chosen = "using the one chosen" if metadata.get("dicom_series_chosen") else "using the largest"
    others = "; ".join(metadata.get("dicom_other_series", []))
    listed = f"; the others: {others} (choose one with --series UID)" if others else ""
    print(
        f"medsegany: note: {image} holds {metadata['dicom_series_count']} DICOM series; {chosen} "
        f"({metadata['dicom_series_uid']}){listed}",
        file=stderr,
    )


def joined_negative_values(argv: Sequence[str]) -> list[str]:
    """``--window -160,240`` as ``--window=-160,240``: argparse reads a word that starts with "-" as an
    option unless it is one plain negative number, so a window or an RAS coordinate list that starts
    below zero was refused ("expected one argument"). Only after the options above, and never after a
    ``--`` (what follows it is positional)."""
    words: list[str] = []
    for position, word in enumerate(argv):
        if word == "--":
            return words + list(argv[position:])
        previous = words[-1] if words else ""
        takes_it = len(previous) > 2 and any(option.startswith(previous) for option in NEGATIVE_VALUE_OPTIONS)
        if takes_it and NEGATIVE_VALUE.fullmatch(word):
            words[-1] = f"{previous}={word}"
        else:
            words.append(word)
    return words


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(joined_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except MedSegAnyError as error:
        print(f"medsegany: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as interrupt:
        written = getattr(interrupt, "written", [])
        told = f"only {', '.join(map(str, written))} was written" if written else "no output was written"
        print(f"medsegany: cancelled; {told}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print(f"medsegany: error: {OUT_OF_MEMORY_MESSAGE}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
