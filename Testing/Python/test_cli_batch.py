"""``medsegany batch``: one model load for many volumes, the same outputs as one ``segment`` each, a
failed job that does not stop the others, resuming with --skip-done, and lines refused before any work."""

from __future__ import annotations

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from medsegany.models import registry  # noqa: E402
from test_cli import assert_one_line_error, read_labels, run_cli, write_phantom  # noqa: E402

BOX = "14,20,2,46,44,2"


@pytest.fixture()
def loads(monkeypatch):
    """The model loads of the command, each as (model id, whether it serves a single run); the real
    loader runs."""
    calls = []
    real = registry.load_model

    def counting(*args, **kwargs):
        calls.append((args[0] if args else kwargs.get("model_id"), kwargs.get("single_run", False)))
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "load_model", counting)
    return calls


def test_a_batch_loads_the_model_once_and_writes_what_segment_writes(tmp_path, capsys, loads):
    volumes = [write_phantom(tmp_path / f"ct_{n}.nii.gz", shape_kji=(5, 64, 64 + 4 * n)) for n in range(3)]
    jobs = tmp_path / "jobs.txt"
    lines = ["# three volumes, one object each"]
    lines += [
        f"{volume} --box-ijk {BOX} --window 0,255 -o {tmp_path / f'out_{n}.nii.gz'} -q"
        for n, volume in enumerate(volumes)
    ]
    jobs.write_text("\n".join(lines) + "\n")

    code, out, err = run_cli(capsys, "batch", jobs, "--device", "cpu")

    assert code == 0, err
    assert len(loads) == 1 and "batch: 3 done, 0 failed, 0 skipped" in err
    assert out.count("segment_1: ") == 3  # one summary line per job
    code, _, err = run_cli(
        capsys,
        "segment",
        volumes[1],
        "--box-ijk",
        BOX,
        "--window",
        "0,255",
        "-o",
        tmp_path / "alone.nii.gz",
        "--device",
        "cpu",
        "-q",
    )
    assert code == 0, err
    # a batch serves many runs (a float32 encoder compiles by "auto"), a segment command one
    assert loads == [("litemedsam", False), ("litemedsam", True)]
    np.testing.assert_array_equal(
        read_labels(tmp_path / "out_1.nii.gz"), read_labels(tmp_path / "alone.nii.gz")
    )
    assert read_labels(tmp_path / "out_1.nii.gz")[2].sum() > 200


def test_a_failed_job_is_reported_the_others_run_and_skip_done_resumes(tmp_path, capsys, loads):
    good = write_phantom(tmp_path / "good.nii.gz")
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(
        f"{good} --box-ijk {BOX} -o {tmp_path / 'a.nii.gz'} -q\n"
        f"{good} --box-ijk 100,120,2,140,150,2 -o {tmp_path / 'b.nii.gz'} -q\n"  # outside the volume
        f"{tmp_path / 'missing.nii.gz'} --box-ijk {BOX} -o {tmp_path / 'c.nii.gz'} -q\n"
        f"{good} --box-ijk {BOX} -o {tmp_path / 'd.nii.gz'} -q\n"
    )

    code, _, err = run_cli(capsys, "batch", jobs, "--device", "cpu")

    assert code == 1 and "Traceback" not in err
    assert "line 2: " in err and "outside the volume" in err and "line 3: " in err
    # the missing input is named before the first job runs, not only in its turn
    note = f"note: 1 input(s) do not exist, their jobs will fail: line 3: {tmp_path / 'missing.nii.gz'} ("
    assert note in err.split("[1/4]")[0]
    assert "batch: 2 done, 2 failed, 0 skipped, " in err and "(failed lines: 2, 3)" in err
    assert (tmp_path / "a.nii.gz").is_file() and (tmp_path / "d.nii.gz").is_file()
    assert not (tmp_path / "b.nii.gz").exists() and len(loads) == 1

    before = (tmp_path / "a.nii.gz").read_bytes()
    code, _, err = run_cli(capsys, "batch", jobs, "--device", "cpu", "--skip-done")
    assert code == 1 and "skipping 2 job(s)" in err and "batch: 0 done, 2 failed, 2 skipped" in err
    assert (tmp_path / "a.nii.gz").read_bytes() == before


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("ct.nii.gz --box-ijk 1,2,3,4,5,3 -o out.nii.gz --model sam2.1_hiera_tiny", "line 2 .*sets --model"),
        ("ct.nii.gz --box-ijk 1,2,3,4,5,3 --device=cuda -o out.nii.gz", "line 2 .*sets --device"),
        ("ct.nii.gz --box-ijk 1,2,3,4,5,3 --prec float32 -o out.nii.gz", "line 2 .*sets --precision"),
        ("ct.nii.gz --box-ijk 1,2,3,4,5,3", "line 2 .*-o/--output"),
        ("ct.nii.gz --bux-ijk 1,2,3,4,5,3 -o out.nii.gz", "line 2 .*unrecognized arguments: --bux-ijk"),
        ('ct.nii.gz --name "unclosed -o out.nii.gz', "line 2 .*(quotation|closing)"),
        ("ct.nii.gz -h", "line 2 .*unrecognized arguments: -h"),  # not the help, and an exit code 0
        ("ct.nii.gz --box-ijk 1,2,3,4,5,3 --frame-pixels round -o o.nii.gz", "line 2 .*invalid choice"),
        (
            "ct.nii.gz --mask-prompts l.nii.gz --box-ijk 1,2,3,4,5,3 -o o.nii.gz",
            "line 2 .*--mask-prompts was",
        ),
        ("ct.nii.gz --prompts p.json --point-ijk 1,2,3 -o o.nii.gz", "line 2 .*--prompts was given with"),
    ],
)
def test_bad_lines_are_refused_before_the_model_loads(tmp_path, capsys, loads, line, pattern):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(f"ct.nii.gz --box-ijk 1,2,3,4,5,3 -o out.nii.gz\n{line}\n")
    code, _, err = run_cli(capsys, "batch", jobs)
    assert_one_line_error(code, err, pattern)
    assert loads == []


