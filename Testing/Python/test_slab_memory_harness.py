"""benchmarks/slab_memory.py on a tiny volume: both ways run in their own processes, write the same
labels on the whole grid, and the JSON holds each way's peak RSS and their ratio."""

from __future__ import annotations

import pytest

pytest.importorskip("SimpleITK")
pytest.importorskip("torch")

from benchmark_testing import run_benchmark


def test_a_tiny_volume_both_ways(tmp_path):
    report = run_benchmark(
        "slab_memory.py",
        tmp_path / "slab.json",
        "--slices",
        "12",
        "--size",
        "48",
        "--range",
        "3",
        timeout=600,
    )
    assert report["same_labels"] is True and report["slice_range"] == [5, 7]
    assert 1 <= report["labelled_slices"] <= 3  # nothing outside the range, on either way
    whole, slab = (report["ways"][way]["peak_rss_bytes"] for way in ("whole", "slab"))
    assert report["peak_rss_whole_over_slab"] == pytest.approx(whole / slab)
