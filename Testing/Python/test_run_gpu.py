"""benchmarks/run_gpu.sh rehearsed on the CPU (REHEARSAL=1): every stage of the planned GPU calls runs its
exact command on tiny inputs and writes its JSON, so a script error costs a test here, not a lent GPU's
15 minutes. What only CUDA does (graph recording, streams, page-locked copies) is not rehearsed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sam2")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
# the stages of benchmarks/README.md's "The next GPU run", both calls, and the JSON each writes
PLANNED_STAGES = {
    "speed": "speed_gpu_t512_300.json",
    "host": "step_host_work_gpu.json",
    "memory": "speed_gpu_t512_300_memory.json",
    "graphs": "profile_graphs.json",
    "strict": "profile_graphs_strict.json",
    "window": "windowing_gpu_host.json",
    "stream": "speed_gpu_t512_300_encode_stream.json",
    "cudatests": None,
    "large": "speed_gpu_l1024_100.json",
    "objects": "speed_gpu_t512_100_3objects.json",
}


def rehearse(out: Path, *stages: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, REHEARSAL="1", PYTHON=sys.executable, OUT=str(out), OMP_NUM_THREADS="1")
    return subprocess.run(
        ["bash", "benchmarks/run_gpu.sh", *stages],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_planned_stage_runs_its_command_and_writes_its_report(tmp_path):
    completed = rehearse(tmp_path, *PLANNED_STAGES)
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log[-4000:]
    assert "!!" not in completed.stdout and "done, 0 failed" in completed.stdout
    reports = {s: json.loads((tmp_path / f).read_text()) for s, f in PLANNED_STAGES.items() if f}
    # the GPU sizes were replaced by the tiny ones, and every speed stage ran its case
    for stage in ("speed", "memory", "stream", "objects"):
        (case,) = reports[stage]["cases"]
        assert case["slices"] == 3 and reports[stage]["device"] == "cpu", stage
    assert reports["objects"]["cases"][0]["objects"] == 3
    assert set(reports["memory"]["cases"][0]["paths"]) == {"medsegany"}
    assert set(reports["stream"]["cases"][0]["paths"]) == {"medsegany", "medsegany_encode_stream"}
    assert reports["large"]["skipped"][0]["model"] == "sam2.1_hiera_l"  # GPU only
    # the graph variants check themselves against eager steps (on a CPU no graph is recorded)
    for stage in ("graphs", "strict"):
        assert reports[stage]["graphs_vs_eager"]["identical"] is True, stage
    assert reports["graphs"]["step_graphs"]["lookahead"] is True
    assert reports["strict"]["step_graphs"]["lookahead"] is False
    assert reports["host"]["bitwise_equal"] == {"memory": True, "frame_logits": True}
    assert reports["window"]["shape_kji"] == [8, 64, 64]


def test_an_unknown_stage_fails_the_call(tmp_path):
    completed = rehearse(tmp_path, "window", "spede")
    assert completed.returncode != 0
    assert "!! unknown stage spede" in completed.stdout and "done, 1 failed" in completed.stdout
    assert (tmp_path / "windowing_gpu_host.json").is_file()  # the other stages still ran
