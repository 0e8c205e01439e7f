"""The memory estimator: its parts follow the models' real sizes, and its plans fit the budget they get."""

from __future__ import annotations

import numpy as np
import pytest
from medsegany.memory_estimate import (
    GIB,
    MIB,
    PROFILES,
    estimate_memory,
    plan_memory,
    profile_of,
)


def test_feature_and_memory_bank_sizes_follow_the_model_shapes():
    t512, t1024 = PROFILES["sam2.1_hiera_t512"], PROFILES["sam2.1_hiera_t"]
    assert t512.feature_bytes_per_frame(False) == pytest.approx(4.2e6, rel=0.05)
    assert t1024.feature_bytes_per_frame(False) == 4 * t512.feature_bytes_per_frame(False)
    # bf16: the two high-resolution levels in 2 bytes, the 256 x 32 x 32 level stays float32
    assert t512.feature_bytes_per_frame(True) == (32 * 128 * 128 + 64 * 64 * 64) * 2 + 256 * 32 * 32 * 4
    assert PROFILES["litemedsam"].feature_bytes_per_frame(False) == 4 * MIB  # 256 x 64 x 64 float32
    assert PROFILES["litemedsam"].feature_bytes_per_frame(True) == 2 * MIB  # kept in bf16
    # memory bf16 64 x 32 x 32 + logits float32 128 x 128 + pointer: 193 KiB at 512 px
    assert t512.memory_bytes_per_frame_object() == 64 * 32 * 32 * 2 + 128 * 128 * 4 + 1028
    assert PROFILES["litemedsam"].memory_bytes_per_frame_object() == 0


def test_parts_grow_with_slices_objects_and_batch():
    base = estimate_memory("sam2.1_hiera_t512", (512, 512), 100, 1, runtime_bytes=0)
    more = estimate_memory("sam2.1_hiera_t512", (512, 512), 300, 3, runtime_bytes=0)
    assert more.parts["features"] == 3 * base.parts["features"]
    assert more.parts["memory_bank"] == 9 * base.parts["memory_bank"]
    assert more.parts["masks"] == 9 * base.parts["masks"] == 9 * 100 * 512 * 512
    # float32 weights, plus the tracker's bf16 copy where this CPU runs bf16
    assert more.parts["weights"] == base.parts["weights"] in (38_962_498 * 4, 38_962_498 * 6)
    batch1 = estimate_memory("sam2.1_hiera_t512", (512, 512), 100, 1, batch_size=1, runtime_bytes=0)
    assert batch1.parts["activations"] < base.parts["activations"]
    assert base.total_bytes == sum(base.parts.values()) == base.device_bytes
    # issue 5: 300 slices at 512 px must stay under 3 GB of RSS on CPU
    assert estimate_memory("sam2.1_hiera_t512", (512, 512), 300).total_bytes < 3e9


def test_cuda_keeps_frames_and_masks_in_host_memory_and_shrinks_features():
    cpu = estimate_memory("sam2.1_hiera_l", (512, 512), 300, 1, device="cpu", precision="float32")
    gpu = estimate_memory("sam2.1_hiera_l", (512, 512), 300, 1, device="cuda")
    assert gpu.parts["features"] < 0.65 * cpu.parts["features"]  # bf16 on CUDA (one level stays float32)
    assert gpu.device_bytes == sum(
        gpu.parts[p] for p in ("weights", "features", "memory_bank", "activations", "cuda_overhead")
    )
    assert gpu.parts["cuda_overhead"] > 0 == cpu.parts["cuda_overhead"]
    # measured for SAM 2 only (its step graphs): a 2D model on CUDA does not get it
    assert estimate_memory("litemedsam", (512, 512), 300, 1, device="cuda").parts["cuda_overhead"] == 0
    # bf16 on CUDA: the float32 weights and the tracker's bf16 copy of them
    assert gpu.parts["weights"] == 6 * cpu.parts["weights"] // 4
    assert gpu.host_bytes == gpu.total_bytes - gpu.device_bytes > gpu.parts["frames"]
    offloaded = estimate_memory("sam2.1_hiera_l", (512, 512), 300, 1, device="cuda", offload_features=True)
    assert offloaded.device_bytes == gpu.device_bytes - gpu.parts["features"]


def test_plan_uses_the_fastest_settings_when_memory_is_plenty():
    estimate = plan_memory("sam2.1_hiera_t512", (512, 512), 100, available_bytes=64 * GIB)
    assert (estimate.plan.batch_size, estimate.plan.cached_frames, estimate.plan.slab) == (4, 100, None)
    assert estimate.plan.fits and "plan: encoder batch 4, 100 slices of features cached" in estimate.message


