"""benchmarks/run_gpu.sh rehearsed on the CPU (REHEARSAL=1): every stage of the planned GPU calls runs its
exact command on tiny inputs and writes its JSON, so a script error costs a test here, not a lent GPU's
15 minutes. What only CUDA does (graph recording, streams, page-locked copies) is not rehearsed; the
CUDA tests are only collected. The host and operations stages' runs are also the harness tests of
benchmarks/step_host_work.py and benchmarks/step_operations.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sam2")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
# the stages of benchmarks/run_gpu.sh and the JSON each writes
PLANNED_STAGES = {
    "speed": "speed_gpu_t512_300.json",
    "host": "step_host_work_gpu.json",
    "memory": "speed_gpu_t512_300_memory.json",
    "graphs": "profile_graphs.json",
    "strict": "profile_graphs_strict.json",
    "window": "windowing_gpu_host.json",
    "stream": "speed_gpu_t512_300_encode_stream.json",
    "cudatests": None,
    "large": "speed_gpu_l1024_100.json",
    "objects": "speed_gpu_t512_100_3objects.json",
    "shapes": "encoder_batch_shapes.json",
    "interleaved": "speed_gpu_t512_300_interleaved.json",
    "compile": "profile_compile_default.json",
    "encoder_compile": "sam2_encoder_compile.json",
    "fused": "profile_graphs_compiled.json",
    "fusedspeed": "speed_gpu_t512_300_compiled.json",
    "fusedlarge": "speed_gpu_l1024_100_compiled.json",
    "operations": "step_operations_gpu.json",
}


def rehearse(out: Path, *stages: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, REHEARSAL="1", PYTHON=sys.executable, OUT=str(out), OMP_NUM_THREADS="1")
    return subprocess.run(
        ["bash", "benchmarks/run_gpu.sh", *stages],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_planned_stage_runs_its_command_and_writes_its_report(tmp_path):
    """Also: an unknown stage fails the call, after the others ran."""
    completed = rehearse(tmp_path, *PLANNED_STAGES, "spede")
    log = completed.stdout + completed.stderr
    assert completed.returncode != 0
    assert "!! unknown stage spede" in completed.stdout and "done, 1 failed" in completed.stdout, log[-4000:]
    assert completed.stdout.count("!!") == 1
    reports = {s: json.loads((tmp_path / f).read_text()) for s, f in PLANNED_STAGES.items() if f}
    # the GPU sizes were replaced by the tiny ones, and every speed stage ran its case
    for stage in ("speed", "memory", "stream", "objects", "interleaved", "fusedspeed"):
        (case,) = reports[stage]["cases"]
        assert case["slices"] == 3 and reports[stage]["device"] == "cpu", stage
    assert reports["objects"]["cases"][0]["objects"] == 3
    assert set(reports["memory"]["cases"][0]["paths"]) == {"medsegany"}
    assert set(reports["stream"]["cases"][0]["paths"]) == {"medsegany", "medsegany_encode_stream"}
    interleaved = reports["interleaved"]["cases"][0]
    assert set(interleaved["paths"]) == {"reference_b", "medsegany", "medsegany_interleaved"}
    agreement = interleaved["variant_mask_agreement"]["medsegany_interleaved"]
    if interleaved["precision"] == "float32":  # encoding while tracking changes no value
        assert agreement["identical"] is True
    else:  # bf16 on a CPU with AMX: oneDNN's kernels depend on the encoder batch's size, which interleaving
        # changes (3 slices of 48 x 48: Dice 0.99993, 0.014 % of voxels differ; float32: identical)
        assert interleaved["precision"] == "bfloat16" and agreement["dice"] > 0.999
    assert interleaved["paths"]["medsegany_interleaved"]["repeats"][0]["phases_s"]["features"] < 0.01
    compiled = reports["compile"]  # Meta's modules compiled (about 80 s on 2 cores), profiled per step
    assert compiled["variant"] == "compile-default" and compiled["same_frames"] is True
    assert compiled["profile"]["steps"] == 2 and compiled["compile_s"] > 0
    (encoder,) = reports["encoder_compile"]["cases"]  # tiny only: the large model is the GPU's
    assert encoder["model"] == "sam2.1_hiera_t512" and encoder["batch"] == 2
    assert encoder["encoder_compile"]["compiled"] is True
    assert encoder["compiled_ms_per_batch"] > 0 and encoder["max_relative_feature_difference"] < 0.05
    shapes = reports["shapes"]
    assert [c["size"] for c in shapes["calls"]] == [2, 3]
    assert [c["encoded_size"] for c in shapes["calls_padded"]] == [4]  # 3 frames, padded
    assert reports["large"]["skipped"][0]["model"] == "sam2.1_hiera_l"  # GPU only
    # the graph variants check themselves against eager steps (on a CPU no graph is recorded)
    for stage in ("graphs", "strict"):
        assert reports[stage]["graphs_vs_eager"]["identical"] is True, stage
    assert reports["graphs"]["step_graphs"]["lookahead"] is True
    assert reports["strict"]["step_graphs"]["lookahead"] is False
    fused = reports["fused"]  # the step compiled (about 50 s on 2 cores), close to the eager steps
    assert fused["step_graphs"]["step_compiled"] is True and fused["step_graphs"]["step_compiles"] >= 1
    assert fused["step_graphs"]["lookahead"] is True and fused["profile"]["steps"] == 2
    # a session splits the step on CUDA only, so on a CPU its trackers report no step graphs
    assert fused["session_step_graphs"] is None and reports["graphs"]["session_step_graphs"] is None
    assert fused["graphs_vs_eager"]["same_frames"] and fused["graphs_vs_eager"]["min_mask_agreement"] > 0.99
    fused_speed = reports["fusedspeed"]["cases"][0]
    variants = {"medsegany_compiled_step", "medsegany_compiled"}
    assert set(fused_speed["paths"]) == {"reference_b", "medsegany", *variants}
    assert set(fused_speed["variant_mask_agreement"]) == variants
    # on a CPU the step is not split (no graphs), so only the encoder compiles there
    compiled_encoder = fused_speed["paths"]["medsegany_compiled"]["encoder_compile"]
    assert compiled_encoder["compiled"] is True and compiled_encoder["compiles"] >= 1
    assert fused_speed["paths"]["medsegany"]["encoder_compile"] is None
    assert reports["fusedlarge"]["skipped"][0]["model"] == "sam2.1_hiera_l"  # GPU only
    check_step_host_work(reports["host"])
    check_step_operations(reports["operations"])
    assert reports["window"]["shape_kji"] == [8, 64, 64]


def check_step_host_work(report: dict) -> None:
    """benchmarks/step_host_work.py on its tiny input (4 slices of 96 px): both ways of preparing the
    memory and of finishing the mask agree bitwise on a CPU, and MedSegAny's ways issue fewer operations."""
    assert report["bitwise_equal"] == {"memory": True, "frame_logits": True}  # on a CPU: both bitwise
    assert report["frame_logits_max_abs_difference"] == 0.0 and report["frame_masks_equal"] is True
    assert report["memory_frames"] == 3 and report["object_pointers"] == 3  # prompt + 2 tracked frames
    assert report["frame_shape"] == [96, 96] and report["low_res_shape"] == [1, 1, 128, 128]
    memory, finishing = report["memory"], report["finishing"]
    assert memory["medsegany_gather"]["operations"] == 3  # one concatenation, one stack, one transfer
    assert memory["meta_assembly"]["operations"] > 10
    assert finishing["device_finish_host_share"]["operations"] == 1  # the resize; then a numpy copy
    assert finishing["host_finish"]["operations"] > 0
    parts = [*memory.values(), *finishing.values()]
    assert all(part["us_per_call"] > 0 for part in parts)


def check_step_operations(report: dict) -> None:
    """benchmarks/step_operations.py on its tiny input (4 slices): the step's operations add up by part,
    the prompt encoder is not among them, and the mask heads give Meta's outputs with fewer operations."""
    assert report["device"] == "cpu" and report["memory_frames"] == 3 and report["fill_hole_area"] == 8
    assert report["step_operations"] == sum(report["by_part"].values()) == sum(report["by_module"].values())
    assert sum(report["by_operation"].values()) == report["step_operations"]
    assert report["step_casts_profiled"] > 0  # the model's own .float() calls, and autocast's under bf16
    assert {"memory_attention", "sam_mask_decoder", "memory_encoder", "step"} <= set(report["by_part"])
    assert "sam_prompt_encoder" not in report["by_part"]  # its outputs for no prompt are kept
    heads = report["heads"]
    assert report["heads_bitwise_equal"] is True
    assert heads["meta_forward_sam_heads"]["by_part"]["sam_prompt_encoder"] > 40
    assert "sam_prompt_encoder" not in heads["forward_heads_unprompted"]["by_part"]
    ours, meta = heads["forward_heads_unprompted"], heads["meta_forward_sam_heads"]
    assert ours["operations"] < meta["operations"] - 40
