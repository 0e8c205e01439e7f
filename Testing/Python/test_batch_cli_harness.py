"""benchmarks/batch_cli.py on two tiny volumes with the eager encoder: both ways run and write the same
labels, and the JSON holds the times and their ratio."""

from __future__ import annotations

import pytest

pytest.importorskip("SimpleITK")
pytest.importorskip("torch")

from benchmark_testing import run_benchmark


def test_two_tiny_volumes_both_ways(tmp_path):
    report = run_benchmark(
        "batch_cli.py",
        tmp_path / "batch.json",
        *("--volumes", "2", "--slices", "3", "--size", "48", "--extra=--compile off"),
        timeout=600,
    )
    assert report["same_labels"] is True
    assert len(report["separate_process_s"]) == 2 and report["batch_s"] > 0
    assert report["separate_over_batch"] == pytest.approx(report["separate_processes_s"] / report["batch_s"])
