"""benchmarks/segment_writes.py on a small volume: every path runs, both 3D paths end with the same
surface, and only Slicer's own behaviour converts the surface after each slice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (Qt-free MRML)")
pytest.importorskip("torch")  # speed.py's machine report

ROOT = Path(__file__).resolve().parents[2]
PATHS = ("plain", "plain_batched", "3d_slicer", "3d_medsegany", "3d_medsegany_batched")


def test_small_run_reports_every_path_and_the_same_surface(tmp_path):
    output = tmp_path / "writes.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "segment_writes.py"),
        *("--slices", "4", "--filled", "3", "--depth", "10", "--size", "48", "--batch", "3"),
        *("--output", str(output)),
    ]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True, timeout=300)
    report = json.loads(output.read_text())
    assert set(report["paths"]) == set(PATHS)
    assert report["same_surface"] is True
    assert report["paths"]["3d_medsegany"]["surface_points"] > 0
    assert report["paths"]["plain"]["surface_points"] is None
    assert report["ratios"]["3d_slicer_over_3d_medsegany_total"] > 0