def test_plan_caches_fewer_frames_then_crops_to_a_slab_as_memory_shrinks():
    full = estimate_memory("sam2.1_hiera_t512", (512, 512), 300, 3, batch_size=1)
    budget = int(full.total_bytes * 0.8 / 0.9)  # 80 % of the full run after the 0.9 headroom
    fewer = plan_memory("sam2.1_hiera_t512", (512, 512), 300, 3, available_bytes=budget)
    assert fewer.plan.fits and fewer.plan.batch_size == 1 and fewer.plan.slab is None
    assert 2 < fewer.plan.cached_frames < 300
    assert fewer.device_bytes <= 0.9 * budget

    # room for little more than the model: a slab around the prompted slice
    model_only = estimate_memory("sam2.1_hiera_t512", (512, 512), 3, 1, batch_size=1, cached_frames=2)
    small = int((model_only.total_bytes + 40 * 512 * 512 * 2) / 0.9)
    slab = plan_memory("sam2.1_hiera_t512", (512, 512), 300, 1, available_bytes=small, prompt_slice=250)
    low, high = slab.plan.slab
    assert slab.plan.fits and 3 <= high - low + 1 < 300 and low <= 250 <= high and high <= 299
    assert slab.device_bytes <= 0.9 * small
    assert f"only slices {low}-{high}" in slab.message


def test_a_one_way_propagations_slab_starts_or_ends_at_the_prompt():
    """A slab centred on the prompt left a forward run half of it: 5 slices fit, the prompt on 150, and
    the run covered 150..152 of the slab 148..152. One way, the slab runs from the prompt (and stays in
    the volume near its end)."""
    model_only = estimate_memory("sam2.1_hiera_t512", (512, 512), 3, 1, batch_size=1, cached_frames=2)
    small = int((model_only.total_bytes + 40 * 512 * 512 * 2) / 0.9)
    args = ("sam2.1_hiera_t512", (512, 512), 300, 1)
    both = plan_memory(*args, available_bytes=small, prompt_slice=150)
    count = both.plan.slab[1] - both.plan.slab[0] + 1
    assert 3 <= count < 150 and both.plan.slab[0] < 150 < both.plan.slab[1]
    forward = plan_memory(*args, available_bytes=small, prompt_slice=150, direction="forward")
    backward = plan_memory(*args, available_bytes=small, prompt_slice=150, direction="backward")
    assert forward.plan.slab == (150, 150 + count - 1) and backward.plan.slab == (150 - count + 1, 150)
    near_end = plan_memory(*args, available_bytes=small, prompt_slice=298, direction="forward")
    assert near_end.plan.slab == (300 - count, 299)
    near_start = plan_memory(*args, available_bytes=small, prompt_slice=1, direction="backward")
    assert near_start.plan.slab == (0, count - 1)


def test_a_slab_that_is_not_cropped_still_counts_the_whole_volumes_copy_and_masks():
    """The Slicer panel's session holds the whole volume, so a slab there saves only SAM 2's memory bank:
    for a 2D model (no memory bank) no slab can fit where the whole axis does not."""
    args = ("litemedsam", (512, 512), 1000, 2)
    model_only = estimate_memory(*args[:2], 3, 2, batch_size=1, cached_frames=2)
    room = int((model_only.total_bytes + 40 * 512 * 512 * 3) / 0.9)
    cropped = plan_memory(*args, available_bytes=room)
    assert cropped.plan.fits and cropped.plan.slab is not None
    assert cropped.parts["frames"] == cropped.num_frames * 512 * 512  # the slab's slices only
    whole = plan_memory(*args, available_bytes=room, crops_slab=False)
    assert not whole.plan.fits and whole.parts["frames"] == 1000 * 512 * 512
    held = estimate_memory(*args[:2], 50, 2, held_frames=1000)
    assert held.parts["masks"] == 2 * 1000 * 512 * 512 and held.num_frames == 50


def test_plan_says_when_nothing_fits():
    estimate = plan_memory("sam2.1_hiera_l", (512, 512), 300, device="cpu", available_bytes=GIB)
    assert not estimate.plan.fits
    assert "does not fit" in estimate.message


