"""benchmarks/step_host_work.py on a short stack: it reports both ways of preparing the memory and of
finishing the mask, each pair agrees bitwise, and MedSegAny's ways issue fewer operations on the host."""

from __future__ import annotations

import pytest

pytest.importorskip("sam2")
pytest.importorskip("torch")

from benchmark_testing import run_benchmark


def test_short_run_reports_both_ways_and_the_same_results(tmp_path):
    report = run_benchmark(
        "step_host_work.py", tmp_path / "host.json", "--slices", "4", "--size", "96", "--repeats", "4"
    )
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
