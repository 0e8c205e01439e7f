"""benchmarks/read_volume.py on a tiny volume: both ways read the same voxels from both files, and the
JSON holds their times and ratio."""

from __future__ import annotations

import pytest

pytest.importorskip("SimpleITK")

from benchmark_testing import run_benchmark


def test_a_tiny_volume_both_ways(tmp_path):
    report = run_benchmark(
        "read_volume.py", tmp_path / "read.json", "--slices", "6", "--size", "32", "--repeats", "2"
    )
    assert set(report["files"]) == {".nii.gz", ".nii"}
    for entry in report["files"].values():
        assert entry["voxels_equal"] is True and len(entry["seconds"]["copy"]) == 2
        assert entry["copy_over_in_place"] == pytest.approx(
            entry["median_s"]["copy"] / entry["median_s"]["in_place"]
        )
