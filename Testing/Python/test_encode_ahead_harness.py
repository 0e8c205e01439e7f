"""benchmarks/encode_ahead.py on a fast fake model: the cold run and the runs after encoding ahead give
the same masks, after a full encode nothing is encoded again, and the ratios compare with the cold run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fake_models import ThresholdModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
pytest.importorskip("torch")  # speed.py's machine report

import encode_ahead


def test_runs_after_encoding_ahead_need_no_encoder_and_give_the_cold_masks(monkeypatch):
    model = ThresholdModel(threshold=120.0)
    monkeypatch.setattr(encode_ahead, "load", lambda name, device, log: (model, {"load_s": 0.0}))
    args = encode_ahead.parse_args(["--slices", "12", "--size", "64", "--idle-seconds", "inf", "0"])

    case = encode_ahead.run_model(args, "litemedsam", log=lambda message: None)

    cold, ahead = case["runs"]
    assert cold["idle_s_asked"] == 0 and cold["slices_encoded_ahead"] == 0
    assert ahead["idle_s_asked"] is None and ahead["slices_encoded_ahead"] == 12
    assert cold["slices_propagated"] == ahead["slices_propagated"] > 3
    assert ahead["masks_equal_cold"] and cold["masks_equal_cold"]
    assert cold["after_prompt_ratio_cold_over_this"] == 1.0 and ahead["after_prompt_ratio_cold_over_this"] > 0
    assert ahead["slices_encoded_after_prompt"] == 0
    assert cold["slices_encoded_after_prompt"] > cold["slices_propagated"]  # the key slice too
    assert all(run["peak_rss_bytes"] > 0 for run in case["runs"])
    estimate = case["memory_estimate"]
    assert estimate["measured_peak_bytes"] == max(run["peak_rss_bytes"] for run in case["runs"])
    assert estimate["predicted_over_measured"] > 0
