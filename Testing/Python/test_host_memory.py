"""medsegany.host_memory: available and resident memory on Linux (real), macOS and Windows (their answers
stood in for: vm_stat's and ps's output, Windows' memory structures filled as the DLL calls fill them)."""

from __future__ import annotations

import ctypes
import os

import pytest
from medsegany import host_memory

GIB = 2**30

# vm_stat of an Apple Silicon Mac (16 KiB pages), abridged to the lines it prints first
VM_STAT = """Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                                9817.
Pages active:                            221580.
Pages inactive:                          216049.
Pages speculative:                         1934.
Pages throttled:                              0.
Pages wired down:                        106874.
Pages purgeable:                           8401.
"Translation faults":                 441278374.
Pages copy-on-write:                   12021570.
Pages zero filled:                    168470522.
Pages reactivated:                      3419582.
Pages purged:                           1510214.
File-backed pages:                       139851.
Anonymous pages:                         299712.
Pages stored in compressor:              640387.
Pages occupied by compressor:            199934.
"""


def test_vm_stat_gives_free_speculative_and_inactive_pages():
    assert host_memory.parse_vm_stat(VM_STAT) == (9817 + 1934 + 216049) * 16384
    intel = VM_STAT.replace("16384", "4096")
    assert host_memory.parse_vm_stat(intel) == (9817 + 1934 + 216049) * 4096
    assert host_memory.parse_vm_stat(VM_STAT.replace("Pages inactive", "Pages idle")) is None
    assert host_memory.parse_vm_stat("vm_stat: command not found") is None


def test_on_a_mac_vm_stat_and_ps_answer(monkeypatch):
    outputs = {"vm_stat": VM_STAT, "ps": "  812344\n"}
    asked = []

    def run(command):
        asked.append(command)
        return outputs.get(command[0])

    monkeypatch.setattr(host_memory, "_platform", lambda: "darwin")
    monkeypatch.setattr(host_memory, "_run", run)
    assert host_memory.available_bytes() == (9817 + 1934 + 216049) * 16384
    assert host_memory.resident_bytes() == 812344 * 1024  # ps reports KiB
    assert asked[-1] == ["ps", "-o", "rss=", "-p", str(os.getpid())]
    # vm_stat missing (a sandbox): sysconf, which macOS does not answer for free pages, then unknown
    monkeypatch.setattr(host_memory, "_run", lambda command: None)
    monkeypatch.setattr(host_memory, "_sysconf_available", lambda: None)
    assert host_memory.available_bytes() is None
    assert host_memory.resident_bytes() == 0


def test_windows_structures_have_the_sizes_windows_expects():
    assert ctypes.sizeof(host_memory.MemoryStatusEx) == 64
    if ctypes.sizeof(ctypes.c_size_t) == 8:  # 64-bit Python, as Slicer's
        assert ctypes.sizeof(host_memory.ProcessMemoryCounters) == 72


class FakeKernel32:
    """Fills MEMORYSTATUSEX as GlobalMemoryStatusEx does, after checking the length it was given."""

    def __init__(self, succeeds=True):
        self.succeeds = succeeds

        def current_process():
            return -1  # Windows' pseudo-handle of the calling process

        self.GetCurrentProcess = current_process

    def GlobalMemoryStatusEx(self, reference):
        status = reference._obj
        assert status.dwLength == ctypes.sizeof(host_memory.MemoryStatusEx)
        status.ullTotalPhys, status.ullAvailPhys = 32 * GIB, 11 * GIB
        return int(self.succeeds)


class FakePsapi:
    def GetProcessMemoryInfo(self, process, reference, size):
        counters = reference._obj
        assert size == counters.cb == ctypes.sizeof(host_memory.ProcessMemoryCounters)
        assert process.value is not None
        counters.WorkingSetSize, counters.PeakWorkingSetSize = 3 * GIB, 4 * GIB
        return 1


def test_on_windows_the_memory_status_and_the_working_set_answer(monkeypatch):
    libraries = {"kernel32": FakeKernel32(), "psapi": FakePsapi()}
    monkeypatch.setattr(host_memory, "_platform", lambda: "win32")
    monkeypatch.setattr(host_memory, "_windows_library", lambda name: libraries[name])
    assert host_memory.available_bytes() == 11 * GIB
    assert host_memory.resident_bytes() == 3 * GIB
    libraries["kernel32"] = FakeKernel32(succeeds=False)
    monkeypatch.setattr(host_memory, "_sysconf_available", lambda: None)  # Windows has no sysconf
    assert host_memory.available_bytes() is None


def test_without_windows_libraries_nothing_raises(monkeypatch):
    def missing(name):
        raise OSError(f"{name}.dll not found")

    monkeypatch.setattr(host_memory, "_platform", lambda: "win32")
    monkeypatch.setattr(host_memory, "_windows_library", missing)
    monkeypatch.setattr(host_memory, "_sysconf_available", lambda: None)
    assert host_memory.available_bytes() is None
    assert host_memory.resident_bytes() == 0


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="Linux's /proc is not here")
def test_on_linux_mem_available_and_statm_answer():
    with open("/proc/meminfo") as handle:
        line = next(line for line in handle if line.startswith("MemAvailable:"))
    reported = int(line.split()[1]) * 1024
    # the machine's other processes move it meanwhile: within 5 % of a read made just before
    assert abs(host_memory.available_bytes() - reported) < 0.05 * reported
    assert 10 * 2**20 < host_memory.resident_bytes() < 64 * GIB


def test_commands_that_are_missing_fail_or_hang_give_nothing(monkeypatch):
    assert host_memory._run(["medsegany-no-such-command"]) is None
    assert host_memory._run(["sh", "-c", "exit 3"]) is None
    monkeypatch.setattr(host_memory, "COMMAND_TIMEOUT_S", 0.2)
    assert host_memory._run(["sleep", "5"]) is None
    assert host_memory._run(["echo", "ok"]) == "ok\n"
