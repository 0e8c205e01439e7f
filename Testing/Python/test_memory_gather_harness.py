"""benchmarks/memory_gather.py on a short stack: it reports both ways of preparing the memory, they agree
bitwise, and MedSegAny's issues three operations where Meta's issues many."""

from __future__ import annotations

import pytest

pytest.importorskip("sam2")
pytest.importorskip("torch")

from benchmark_testing import run_benchmark


def test_short_run_reports_both_ways_and_the_same_memory(tmp_path):
    report = run_benchmark("memory_gather.py", tmp_path / "gather.json", "--slices", "4", "--repeats", "3")
    assert report["bitwise_equal"] is True
    assert report["memory_frames"] == 3 and report["object_pointers"] == 3  # prompt + 2 tracked frames
    parts = report["parts"]
    assert parts["medsegany_gather"]["operations"] == 3  # one concatenation, one stack, one transfer
    assert parts["meta_assembly"]["operations"] > 10
    assert all(part["us_per_call"] > 0 for part in parts.values())
