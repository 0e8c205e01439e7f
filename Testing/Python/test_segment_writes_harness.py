"""benchmarks/segment_writes.py on a small volume: every path runs, both 3D paths end with the same
surface, and only Slicer's own behaviour converts the surface after each slice."""

from __future__ import annotations

import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (Qt-free MRML)")
pytest.importorskip("torch")  # speed.py's machine report

from benchmark_testing import run_benchmark  # noqa: E402

PATHS = ("plain", "plain_batched", "3d_slicer", "3d_medsegany", "3d_medsegany_batched")


def test_small_run_reports_every_path_and_the_same_surface(tmp_path):
    report = run_benchmark(
        "segment_writes.py",
        tmp_path / "writes.json",
        *("--slices", "4", "--filled", "3", "--depth", "10", "--size", "48", "--batch", "3"),
    )
    assert set(report["paths"]) == set(PATHS)
    assert report["same_surface"] is True
    assert report["paths"]["3d_medsegany"]["surface_points"] > 0
    assert report["paths"]["plain"]["surface_points"] is None
    assert report["ratios"]["3d_slicer_over_3d_medsegany_total"] > 0
