"""``medsegany batch JOBS.txt``: many volumes in one process, with one model load.

Why: every ``medsegany segment`` process loads its model again, and on a CPU compiles LiteMedSAM's
encoder again: 25-45 s on the 2-core development machine, more than a 50-slice object takes to segment
(about 20 s). Inductor cannot cache that compile across processes (its weights are packed for oneDNN;
``benchmarks/README.md``). A labelling team that loops over 100 volumes would spend most of its time
compiling. Here the model is loaded and compiled once, and each job then costs only its own volume.

The jobs file has one ``segment`` command line per line, without the ``medsegany segment`` in front
(``#`` starts a comment; paths are relative to the current directory, as on the command line)::

    CT_001.nii.gz --box-ijk 120,200,57,210,290,57 -o out/liver_001.nii.gz
    CT_002.nii.gz --prompts prompts/002.json -o out/organs_002.seg.nrrd --preview out/002.png

The model options (``--model``, ``--checkpoint``, ``--config``, ``--device``, ``--precision``,
``--compile``) go on the ``batch`` command once, never on a job's line. ``--frame-pixels`` on the
``batch`` command is every job's, unless a job's line gives its own. Every line is parsed before the
model loads (every bad line is reported at once), and the first job's inputs are read before it too, so a
misspelt option or a wrong first file fails in a second, not after the compile. A job that fails while it
runs (a missing file, a box outside its volume) prints its one-line error and the batch goes on (inputs
that do not exist are named before the first job runs); the exit code is 1 when any job failed. A model
that cannot load stops the batch at once (every job needs it), with ``segment``'s error. Ctrl-C stops it
too (exit 130): the jobs done keep their outputs. ``--skip-done`` skips the jobs whose outputs all exist,
so an interrupted batch resumes where it stopped. ``--estimate`` prints every job's memory estimate and
plan (``segment --estimate``) and writes nothing.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .errors import MedSegAnyError, PromptError


@dataclass(frozen=True)
class BatchLine:
    """One job: its line number in the jobs file and its parsed ``segment`` arguments."""

    number: int
    text: str
    args: argparse.Namespace


class _LineParser(argparse.ArgumentParser):
    """The ``segment`` parser, raising instead of exiting (a bad line is the batch's error, not a crash);
    without ``-h``, which would print the help and end the batch with nothing done and exit code 0."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["add_help"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise PromptError(message, "fix the line in the jobs file")


def add_batch_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from .cli import add_frame_pixels_option, add_model_options

    parser = subparsers.add_parser(
        "batch",
        help="segment many volumes with one model load: a file of `segment` command lines",
        description="Segment many volumes in one process: the model loads (and on a CPU compiles) once. "
        "JOBS is a text file with one `segment` command line per line, without `medsegany segment` "
        "(# starts a comment), e.g. `CT_001.nii.gz --box-ijk 120,200,57,210,290,57 -o liver_001.nii.gz`. "
        "Model options go on this command, not on the lines. A failed job is reported and the batch "
        "goes on (exit code 1 at the end).",
    )
    parser.add_argument("jobs", help="text file: one `segment` command line per line (# comments)")
    add_model_options(parser.add_argument_group("model (for every job)"))
    add_frame_pixels_option(parser, default_text="square; a job's line may set its own")
    parser.add_argument(
        "--skip-done", action="store_true", help="skip jobs whose outputs (and preview) all exist already"
    )
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="print every job's memory estimate and plan instead of running it (see `segment --help`)",
    )
    parser.set_defaults(func=run_batch)
    return parser


def read_jobs(path: str | Path, batch_args: argparse.Namespace) -> list[BatchLine]:
    """Every job of the file, parsed with the ``segment`` options and the batch's model options."""
    from .cli import add_segment_parser

    jobs_path = Path(path)
    if not jobs_path.is_file():
        problem = "is not a file" if jobs_path.exists() else "does not exist"
        raise MedSegAnyError(f"jobs file {jobs_path} {problem}", "give a text file of `segment` lines")
    # the same options as `medsegany segment`, parsed by a parser that raises instead of exiting
    lines = _LineParser(prog="medsegany").add_subparsers(parser_class=_LineParser)
    segment_parser = add_segment_parser(lines)
    try:
        text = jobs_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        problem = f"cannot read jobs file {jobs_path} ({error})"
        raise MedSegAnyError(problem, "give a UTF-8 text file") from None
    jobs = []
    bad_lines: list[PromptError] = []  # every bad line is reported at once, not one per attempt
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            job = _parse_line(number, line, jobs_path, segment_parser, batch_args)
        except PromptError as error:
            bad_lines.append(error)
            continue
        if job is not None:
            jobs.append(job)
    if len(bad_lines) == 1:
        raise bad_lines[0]
    if bad_lines:
        listed = "".join(f"\n  {error}" for error in bad_lines)
        raise PromptError(f"{len(bad_lines)} lines of {jobs_path} are wrong", f"fix them:{listed}")
    if not jobs:
        raise PromptError(f"{jobs_path} holds no job", "write one `segment` command line per line")
    return jobs


