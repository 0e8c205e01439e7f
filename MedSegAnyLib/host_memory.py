"""The host memory a run may use, and what this process holds, on Linux, Windows and macOS.

Why: the memory plan (:mod:`medsegany.memory_estimate`) sizes a run against the machine's available
memory. It read Linux's ``/proc`` only, so on Windows and macOS, where most 3D Slicer users work, the
budget was unknown and the plan fell back to the fastest run without checking that it fits.

- Linux: ``MemAvailable`` of ``/proc/meminfo`` (the kernel's estimate of what can be used without
  swapping, reclaimable page cache included) and the resident pages of ``/proc/self/statm``;
- Windows: ``ullAvailPhys`` of ``GlobalMemoryStatusEx`` (kernel32) and the ``WorkingSetSize`` of
  ``GetProcessMemoryInfo`` (psapi);
- macOS: ``vm_stat``'s free, speculative and inactive pages times its page size (inactive pages are
  reclaimed before anything is swapped out, like Linux's page cache; the same sum as psutil's
  "available", without depending on psutil, which Slicer's Python may lack), and ``ps -o rss=`` for this
  process (in KiB);
- elsewhere: POSIX ``sysconf``'s available physical pages.

Nothing here raises: a platform that does not answer gives None (available) or 0 (resident).
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys

# vm_stat's lines "Pages free:     12345." (name, count)
VM_STAT_PAGES = re.compile(r"^Pages (\w[\w -]*?):\s+(\d+)\.?$", re.MULTILINE)
# a command that hangs (a stalled NFS home, a sandbox) must not hang the panel: vm_stat and ps answer in
# about 10 ms
COMMAND_TIMEOUT_S = 2.0


def available_bytes() -> int | None:
    """Physical memory the machine can still give to processes, or None if the platform does not say."""
    platform = _platform()
    if platform.startswith("linux"):
        available = _linux_mem_available()
        if available is not None:
            return available
    elif platform == "win32":
        status = _windows_memory_status()
        if status is not None:
            return int(status.ullAvailPhys)
    elif platform == "darwin":
        text = _run(["vm_stat"])
        available = None if text is None else parse_vm_stat(text)
        if available is not None:
            return available
    return _sysconf_available()


def resident_bytes() -> int:
    """This process's resident memory (RSS, the working set on Windows); 0 if the platform does not say."""
    platform = _platform()
    if platform == "win32":
        counters = _windows_process_counters()
        return 0 if counters is None else int(counters.WorkingSetSize)
    if platform == "darwin":
        text = _run(["ps", "-o", "rss=", "-p", str(os.getpid())])
        try:
            return 0 if text is None else int(text.strip()) * 1024
        except ValueError:
            return 0
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def parse_vm_stat(text: str) -> int | None:
    """Available bytes from macOS ``vm_stat`` output: (free + speculative + inactive pages) x page size."""
    page = re.search(r"page size of (\d+) bytes", text)
    counts = {name.lower(): int(value) for name, value in VM_STAT_PAGES.findall(text)}
    needed = ("free", "speculative", "inactive")
    if page is None or not all(name in counts for name in needed):
        return None
    return sum(counts[name] for name in needed) * int(page.group(1))


class MemoryStatusEx(ctypes.Structure):
    """Windows' MEMORYSTATUSEX (64 bytes): DWORD is 32 bits and DWORDLONG 64 on every Windows."""

    _fields_ = [
        ("dwLength", ctypes.c_uint32),
        ("dwMemoryLoad", ctypes.c_uint32),
        ("ullTotalPhys", ctypes.c_uint64),
        ("ullAvailPhys", ctypes.c_uint64),
        ("ullTotalPageFile", ctypes.c_uint64),
        ("ullAvailPageFile", ctypes.c_uint64),
        ("ullTotalVirtual", ctypes.c_uint64),
        ("ullAvailVirtual", ctypes.c_uint64),
        ("ullAvailExtendedVirtual", ctypes.c_uint64),
    ]


class ProcessMemoryCounters(ctypes.Structure):
    """Windows' PROCESS_MEMORY_COUNTERS (72 bytes on 64-bit Windows: two DWORDs, eight SIZE_Ts)."""

    _fields_ = [
        ("cb", ctypes.c_uint32),
        ("PageFaultCount", ctypes.c_uint32),
        ("PeakWorkingSetSize", ctypes.c_size_t),
        ("WorkingSetSize", ctypes.c_size_t),
        ("QuotaPeakPagedPoolUsage", ctypes.c_size_t),
        ("QuotaPagedPoolUsage", ctypes.c_size_t),
        ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
        ("QuotaNonPagedPoolUsage", ctypes.c_size_t),
        ("PagefileUsage", ctypes.c_size_t),
        ("PeakPagefileUsage", ctypes.c_size_t),
    ]


def _windows_memory_status() -> MemoryStatusEx | None:
    try:
        kernel32 = _windows_library("kernel32")
        status = MemoryStatusEx()
        status.dwLength = ctypes.sizeof(MemoryStatusEx)
        if not kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return None
        return status
    except (OSError, AttributeError):
        return None


def _windows_process_counters() -> ProcessMemoryCounters | None:
    try:
        kernel32, psapi = _windows_library("kernel32"), _windows_library("psapi")
        kernel32.GetCurrentProcess.restype = ctypes.c_void_p  # a pseudo-handle, -1: keep all its bits
        counters = ProcessMemoryCounters()
        counters.cb = ctypes.sizeof(ProcessMemoryCounters)
        process = ctypes.c_void_p(kernel32.GetCurrentProcess())
        if not psapi.GetProcessMemoryInfo(process, ctypes.byref(counters), counters.cb):
            return None
        return counters
    except (OSError, AttributeError):
        return None


def _windows_library(name: str) -> ctypes.CDLL:
    return ctypes.WinDLL(name)  # type: ignore[attr-defined]  # Windows only; tests stand in for it


def _linux_mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sysconf_available() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _run(command: list[str]) -> str | None:
    """A command's standard output, or None when it is missing, fails or takes too long."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _platform() -> str:
    return sys.platform