def test_a_volume_of_fewer_slices_than_the_smallest_slab_is_planned_on_its_own_slices():
    for frames in (1, 2):
        estimate = plan_memory("sam2.1_hiera_t512", (512, 512), frames, available_bytes=100 * MIB)
        assert not estimate.plan.fits and estimate.num_frames == frames
        assert f"on {frames} slices of 512x512" in estimate.message


def test_what_does_not_fit_names_the_ways_out_of_its_device():
    on_cpu = plan_memory("sam2.1_hiera_l", (512, 512), 300, device="cpu", available_bytes=GIB).message
    assert on_cpu.endswith("free memory or use a smaller model.") and "the CPU" not in on_cpu
    on_gpu = plan_memory("sam2.1_hiera_l", (512, 512), 300, device="cuda:0", available_bytes=GIB).message
    assert on_gpu.endswith("use a smaller model, or the CPU.")


def test_a_running_sessions_room_on_cuda_counts_what_the_process_holds_there(monkeypatch):
    """The estimate counts the weights, features and memory banks a running session holds on the GPU;
    they are not free, so the room of its next action adds them back (else counted twice)."""
    import medsegany.memory_estimate as memory_estimate

    monkeypatch.setattr(memory_estimate, "available_memory_bytes", lambda device="cpu": GIB)
    monkeypatch.setattr(memory_estimate, "cuda_allocated_bytes", lambda device: 2 * GIB)
    assert memory_estimate.room_of_a_running_session("cuda:0") == 3 * GIB
    assert memory_estimate.room_of_a_running_session("cpu") is None  # host memory's room adds it already


def test_unknown_model_name_is_a_model_error():
    from medsegany.errors import ModelError

    with pytest.raises(ModelError, match="no memory profile"):
        estimate_memory("no_such_model", (512, 512), 10)


def test_profile_of_a_built_sam2_model_matches_its_tracker():
    pytest.importorskip("sam2")
    from medsegany.models.registry import Sam2VideoModel
    from medsegany.models.sam2_build import build_sam2_model
    from medsegany.models.sam2_tracker import Sam2Tracker

    model = build_sam2_model("sam2.1_hiera_t512", None)
    profile = profile_of(Sam2VideoModel("medsam2", model, "cpu", 512, None))
    assert profile.name == "medsam2" and profile.image_size == 512
    assert profile.parameters == sum(p.numel() for p in model.parameters())
    for precision, bf16 in (("float32", False), ("bfloat16", True)):
        tracker = Sam2Tracker(model, precision=precision)
        tracker.set_frames(np.zeros((2, 40, 40), np.uint8))
        tracker.precompute_features([0])  # what the cache really holds, dtypes included
        assert profile.feature_bytes_per_frame(bf16) == tracker.feature_bytes_per_frame()
        assert tracker._cache.nbytes == tracker.feature_bytes_per_frame(), precision
    assert profile.activation_bytes_per_image == PROFILES["sam2.1_hiera_t512"].activation_bytes_per_image


def test_bf16_precision_halves_features_and_encoder_activations_on_any_device():
    fp32 = estimate_memory("litemedsam", (512, 512), 100, device="cpu", batch_size=1, precision="float32")
    bf16 = estimate_memory("litemedsam", (512, 512), 100, device="cpu", batch_size=1, precision="bfloat16")
    assert bf16.parts["features"] * 2 == fp32.parts["features"] == 100 * 4 * MIB
    assert bf16.parts["activations"] < fp32.parts["activations"]
    assert bf16.parts["weights"] == fp32.parts["weights"]  # LiteMedSAM: autocast, no bf16 copy
    sam2_fp32 = estimate_memory("sam2.1_hiera_t512", (512, 512), 10, device="cpu", precision="float32")
    sam2_bf16 = estimate_memory("sam2.1_hiera_t512", (512, 512), 10, device="cpu", precision="bfloat16")
    assert sam2_bf16.parts["weights"] == sam2_fp32.parts["weights"] * 6 // 4  # + the tracker's bf16 copy