def test_every_bad_line_is_reported_at_once(tmp_path, capsys, loads):
    """A labeller fixing a 200-line jobs file should not learn of its bad lines one run at a time."""
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(
        "ct.nii.gz --box-ijk 1,2,3,4,5,3 -o out.nii.gz\n"
        "ct.nii.gz --bux-ijk 1,2,3,4,5,3 -o out2.nii.gz\n"
        "# a comment\n"
        "ct.nii.gz --box-ijk 1,2,3,4,5,3\n"
        "ct.nii.gz --box-ijk 1,2,3,4,5,3 -o out4.nii.gz --model sam2.1_hiera_tiny\n"
    )
    code, _, err = run_cli(capsys, "batch", jobs)
    assert code == 1 and loads == [] and "Traceback" not in err
    assert f"3 lines of {jobs} are wrong" in err
    listed = err.splitlines()[1:]
    assert [line.split(" of ")[0].strip() for line in listed] == ["line 2", "line 4", "line 5"]
    assert "--bux-ijk" in listed[0] and "-o/--output" in listed[1] and "sets --model" in listed[2]


def test_an_empty_or_missing_jobs_file_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "batch", tmp_path / "nope.txt")
    assert_one_line_error(code, err, "jobs file .* does not exist")
    code, _, err = run_cli(capsys, "batch", tmp_path)
    assert_one_line_error(code, err, "jobs file .* is not a file")
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
    code, _, err = run_cli(capsys, "batch", tmp_path / "empty.txt")
    assert_one_line_error(code, err, "holds no job")


def test_a_model_that_cannot_load_stops_the_batch_once(tmp_path, capsys, loads):
    good = write_phantom(tmp_path / "good.nii.gz")
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("".join(f"{good} --box-ijk {BOX} -o {tmp_path / f'{n}.nii.gz'} -q\n" for n in range(3)))
    code, _, err = run_cli(capsys, "batch", jobs, "--model", "sam9_giant")
    assert code == 1 and err.count("unknown model") == 1 and "Traceback" not in err
    assert len(loads) == 1 and not list(tmp_path.glob("[0-9].nii.gz"))


def test_ctrl_c_keeps_the_jobs_done_and_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    from medsegany import cli

    good = write_phantom(tmp_path / "good.nii.gz")
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("".join(f"{good} --box-ijk {BOX} -o {tmp_path / f'{n}.nii.gz'} -q\n" for n in range(3)))
    real = cli.segment_job
    calls = []

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "segment_job", interrupted_on_the_second)
    code, _, err = run_cli(capsys, "batch", jobs, "--device", "cpu")
    assert code == 130 and "cancelled at line 2: the 1 job(s) done before it keep their outputs" in err
    assert (tmp_path / "0.nii.gz").is_file() and not (tmp_path / "1.nii.gz").exists()
    assert "no output was written" not in err


