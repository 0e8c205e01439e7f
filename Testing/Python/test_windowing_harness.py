"""benchmarks/windowing.py on a small volume: both ways for every voxel type, the same outputs."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")  # the report's machine description names torch's version

from benchmark_testing import run_benchmark


def test_short_run_reports_one_thread_and_threads_with_identical_outputs(tmp_path):
    report = run_benchmark(
        "windowing.py", tmp_path / "window.json", "--slices", "20", "--size", "64", "--repeats", "2"
    )
    assert report["shape_kji"] == [20, 64, 64] and report["threads"] >= 1
    assert sorted(report["cases"]) == ["float32", "int16", "uint8"]
    for case in report["cases"].values():
        assert case["outputs_identical"] is True
        assert case["one_thread_s"] > 0 and case["threads_s"] > 0