def test_the_cpus_attention_scores_are_counted_in_sam2_steps():
    from medsegany.memory_estimate import matmul_attention_bytes, step_activation_bytes

    # 1024 queries x (7 x 1024 + 64) keys, scores and softmax in bf16: 28.25 MiB at 512 px; at 1024 px the
    # queries go in blocks of at most 8 Mi scores; float32 scores take twice the bytes
    assert matmul_attention_bytes(512) == 2 * 1024 * 7232 * 2
    assert matmul_attention_bytes(1024) == 2 * 8 * 2**20 * 2
    assert matmul_attention_bytes(512, bf16=False) == 2 * 1024 * 7232 * 4
    t512 = PROFILES["sam2.1_hiera_t512"]
    step = t512.step_activation_bytes
    assert step_activation_bytes(t512, "cpu", True) == step + matmul_attention_bytes(512)
    assert step_activation_bytes(t512, "cpu", False) == step + matmul_attention_bytes(512, bf16=False)
    # CUDA: PyTorch's fused kernel, no scores kept; 2D models have no memory attention
    assert step_activation_bytes(t512, "cuda", True) == step == step_activation_bytes(t512, "cuda", False)
    lite = PROFILES["litemedsam"]
    assert step_activation_bytes(lite, "cpu", True) == lite.step_activation_bytes


def test_sam2_encoder_activations_are_not_halved_by_bf16_on_a_cpu():
    from medsegany.memory_estimate import encoder_activation_bytes

    t1024, lite = PROFILES["sam2.1_hiera_t"], PROFILES["litemedsam"]

    def encoder(profile, kind: str, bf16: bool, batch: int = 1) -> int:
        return encoder_activation_bytes(profile, kind, bf16, batch)

    # measured (one image, freed memory kept): 420 MiB in bf16 at 1024 px, as much as in float32
    assert encoder(t1024, "cpu", True) == encoder(t1024, "cpu", False) == pytest.approx(440 * MIB, rel=0.05)
    # CUDA's calibration and LiteMedSAM's keep the halving they were measured with
    assert encoder(t1024, "cuda", True) == encoder(t1024, "cuda", False) // 2
    assert encoder(lite, "cpu", True) == encoder(lite, "cpu", False) // 2
    assert encoder(t1024, "cpu", True, batch=4) > 3 * encoder(t1024, "cpu", True)


def test_libraries_and_a_compiled_encoder_are_counted():
    from types import SimpleNamespace

    from medsegany.memory_estimate import COMPILED_ENCODER_BYTES, LITEMEDSAM_LIBRARY_BYTES

    def lite(active: bool) -> SimpleNamespace:
        return SimpleNamespace(
            model_id="litemedsam", encoder=SimpleNamespace(active=active), precision="float32"
        )

    eager = estimate_memory(lite(False), (512, 512), 50, device="cpu", batch_size=1)
    compiled = estimate_memory(lite(True), (512, 512), 50, device="cpu", batch_size=1)
    assert eager.parts["libraries"] == LITEMEDSAM_LIBRARY_BYTES
    assert compiled.device_bytes - eager.device_bytes == COMPILED_ENCODER_BYTES
    assert estimate_memory("sam2.1_hiera_t512", (512, 512), 50).parts["libraries"] == 0  # in the runtime


def test_plan_for_a_volume_counts_the_slices_along_the_prompted_axis():
    from medsegany.memory_estimate import plan_for_volume

    shape_kji = (40, 96, 128)  # 40 K slices of 96 x 128, 128 I slices of 40 x 96
    along_k = plan_for_volume("litemedsam", shape_kji, 2, 1, 20, "cpu", available_bytes=64 * GIB)
    along_i = plan_for_volume("litemedsam", shape_kji, 0, 1, 60, "cpu", available_bytes=64 * GIB)
    assert (along_k.num_frames, along_k.frame_shape) == (40, (96, 128))
    assert (along_i.num_frames, along_i.frame_shape) == (128, (40, 96))
    assert along_k.plan.batch_size == 1 and along_k.plan.cached_frames == 40  # CPU: one image a call


def test_the_weights_a_model_holds_are_counted_once_each_with_its_bf16_copy():
    import torch
    from medsegany.memory_estimate import model_resident_bytes
    from medsegany.models.sam2_speedups import shared_bf16_copy

    class Wrapper:  # as Sam2VideoModel holds its predictor: a module among the wrapper's attributes
        def __init__(self) -> None:
            self.model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16))
            self.same_model_again = self.model
            self.device = "cpu"

    wrapper = Wrapper()
    # Linear 8x16 + 16 bias; BatchNorm 16 weight + 16 bias + 16 mean + 16 var + 1 count (int64)
    float32 = (8 * 16 + 16 + 4 * 16) * 4 + 8
    assert model_resident_bytes(wrapper, "cpu") == float32
    assert model_resident_bytes(wrapper, "cuda") == 0  # nothing of it on a GPU
    assert model_resident_bytes("sam2.1_hiera_t512", "cpu") == 0  # a name holds no weights
    shared_bf16_copy(wrapper.model)  # linear weights and bias in bf16; the rest copied as it is
    assert model_resident_bytes(wrapper, "cpu") == float32 + (8 * 16 + 16) * 2 + 4 * 16 * 4 + 8