def test_a_batch_estimate_sizes_every_job_and_writes_nothing(tmp_path, capsys, loads):
    small = write_phantom(tmp_path / "small.nii.gz")
    tall = write_phantom(tmp_path / "tall.nii.gz", shape_kji=(9, 64, 64))
    jobs = tmp_path / "jobs.txt"
    out_path = tmp_path / "small_out.nii.gz"
    out_path.write_bytes(b"done before")  # --skip-done must not skip an estimate
    jobs.write_text(f"{small} --box-ijk {BOX} -o {out_path}\n{tall} --box-ijk 14,20,4,46,44,4\n")

    code, out, err = run_cli(capsys, "batch", jobs, "--device", "cpu", "--estimate", "--skip-done")

    assert code == 0, err
    assert "batch: 2 done, 0 failed, 0 skipped" in err
    assert "on 5 slices of 64x64" in out and "on 9 slices of 64x64" in out
    assert out_path.read_bytes() == b"done before"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "jobs.txt",
        "small.nii.gz",
        "small_out.nii.gz",
        "tall.nii.gz",
    ]


def test_a_batch_estimate_sizes_a_model_not_downloaded_from_its_card(tmp_path, capsys, monkeypatch, loads):
    monkeypatch.setenv("MEDSEGANY_HOME", str(tmp_path / "empty_home"))
    small = write_phantom(tmp_path / "small.nii.gz")
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(f"{small} --box-ijk {BOX}\n")
    argv = ["batch", jobs, "--device", "cpu", "--estimate", "--model", "sam2.1_hiera_tiny"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "sam2.1_hiera_tiny on 5 slices" in out and "not downloaded" in out and loads == []


def test_an_unexpected_error_in_one_job_fails_that_job_only(tmp_path, capsys, monkeypatch):
    import medsegany.cli as cli
    from fake_models import ThresholdModel

    real_segment_job = cli.segment_job

    def fails_on_b(job, *args, **kwargs):
        if job.outputs[0].name == "b.nii.gz":
            raise ValueError("x1 must be greater than or equal to x0")  # as Pillow raised in a preview
        return real_segment_job(job, *args, **kwargs)

    monkeypatch.setattr(cli, "segment_job", fails_on_b)
    monkeypatch.setattr(cli, "load_cli_model", lambda args, single_run=False: ThresholdModel())
    good = write_phantom(tmp_path / "good.nii.gz")
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("".join(f"{good} --box-ijk {BOX} --window -50,255 -o {tmp_path / name} -q\n"
                            for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz")))  # fmt: skip
    code, _, err = run_cli(capsys, "batch", jobs)
    assert code == 1 and "Traceback" not in err
    assert "line 2: unexpected ValueError (x1 must be greater than or equal to x0): a MedSegAny bug" in err
    assert "batch: 2 done, 1 failed, 0 skipped" in err
    assert (tmp_path / "a.nii.gz").is_file() and (tmp_path / "c.nii.gz").is_file()


def test_ctrl_c_between_a_jobs_outputs_names_the_one_written(tmp_path, capsys, monkeypatch):
    from test_cli import ctrl_c_at_seg_nrrd_outputs

    ctrl_c_at_seg_nrrd_outputs(monkeypatch)
    good = write_phantom(tmp_path / "good.nii.gz")
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(f"{good} --box-ijk {BOX} -o {tmp_path / 'a.nii.gz'} -o {tmp_path / 'a.seg.nrrd'} -q\n")
    code, _, err = run_cli(capsys, "batch", jobs)
    assert code == 130 and f"of its outputs only {tmp_path / 'a.nii.gz'} was written: delete it first" in err


def test_the_batchs_frame_pixels_is_every_jobs_unless_a_line_gives_its_own(tmp_path, capsys, monkeypatch):
    import medsegany.session as session_module

    real_session = session_module.SegmentationSession
    made = []

    def recording_session(*args, **kwargs):
        made.append(kwargs["square_pixels"])
        return real_session(*args, **kwargs)

    monkeypatch.setattr(session_module, "SegmentationSession", recording_session)
    volume = write_phantom(tmp_path / "ct.nii.gz")
    jobs = tmp_path / "jobs.txt"
    job = f"{volume} --box-ijk {BOX} --window 0,255 --slice-range 2,3 -q -o {tmp_path}"
    jobs.write_text(f"{job}/a.nii.gz\n{job}/b.nii.gz --frame-pixels square\n")

    code, _, err = run_cli(capsys, "batch", jobs, "--device", "cpu", "--frame-pixels", "as-given")
    assert code == 0, err
    assert made == [False, True]
    jobs.write_text(f"{job}/c.nii.gz\n")
    code, _, err = run_cli(capsys, "batch", jobs, "--device", "cpu")
    assert code == 0, err
    assert made == [False, True, True]  # neither says: square pixels
