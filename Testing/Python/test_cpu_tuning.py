"""CPU tuning: core counting, jemalloc detection, the bf16 probe, and the settings applied to torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from denormal_testing import flushed_by_openmp_thread, on_new_thread
from medsegany import cpu_tuning

torch = pytest.importorskip("torch")

# Two sockets x two cores x two hyper-threads, in /proc/cpuinfo's block layout.
CPUINFO = "\n\n".join(
    f"processor\t: {n}\nphysical id\t: {socket}\ncore id\t\t: {core}\nflags\t\t: fpu sse avx2"
    for n, (socket, core) in enumerate([(s, c) for s in (0, 1) for c in (0, 1)] * 2)
)


def test_physical_cores_count_distinct_socket_core_pairs():
    assert cpu_tuning.parse_physical_cores(CPUINFO) == 4
    assert cpu_tuning.parse_physical_cores("processor : 0\nmodel name : some arm\n") is None
    assert 1 <= cpu_tuning.physical_core_count() <= cpu_tuning.usable_cpus()


def test_jemalloc_detection_reads_the_process_maps(tmp_path):
    mapped = "7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n"
    assert cpu_tuning.jemalloc_preloaded(mapped)
    assert not cpu_tuning.jemalloc_preloaded("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n")
    assert cpu_tuning.find_jemalloc((str(tmp_path),)) is None
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    assert cpu_tuning.find_jemalloc((str(tmp_path / "none"), str(tmp_path))) == str(
        tmp_path / "libjemalloc.so.2"
    )


def test_preloaded_jemalloc_is_seen_by_a_child_process():
    path = cpu_tuning.find_jemalloc()
    if path is None:
        pytest.skip("jemalloc is not installed here")
    code = "from medsegany.cpu_tuning import jemalloc_preloaded; print(jemalloc_preloaded())"
    for preload, expected in ((path, "True"), ("", "False")):
        env = {"LD_PRELOAD": preload, "PATH": "/usr/bin:/bin"}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
        )
        assert out.stdout.strip() == expected, out.stderr


def test_bf16_probe_agrees_with_float32():
    supported, speedup = cpu_tuning.probe_bf16(size=64, repeats=2)
    assert isinstance(supported, bool)
    assert (speedup is None) if not supported else speedup > 0


@pytest.fixture
def restore_torch_settings():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def test_tune_cpu_sets_threads_and_flushes_denormals(restore_torch_settings):
    tuning = cpu_tuning.tune_cpu(threads=1, probe=False)
    assert tuning.threads == torch.get_num_threads() == 1
    assert not tuning.bf16_supported and tuning.bf16_speedup is None
    if tuning.flush_denormal:  # x86 with SSE3 and ARM support it
        tiny = torch.tensor([1e-39], dtype=torch.float32)  # below float32's smallest normal (1.2e-38)
        assert float(tiny * 1.0) == 0.0
    default = cpu_tuning.tune_cpu(probe=False)
    assert default.threads == cpu_tuning.physical_core_count()
    assert default.as_dict()["threads"] == default.threads
    if not default.jemalloc_preloaded:
        assert any("LD_PRELOAD" in line for line in default.advice)
        assert "jemalloc: not preloaded" in default.message


ONCE_CODE = """
import torch
from medsegany import cpu_tuning