def test_a_gpu_plan_adds_back_the_loaded_weights_the_estimate_counts(monkeypatch):
    """On CUDA the free memory is measured with the model already loaded: its weights, which the estimate
    counts again, are added back (at most what the estimate counts), or a run would be refused or
    cropped for want of memory the model already holds."""
    import medsegany.memory_estimate as memory_estimate

    free = 3 * GIB
    monkeypatch.setattr(memory_estimate, "available_memory_bytes", lambda device="cpu": free)
    weights = PROFILES["sam2.1_hiera_l"].parameters * 6  # float32 + the bf16 copy
    for resident, credited in ((GIB, GIB), (10 * GIB, weights)):
        monkeypatch.setattr(memory_estimate, "model_resident_bytes", lambda model, device, r=resident: r)
        on_gpu = plan_memory("sam2.1_hiera_l", (512, 512), 100, device="cuda")
        assert on_gpu.available_bytes == free + credited
        assert estimate_memory("sam2.1_hiera_l", (512, 512), 1, device="cuda").parts["weights"] == weights
    on_cpu = plan_memory("sam2.1_hiera_l", (512, 512), 100, device="cpu")
    assert on_cpu.available_bytes == free  # on a CPU the process's own memory is counted already


def test_cuda_memory_the_caching_allocator_holds_unused_is_available(monkeypatch):
    import torch
    from medsegany.memory_estimate import available_memory_bytes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (5 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: 3 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index: 2 * GIB)
    assert available_memory_bytes("cuda") == 6 * GIB  # free + reserved - allocated
    assert available_memory_bytes("cuda:0") == 6 * GIB


def test_a_gpu_plan_keeps_features_in_host_memory_before_it_shrinks_the_batch_or_the_cache(monkeypatch):
    import medsegany.memory_estimate as memory_estimate

    monkeypatch.setattr(memory_estimate, "available_memory_bytes", lambda device="cpu": 64 * GIB)
    args = ("sam2.1_hiera_t512", (512, 512), 300, 1)
    full = estimate_memory(*args, device="cuda", batch_size=16)
    host = estimate_memory(*args, device="cuda", batch_size=16, offload_features=True)
    assert host.device_bytes < full.device_bytes
    available = int((host.device_bytes + full.device_bytes) / 2 / 0.9)  # room for the offloaded run only
    plan = plan_memory(*args, device="cuda", available_bytes=available, batch_size=16).plan
    assert (plan.offload_features, plan.batch_size, plan.cached_frames, plan.slab) == (True, 16, 300, None)
    # a CPU has no second memory: the same budget there caches fewer slices instead
    on_cpu = plan_memory(*args, device="cpu", available_bytes=available, batch_size=1).plan
    assert not on_cpu.offload_features


def test_a_cpu_run_that_keeps_freed_memory_counts_the_encoders_and_the_steps_activations(monkeypatch):
    from medsegany.allocator import OPT_OUT_VARIABLE, process_allocator
    from medsegany.memory_estimate import activation_bytes, step_activation_bytes

    if process_allocator() is None:
        pytest.skip("this process's allocator is not one medsegany.allocator tunes")
    assert activation_bytes(131, 77, "cpu") == 208  # freed encoder blocks stay while the step allocates
    assert activation_bytes(131, 77, "cuda") == 131
    kept = estimate_memory("sam2.1_hiera_t512", (512, 512), 60, precision="bfloat16").parts["activations"]
    monkeypatch.setenv(OPT_OUT_VARIABLE, "0")
    assert activation_bytes(131, 77, "cpu") == 131
    default = estimate_memory("sam2.1_hiera_t512", (512, 512), 60, precision="bfloat16").parts["activations"]
    step = step_activation_bytes(PROFILES["sam2.1_hiera_t512"], "cpu", True)  # 48 MiB + 28 MiB of scores
    assert kept - default == step == pytest.approx(76 * MIB, abs=MIB)


def test_a_plan_gives_the_session_at_least_the_two_slices_a_step_launched_ahead_needs():
    from medsegany.memory_estimate import MemoryPlan

    options = MemoryPlan(1, 40, True).session_options
    assert options == {"max_cached_frames": 40, "offload_features": True, "encoder_batch": 1}
    options = MemoryPlan(16, 1).session_options
    assert options == {"max_cached_frames": 2, "offload_features": False, "encoder_batch": 16}


