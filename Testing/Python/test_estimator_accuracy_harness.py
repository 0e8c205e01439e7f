"""benchmarks/estimator_accuracy.py on tiny cases: each runs in its own process through a real session,
and the JSON holds the estimate, the measured peak and their ratio."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("sam2")

from benchmark_testing import run_benchmark


def test_two_tiny_cases(tmp_path):
    report = run_benchmark(
        "estimator_accuracy.py",
        tmp_path / "estimator.json",
        *("--cases", "sam2.1_hiera_t512:4:1", "litemedsam:3:2", "--size", "64", "--compile", "off"),
        timeout=600,
    )
    sam2, lite = report["cases"]
    assert sam2["model"] == "sam2.1_hiera_t512" and 1 <= sam2["slices_of_the_first_object"] <= 4
    assert lite["objects"] == 2 and 1 <= lite["slices_of_the_first_object"] <= 3
    for case in report["cases"]:
        assert case["estimate_over_peak"] == pytest.approx(case["estimate_mib"] / case["peak_rss_mib"])
        assert case["rss_after_mib"]["runtime"] <= case["peak_rss_mib"]
        stages = ["runtime", "model", "volume", "session", "prompted", "propagated"]
        assert list(case["rss_after_mib"]) == stages  # read after each stage, in order
    assert report["worst_estimate_over_peak"] == min(c["estimate_over_peak"] for c in report["cases"])
