"""benchmarks/batch_cli.py on two tiny volumes with the eager encoder: both ways run and write the same
labels, and the JSON holds the times and their ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("SimpleITK")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


def test_two_tiny_volumes_both_ways(tmp_path):
    output = tmp_path / "batch.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "batch_cli.py"),
        *("--volumes", "2", "--slices", "3", "--size", "48", "--extra=--compile off"),
        *("--output", str(output)),
    ]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True, timeout=600)
    report = json.loads(output.read_text())
    assert report["same_labels"] is True
    assert len(report["separate_process_s"]) == 2 and report["batch_s"] > 0
    assert report["separate_over_batch"] == pytest.approx(report["separate_processes_s"] / report["batch_s"])