def test_on_a_mac_or_windows_the_plan_knows_the_hosts_memory(monkeypatch):
    """The budget came from Linux's /proc only: elsewhere the plan was the fastest run, unchecked. Now the
    host's available memory comes from each platform (medsegany.host_memory), plus what the process holds."""
    import medsegany.cgroup_memory as cgroup_memory
    import medsegany.host_memory as host_memory
    import medsegany.memory_estimate as memory_estimate

    monkeypatch.setattr(cgroup_memory, "cgroup_memory_room", lambda: None)
    monkeypatch.setattr(host_memory, "available_bytes", lambda: 3 * GIB)
    monkeypatch.setattr(host_memory, "resident_bytes", lambda: GIB // 2)
    assert memory_estimate.available_memory_bytes("cpu") == 3 * GIB + GIB // 2
    plan = plan_memory("litemedsam", (512, 512), 2000, device="cpu")
    fastest = estimate_memory("litemedsam", (512, 512), 2000, device="cpu")
    assert plan.available_bytes == 3 * GIB + GIB // 2
    assert plan.total_bytes <= 0.9 * plan.available_bytes < fastest.total_bytes  # it gave way
    monkeypatch.setattr(host_memory, "available_bytes", lambda: None)  # a platform that does not say
    assert memory_estimate.available_memory_bytes("cpu") is None


def test_on_apple_mps_the_device_parts_fit_metals_room_and_the_whole_run_the_hosts(monkeypatch):
    """Unified memory: a run's device parts must fit the working set Metal recommends, and all its parts
    the host's memory, which the GPU shares."""
    import medsegany.cgroup_memory as cgroup_memory
    import medsegany.host_memory as host_memory
    import medsegany.memory_estimate as memory_estimate

    args = ("sam2.1_hiera_t512", (512, 512), 300, 1)
    whole = estimate_memory(*args, device="mps", batch_size=4)
    monkeypatch.setattr(memory_estimate, "model_resident_bytes", lambda model, device: 0)
    host = {"room": 64 * GIB}
    monkeypatch.setattr(host_memory, "available_bytes", lambda: host["room"])
    monkeypatch.setattr(host_memory, "resident_bytes", lambda: 0)
    monkeypatch.setattr(cgroup_memory, "cgroup_memory_room", lambda: None)
    monkeypatch.setattr(memory_estimate, "metal_room_bytes", lambda: 48 * GIB)
    assert memory_estimate.available_memory_bytes("mps") == 48 * GIB
    roomy = plan_memory(*args, device="mps", batch_size=4)
    assert roomy.plan.fits and roomy.plan.cached_frames == 300 and roomy.available_bytes == 48 * GIB
    # the device parts still fit Metal's room, but not the host parts with them: the plan gives way
    host["room"] = int((whole.total_bytes - 0.5 * whole.host_bytes) / 0.9)
    assert whole.device_bytes < 0.9 * host["room"]
    tight = plan_memory(*args, device="mps", batch_size=4)
    assert tight.total_bytes <= 0.9 * host["room"] < whole.total_bytes
    # PyTorch without Metal's figures (before 2.3): the host's room is the device's too
    monkeypatch.setattr(memory_estimate, "metal_room_bytes", lambda: None)
    assert memory_estimate.available_memory_bytes("mps") == host["room"]


def test_metals_room_is_unknown_without_mps(monkeypatch):
    import torch
    from medsegany.memory_estimate import metal_room_bytes

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert metal_room_bytes() is None
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 12 * GIB, raising=False)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 2 * GIB, raising=False)
    assert metal_room_bytes() == 10 * GIB


def test_the_encoder_copy_of_an_uncompiled_model_is_counted_with_the_weights():
    from types import SimpleNamespace

    def lite(eager: object) -> SimpleNamespace:
        encoder = SimpleNamespace(active=False, eager=eager)
        return SimpleNamespace(model_id="litemedsam", encoder=encoder, precision="float32")

    plain = estimate_memory(lite(lambda images: images), (512, 512), 50, device="cpu", batch_size=1)
    prepared = estimate_memory(lite(SimpleNamespace(nbytes=22 * 2**20)), (512, 512), 50, device="cpu")
    assert prepared.parts["weights"] - plain.parts["weights"] == 22 * 2**20