first = cpu_tuning.tune_cpu_once()
assert cpu_tuning.tune_cpu_once() is first  # once per process
flushed = torch.tensor([1e-40], dtype=torch.float32).item() == 0.0
print(torch.get_num_threads(), first.threads, flushed, cpu_tuning.physical_core_count())
"""


@pytest.mark.parametrize("omp_threads", ["", "1"])
def test_tuning_once_flushes_denormals_and_keeps_a_thread_count_the_user_chose(omp_threads):
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": omp_threads}
    out = subprocess.run(
        [sys.executable, "-c", ONCE_CODE], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    threads, reported, flushed, physical = out.stdout.split()
    assert threads == reported and flushed == "True"
    assert int(threads) == (int(omp_threads) if omp_threads else int(physical))


def test_loading_a_model_on_a_cpu_tunes_the_process(monkeypatch):
    from medsegany.models import litemedsam, registry

    calls = []
    monkeypatch.setattr(cpu_tuning, "tune_cpu_once", lambda: calls.append("tuned"))
    monkeypatch.setattr(litemedsam, "LiteMedSamModel", lambda **kwargs: kwargs)
    assert registry.load_model("litemedsam", device="cpu")["device"] == "cpu"
    assert calls == ["tuned"]


def test_without_cpuinfo_the_cores_are_pytorchs_default_at_most_the_usable_cpus(monkeypatch):
    """Windows and macOS have no /proc/cpuinfo: os.cpu_count() would count SMT threads (and Apple
    silicon's efficiency cores); PyTorch's own default counts physical (performance) cores."""
    monkeypatch.setattr(cpu_tuning, "_cpuinfo_text", lambda: None)
    monkeypatch.setattr(cpu_tuning, "usable_cpus", lambda: 12)
    monkeypatch.setattr(cpu_tuning, "torch_default_threads", lambda: 6)
    assert cpu_tuning.physical_core_count() == 6
    monkeypatch.setattr(cpu_tuning, "usable_cpus", lambda: 4)  # a process limited to 4 CPUs
    assert cpu_tuning.physical_core_count() == 4
    monkeypatch.setattr(cpu_tuning, "torch_default_threads", lambda: None)  # torch not imported
    assert cpu_tuning.physical_core_count() == 4
    assert cpu_tuning.cpu_flags() == set()


def test_pytorchs_default_is_read_before_the_tuning_changes_it(monkeypatch, restore_torch_settings):
    monkeypatch.setattr(cpu_tuning, "_cpuinfo_text", lambda: None)  # as on Windows and macOS
    monkeypatch.setattr(cpu_tuning, "_TORCH_DEFAULT_THREADS", None)  # as in a fresh process
    default = torch.get_num_threads()
    first = cpu_tuning.tune_cpu(probe=False)
    torch.set_num_threads(1)
    second = cpu_tuning.tune_cpu(probe=False)  # PyTorch's default was read once, before it was changed
    assert first.threads == second.threads == min(default, cpu_tuning.usable_cpus())


def test_a_thread_loading_a_model_after_another_flushes_denormals_in_all_its_openmp_threads(tuned_process):
    if not tuned_process.flush_denormal:
        pytest.skip("this CPU cannot flush denormals")

    def load_then_compute():
        assert cpu_tuning.tune_cpu_once() is tuned_process  # what loading a model calls, once per process
        return flushed_by_openmp_thread()

    assert on_new_thread(flushed_by_openmp_thread) == [False] * torch.get_num_threads()  # the check sees
    assert on_new_thread(load_then_compute) == [True] * torch.get_num_threads()


def test_openmp_threads_made_before_the_flag_keep_ieee_arithmetic(tuned_process):
    """The check tells a thread's OpenMP workers from the thread itself: a thread whose first parallel
    operation ran before it set the flag has workers that still make denormals (why ModelWorker sets it
    first)."""
    if not tuned_process.flush_denormal or torch.get_num_threads() < 2:
        pytest.skip("needs a CPU that flushes denormals and two OpenMP threads")

    def parallel_first_then_flag():
        flushed_by_openmp_thread()  # creates this thread's OpenMP workers, unflushed
        cpu_tuning.flush_denormals_on_this_thread()
        return flushed_by_openmp_thread()

    flushed = on_new_thread(parallel_first_then_flag)
    assert flushed[0] and not all(flushed[1:])


def test_nothing_is_flushed_before_a_model_was_loaded(monkeypatch):
    monkeypatch.setattr(cpu_tuning, "_PROCESS_TUNING", None)
    assert on_new_thread(lambda: (cpu_tuning.flush_denormals_if_tuned(), flushed_by_openmp_thread())) == (
        False,
        [False] * torch.get_num_threads(),
    )
