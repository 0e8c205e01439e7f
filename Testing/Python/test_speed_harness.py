"""Smoke run of benchmarks/speed.py on a tiny case: every path runs, the JSON holds what issue 5 asks for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("sam2")
pytest.importorskip("torch")

from benchmark_testing import run_benchmark


def run_harness(tmp_path: Path, *extra: str) -> dict:
    # 1 thread: the test shares a small CI machine; the harness itself asks for one per physical core
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return run_benchmark(
        "speed.py", tmp_path / "speed.json", "--workdir", str(tmp_path), *extra, timeout=170, env=env
    )


def test_sam2_case_runs_references_and_ours_with_correction_and_estimate(tmp_path):
    # SAM 2.1 tiny's architecture at 128 px on 48 x 48 x 3 slices: about 10 s on one core
    report = run_harness(
        tmp_path,
        "--models", "sam2.1_hiera_t512", "sam2.1_hiera_l",
        "--sam2-image-size", "128",
        "--size", "48", "--slices", "3", "--objects", "2",
        "--repeats", "1", "--warmup-slices", "1", "--correction-slices", "1",
        "--paths", "reference_a", "reference_b", "reference_b_kept", "medsegany",
        "medsegany_fused_attention", "medsegany_encode_stream",
        "--no-cpu-tuning",
    )  # fmt: skip
    assert report["device"] == "cpu" and report["torch"]
    # on glibc or a preloaded jemalloc MedSegAny's path keeps freed memory; the references never do
    assert report["kept_memory"]["references"] == "allocator defaults"
    assert report["kept_memory"]["medsegany"] in {"glibc", "jemalloc", None}
    assert report["skipped"] == [{"model": "sam2.1_hiera_l", "reason": "GPU only (too slow on CPU)"}]
    (case,) = report["cases"]
    assert (case["model"], case["slices"], case["objects"], case["input_size"]) == (
        "sam2.1_hiera_t512", 3, 2, [48, 48]
    )  # fmt: skip
    paths = case["paths"]
    ours = ("medsegany", "medsegany_fused_attention", "medsegany_encode_stream")
    assert set(paths) == {"reference_a", "reference_b", "reference_b_kept", *ours}
    assert "reference_b_kept_over_medsegany_per_slice" in case["ratios"]
    assert "medsegany_fused_attention_over_medsegany_per_slice" in case["ratios"]
    # on a CPU (bf16 or float32): MedSegAny's attention by matrix products, and the fused kernel where asked
    assert paths["medsegany"]["matmul_attention"] is True
    assert paths["medsegany_fused_attention"]["matmul_attention"] is False
    # the encoder's own stream exists on CUDA only: on a CPU that path is the default one, same masks
    assert paths["medsegany_encode_stream"]["encoder_stream_batches"] is None
    agreement = case["variant_mask_agreement"]
    assert agreement["medsegany_encode_stream"]["identical"] is True
    assert agreement["medsegany_fused_attention"]["dice"] > 0.9
    for name, summary in paths.items():
        # every path gives a mask on every slice: forward then backward from the middle one
        assert summary["slices_propagated_per_object"] == 3, name
        assert summary["end_to_end_s"] > 0 and summary["peak_rss_bytes"] > report["baseline_rss_bytes"] / 2
        assert summary["correction"]["until_repropagated_s"] >= summary["correction"]["until_mask_s"] > 0
        assert len(summary["repeats"]) == 1
    assert "frames" in paths["reference_a"]["phases_s"]  # the JPEG folder was written and timed
    assert "frames" not in paths["reference_b"]["phases_s"]
    assert paths["medsegany"]["frames_encoded"] == 3  # features once per slice, reused by the correction
    ratio = case["ratios"]["reference_b_over_medsegany_end_to_end"]
    assert ratio == pytest.approx(paths["reference_b"]["end_to_end_s"] / paths["medsegany"]["end_to_end_s"])
    memory = case["memory_estimate"]
    assert memory["predicted_peak_bytes"] == sum(memory["parts_bytes"].values())
    assert memory["measured_peak_bytes"] == paths["medsegany"]["peak_rss_bytes"]
    assert memory["plan"]["cached_frames"] == 3 and memory["plan"]["fits"]


def test_worker_thread_runs_our_path_on_the_slicer_model_thread_and_counts_page_faults(tmp_path):
    # the same tiny SAM 2 case: MedSegAny's path as a job on slicer_worker's model thread, Meta's on the main
    report = run_harness(
        tmp_path,
        "--models", "sam2.1_hiera_t512", "--sam2-image-size", "128",
        "--size", "48", "--slices", "3", "--objects", "1",
        "--repeats", "1", "--warmup-slices", "1", "--correction-slices", "1",
        "--paths", "reference_b", "medsegany", "--worker-thread", "--no-cpu-tuning",
    )  # fmt: skip
    assert report["medsegany_thread"] == "worker"
    (case,) = report["cases"]
    ours, meta = case["paths"]["medsegany"], case["paths"]["reference_b"]
    assert ours["repeats"][0]["thread"] == "MedSegAny model worker"
    assert "thread" not in meta["repeats"][0]
    assert ours["slices_propagated_per_object"] == 3 and ours["correction"]["until_repropagated_s"] > 0
    for summary in (ours, meta):
        faults = summary["repeats"][0]["phases_minor_faults"]
        assert set(faults) == set(summary["repeats"][0]["phases_s"])
        assert all(isinstance(n, int) and n >= 0 for n in faults.values())
        assert summary["phases_minor_faults"]["propagation"] == faults["propagation"]