def _parse_line(
    number: int,
    line: str,
    jobs_path: Path,
    segment_parser: argparse.ArgumentParser,
    batch_args: argparse.Namespace,
) -> BatchLine | None:
    """One line of the jobs file as a job (None for a blank or comment line); PromptError if it is bad."""
    from .cli import MODEL_OPTIONS, check_prompt_options, joined_negative_values

    try:
        words = shlex.split(line, comments=True)
    except ValueError as error:  # an unclosed quote
        raise PromptError(f"line {number} of {jobs_path}: {error}", "fix the line's quoting") from None
    if not words:
        return None
    try:
        args = segment_parser.parse_args(joined_negative_values(words))
    except PromptError as error:
        raise PromptError(f"line {number} of {jobs_path}: {error.problem}", error.fix) from None
    for option in MODEL_OPTIONS:
        dest = option[2:]
        # compared after parsing: argparse also takes abbreviations (--mod) and --opt=value
        if getattr(args, dest) != segment_parser.get_default(dest):
            raise PromptError(
                f"line {number} of {jobs_path} sets {option}", "give model options once, on the batch command"
            )
        setattr(args, dest, getattr(batch_args, dest))
    try:
        check_prompt_options(args)  # with the other bad lines, not when the job's turn comes
    except PromptError as error:
        raise PromptError(f"line {number} of {jobs_path}: {error.problem}", error.fix) from None
    args.estimate = args.estimate or batch_args.estimate
    if args.frame_pixels is None:  # the line's own choice, else the batch's
        args.frame_pixels = getattr(batch_args, "frame_pixels", None)
    if not args.output and not args.estimate:  # refused with the other bad lines, before any work
        raise PromptError(
            f"line {number} of {jobs_path} has no output (-o/--output)", "add -o OUT.nii.gz to the line"
        )
    return BatchLine(number, line.strip(), args)


def _done(args: argparse.Namespace) -> bool:
    from .cli import output_paths

    outputs, previews = output_paths(args)
    return bool(outputs) and not args.estimate and all(path.exists() for path in outputs + previews)


def run_batch(args: argparse.Namespace, stderr: TextIO | None = None) -> int:
    from .cli import (
        EXIT_INTERRUPTED,
        EXIT_OK,
        EXIT_USER_ERROR,
        OUT_OF_MEMORY_MESSAGE,
        load_cli_model,
        prepare_job,
        segment_job,
    )
    from .cli_estimate import estimate_job, estimate_model

    stderr = stderr or sys.stderr
    started = time.monotonic()
    jobs = read_jobs(args.jobs, args)
    todo = [job for job in jobs if not (args.skip_done and _done(job.args))]
    skipped = len(jobs) - len(todo)
    if skipped:
        print(f"medsegany: skipping {skipped} job(s) whose outputs exist (--skip-done)", file=stderr)
    _note_missing_inputs(todo, stderr)
    failed: list[int] = []
    done = 0
    model = None
    for position, job in enumerate(todo, start=1):
        print(f"[{position}/{len(todo)}] line {job.number}: {job.text}", file=stderr, flush=True)
        job_started = time.monotonic()
        try:
            try:
                prepared = prepare_job(job.args, stderr)
            except MedSegAnyError as error:
                _job_failed(job, error, failed, stderr)
                continue
            except MemoryError:  # a volume too large to read: the next may fit
                _job_failed(job, OUT_OF_MEMORY_MESSAGE, failed, stderr)
                continue
            if model is None:
                # once, after the first job's inputs were read; a model that cannot load fails the whole
                # batch here (every job needs it), with the error of `segment`
                # (a batch that only estimates sizes a catalog model from its card, as `segment --estimate`)
                model = estimate_model(args) if args.estimate else load_cli_model(args)
            try:
                if prepared.args.estimate:
                    estimate_job(prepared, model, sys.stdout)
                else:
                    segment_job(prepared, model, stderr, job_started)
                done += 1
            except MedSegAnyError as error:
                _job_failed(job, error, failed, stderr)
            except MemoryError:
                _job_failed(job, OUT_OF_MEMORY_MESSAGE, failed, stderr)
            except Exception as error:  # a MedSegAny bug: this job fails, the others still run
                problem = f"unexpected {type(error).__name__} ({error}): a MedSegAny bug"
                _job_failed(job, f"{problem}. Please report it with this line", failed, stderr)
        except KeyboardInterrupt as interrupt:
            written = getattr(interrupt, "written", [])  # this job's outputs written before Ctrl-C
            partly = (
                f"; of its outputs only {', '.join(map(str, written))} was written: delete it first (the "
                "job would refuse to overwrite it)"
                if written
                else ""
            )
            print(
                f"medsegany: cancelled at line {job.number}: the {done} job(s) done before it keep their "
                f"outputs; run again with --skip-done to go on{partly}",
                file=stderr,
            )
            return EXIT_INTERRUPTED
    seconds = time.monotonic() - started
    print(
        f"batch: {done} done, {len(failed)} failed, {skipped} skipped, {seconds:.1f} s"
        + (f" (failed lines: {', '.join(map(str, failed))})" if failed else ""),
        file=stderr,
    )
    return EXIT_USER_ERROR if failed else EXIT_OK


def _note_missing_inputs(jobs: list[BatchLine], stderr: TextIO) -> None:
    """Name the jobs whose input files do not exist before the first job runs: such a job fails in its
    turn, and the batch goes on, so a typo on line 80 was seen only at the end of an overnight run."""
    missing = [
        f"line {job.number}: {path}"
        for job in jobs
        for path in (
            job.args.image,
            job.args.prompts,
            job.args.mask_prompts,
            *(name.removesuffix(":-") for name in job.args.markups),
        )
        if path and not Path(path).expanduser().exists()
    ]
    if missing:
        print(
            f"medsegany: note: {len(missing)} input(s) do not exist, their jobs will fail: "
            f"{'; '.join(missing)} (Ctrl-C to stop and fix the jobs file)",
            file=stderr,
            flush=True,
        )


def _job_failed(job: BatchLine, error: object, failed: list[int], stderr: TextIO) -> None:
    print(f"medsegany: error: line {job.number}: {error}", file=stderr, flush=True)
    failed.append(job.number)
