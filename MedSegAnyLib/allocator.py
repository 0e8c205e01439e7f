"""Keep the memory a CPU run frees for the run's next slice, and give it back when the run ends.

PyTorch frees each slice's activations and asks for the same sizes again for the next slice. By default
both common allocators hand such blocks straight back to the kernel: jemalloc purges allocations of
8 MiB and more at once (its "oversize" arena has a decay time of 0), and glibc returns blocks above its
mmap threshold with ``munmap``. The next slice then page-faults the same memory in again, and the kernel
zeroes every page. Measured on the 2-core development CPU (benchmarks/README.md, 2026-11-27), a slice's
time with the allocator's defaults -> with freed memory kept:

- LiteMedSAM in a session (compiled bf16 encoder): jemalloc 0.497 -> 0.359 s, glibc 0.389 -> 0.373 s;
- the plain eager float32 LiteMedSAM loop: jemalloc 2.25-2.57 -> 0.92-0.94 s, glibc 1.41-1.51 ->
  1.21-1.29 s (the allocator, not the model, was most of that loop's time under jemalloc);
- SAM 2.1 tiny at 512 (jemalloc, bf16, median of 32 steps in each of 3 runs): a tracking step
  0.350-0.360 -> 0.302-0.312 s, a slice's image features 0.37-0.39 -> 0.31-0.32 s. The 300-slice run's
  peak resident memory rose from 2033 to 2250 MiB (what the run freed stays until it ends).

While a :func:`retained_freed_memory` block runs, freed pages stay in the process:

- jemalloc: every arena's dirty and muzzy decay time is set to -1 (never purge);
- glibc: the trim threshold is raised to 1 GiB, the mmap threshold fixed at 32 MiB (the most glibc
  takes, and where its own adaptive threshold ends), and no new block is mapped (``M_MMAP_MAX`` 0): blocks
  above 32 MiB come from the heap and are reused, instead of being mapped and unmapped at every slice.
  LiteMedSAM's float32 activations are 64 MiB (256 channels of 256 x 256); on an Intel Xeon without
  native bf16 (2026-11-28, a session of 24 slices, 5 runs each way, medians) a slice took 1.352 -> 1.171 s
  with the encoder prepared for eager inference and 1.028 -> 0.965 s compiled. A thread other than the
  main one gains nothing above 64 MiB: glibc's arenas for other threads hold at most 64 MiB a heap and
  map larger blocks whatever the setting (measured: the compiled encoder in a thread, 0.98-0.99 s either
  way).
- glibc, a thread other than the main one (Slicer's model thread): a heap of its arena that is all free
  is unmapped at once, whatever the trim threshold, so a top pad of one whole heap (64 MiB) is set too.
  Measured on that Xeon (``speed.py --worker-thread``, SAM 2.1 tiny at 512 px, float32, 40 slices, 4
  runs each way): the image encoder faulted 1960-2210 pages in a slice with it, 6100-9600 without, and
  2150-2470 on the main thread. Without it 3 of 10 runs on that thread faulted 18900-36400 pages (74-142
  MiB) a tracking step on average; none of 6 with it more than 1400. The times did not differ beyond this
  machine's noise (10-30 %). On the main thread the pad only reserves address space the heap does not
  touch.

Kept memory must not pile up. glibc places a slice's long-lived allocations (its cached features, the
tensors' own records) in the holes the previous slice's activations left; the next slice's activations
no longer fit there and the heap grows. Measured on 2026-11-28 (an Intel Xeon, SAM 2.1 tiny at 512 px,
float32, ``benchmarks/speed.py``'s 300 slices encoded in one run): the resident set peaked 1209 MiB above
where the encoding ended (3380 against 2171 MiB), and the run at 3838 MiB against 2394 MiB estimated.
Without freed memory kept, glibc's adaptive mmap threshold does the same: its free chunks went from 436
to 1276 while the bytes in use stayed at 280 MiB (``mallinfo2``), and 1059 MiB of holes were left after
300 slices. So between two slices (before each encoder batch and each tracking step)
:func:`release_fragments` reads glibc's free bytes (``mallinfo2``: 0.1 ms) and, once they grew by more
than 256 MiB since the last release, returns the pages inside its free chunks to the kernel
(``malloc_trim`` with a pad that keeps the heap's top). The next slice faults its own working set in
again once, not at every slice. On the same path a script counted 5 releases in 300 slices, and
``speed.py``'s run peaked at 2577 and 2614 MiB (two runs).

When the outermost block ends the previous settings come back and the retained pages are returned to the
kernel (jemalloc: a purge of every arena; glibc: ``malloc_trim``), so an idle Slicer does not keep a
run's peak. Blocks nest and may be entered from several threads: only the outermost one acts. Elsewhere
(macOS, Windows, other allocators), or with ``MEDSEGANY_KEEP_FREED_MEMORY=0`` in the environment, the
block changes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator

from .cpu_tuning import jemalloc_preloaded

OPT_OUT_VARIABLE = "MEDSEGANY_KEEP_FREED_MEMORY"
# jemalloc's mallctl index meaning "every arena" (MALLCTL_ARENAS_ALL)
JEMALLOC_ALL_ARENAS = 4096
# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
# glibc's default M_MMAP_MAX (DEFAULT_MMAP_MAX); mallopt cannot read the value it replaces
GLIBC_DEFAULT_MMAP_MAX = 65536
GLIBC_RETAINED_TRIM_BYTES = 1 << 30
# glibc refuses mmap thresholds above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit); its adaptive threshold stops
# there too, with a trim threshold of twice that, which is what is left set after a run.
GLIBC_MMAP_THRESHOLD_BYTES = 32 << 20
GLIBC_IDLE_TRIM_BYTES = 2 * GLIBC_MMAP_THRESHOLD_BYTES
# glibc's HEAP_MAX_SIZE on 64-bit: a thread's arena grows in heaps of at most this. As the top pad it keeps
# every such heap while a run lasts (see _Glibc.retain). Restored after it: glibc's default pad, 0
# (DEFAULT_TOP_PAD); like the thresholds, a pad set in the environment (MALLOC_TOP_PAD_) is not restored
GLIBC_THREAD_HEAP_BYTES = 64 << 20
GLIBC_DEFAULT_TOP_PAD = 0
# growth of glibc's free bytes since the last release that triggers the next (release_fragments): above
# the free memory one slice of SAM 2.1 tiny at 512 px leaves between slices (130-230 MiB measured), so
# that a steady run releases nothing
GLIBC_FRAGMENT_BYTES = 256 << 20

Restore = Callable[[], None]


class _Jemalloc:
    """jemalloc's ``mallctl`` in this process (preloaded or linked)."""

    name = "jemalloc"

    def __init__(self, mallctl: Callable[..., int]) -> None:
        self.mallctl = mallctl

    @classmethod
    def find(cls) -> _Jemalloc | None:
        try:
            mallctl = ctypes.CDLL(None).mallctl
        except (OSError, AttributeError):  # a jemalloc built with a symbol prefix: leave it alone
            return None
        mallctl.restype = ctypes.c_int
        return cls(mallctl)

    def _read(self, name: str, kind: type) -> int | None:
        value = kind()
        size = ctypes.c_size_t(ctypes.sizeof(value))
        code = self.mallctl(name.encode(), ctypes.byref(value), ctypes.byref(size), None, ctypes.c_size_t(0))
        return int(value.value) if code == 0 else None

    def _write_decay(self, name: str, milliseconds: int) -> bool:
        value = ctypes.c_ssize_t(milliseconds)
        size = ctypes.c_size_t(ctypes.sizeof(value))
        return self.mallctl(name.encode(), None, None, ctypes.byref(value), size) == 0

    def _decay_names(self) -> list[str]:
        arenas = self._read("arenas.narenas", ctypes.c_uint) or 0
        names = ["arenas.dirty_decay_ms", "arenas.muzzy_decay_ms"]  # the defaults of arenas made later
        for index in range(arenas):
            names += [f"arena.{index}.dirty_decay_ms", f"arena.{index}.muzzy_decay_ms"]
        return names

    def retain(self) -> Restore:
        saved: dict[str, int] = {}
        for name in self._decay_names():
            value = self._read(name, ctypes.c_ssize_t)  # None: an arena not created yet
            if value is not None and self._write_decay(name, -1):
                saved[name] = value

        def restore() -> None:
            defaults = {kind: saved.get(f"arenas.{kind}_decay_ms", -1) for kind in ("dirty", "muzzy")}
            for name in self._decay_names():
                kind = "dirty" if name.endswith("dirty_decay_ms") else "muzzy"
                # arenas made during the run took the run's -1: they get the default back
                self._write_decay(name, saved.get(name, defaults[kind]))
            self.mallctl(f"arena.{JEMALLOC_ALL_ARENAS}.purge".encode(), None, None, None, ctypes.c_size_t(0))

        return restore


# glibc's struct mallinfo2, in order
MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks")
MALLINFO2_FIELDS += ("fordblks", "keepcost")


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc 2.33 and later), summed over every arena."""

    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO2_FIELDS]


class _Glibc:
    """glibc's ``mallopt``/``malloc_trim`` (Linux)."""

    name = "glibc"

    def __init__(self, libc: ctypes.CDLL) -> None:
        self.libc = libc
        self._mallinfo2 = getattr(libc, "mallinfo2", None)  # None before glibc 2.33: no release then
        if self._mallinfo2 is not None:
            self._mallinfo2.restype = _MallInfo2
        self.free_after_release = 0  # the fewest free bytes seen since the run began or last released

    def free_bytes(self) -> int | None:
        """Bytes in glibc's free chunks over every arena, resident or not (None: glibc cannot tell)."""
        return None if self._mallinfo2 is None else int(self._mallinfo2().fordblks)

    def release_fragments(self) -> bool:
        """``malloc_trim`` once the free bytes grew by more than GLIBC_FRAGMENT_BYTES (module docstring)."""
        free = self.free_bytes()
        if free is None:
            return False
        self.free_after_release = min(self.free_after_release, free)
        if free - self.free_after_release <= GLIBC_FRAGMENT_BYTES:
            return False
        # the pad keeps the heap's top, where the next slice's working set is: trimming it would shrink
        # the heap, the next slice would grow it again by its working set (420 MiB an image for SAM 2
        # at 1024 px), and that growth would trigger the next release, at every slice
        self.libc.malloc_trim(GLIBC_RETAINED_TRIM_BYTES)
        self.free_after_release = self.free_bytes() or 0
        return True

    @classmethod
    def find(cls) -> _Glibc | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.gnu_get_libc_version  # noqa: B018  (musl has no such symbol)
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            return None
        return cls(libc)

    def retain(self) -> Restore:
        # Setting any threshold ends glibc's adaptive one, so both are set, the mmap one first.
        self.libc.mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_BYTES)
        self.libc.mallopt(M_TRIM_THRESHOLD, GLIBC_RETAINED_TRIM_BYTES)
        # blocks above 32 MiB would still be mapped and unmapped every slice: none are mapped any more
        self.libc.mallopt(M_MMAP_MAX, 0)
        # A thread other than the main one (Slicer's model thread) allocates from heaps of 64 MiB, and
        # glibc unmaps such a heap as soon as it is all free, whatever the trim threshold (heap_trim in
        # its arena.c), so the next slice faults it in again. A pad of a whole heap keeps them.
        self.libc.mallopt(M_TOP_PAD, GLIBC_THREAD_HEAP_BYTES)
        self.free_after_release = self.free_bytes() or 0

        def restore() -> None:
            self.libc.mallopt(M_TOP_PAD, GLIBC_DEFAULT_TOP_PAD)
            self.libc.mallopt(M_MMAP_MAX, GLIBC_DEFAULT_MMAP_MAX)
            self.libc.mallopt(M_TRIM_THRESHOLD, GLIBC_IDLE_TRIM_BYTES)
            self.libc.malloc_trim(0)

        return restore


def process_allocator() -> _Jemalloc | _Glibc | None:
    """The allocator of this process that :func:`retained_freed_memory` tunes, or None (another allocator,
    or ``MEDSEGANY_KEEP_FREED_MEMORY=0``)."""
    if os.environ.get(OPT_OUT_VARIABLE, "1").strip() == "0":
        return None
    return _detected_allocator()


@functools.cache
def _detected_allocator() -> _Jemalloc | _Glibc | None:
    """Found once per process (an allocator cannot change while Python runs; reading /proc/self/maps of
    a torch process takes about 1.4 ms)."""
    return _Jemalloc.find() if jemalloc_preloaded() else _Glibc.find()


class _Retention:
    """The process-wide state: how many blocks are open, and how to undo the outermost one's settings."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.restore: Restore | None = None
        self.tuned: _Jemalloc | _Glibc | None = None  # the allocator the outermost block tuned

    def enter(self) -> str | None:
        with self.lock:
            if self.depth == 0:
                self.tuned = process_allocator()
                self.restore = self.tuned.retain() if self.tuned is not None else None
            self.depth += 1
            return None if self.tuned is None else self.tuned.name

    def release_fragments(self) -> bool:
        with self.lock:
            release = getattr(self.tuned, "release_fragments", None) if self.depth > 0 else None
            return bool(release is not None and release())

    def leave(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                if self.restore is not None:
                    self.restore()
                self.restore, self.tuned = None, None


_RETENTION = _Retention()


@contextlib.contextmanager
def retained_freed_memory(enabled: bool = True) -> Iterator[str | None]:
    """Inside: freed memory stays in the process (see the module docstring). Yields the allocator tuned
    ("jemalloc", "glibc") or None where nothing changed (``enabled`` False, or another allocator)."""
    if not enabled:
        yield None
        return
    allocator = _RETENTION.enter()
    try:
        yield allocator
    finally:
        _RETENTION.leave()


def release_fragments() -> bool:
    """Between two slices of a run that keeps freed memory: under glibc, return the pages inside its free
    chunks to the kernel (the heap's top stays) once they grew by more than 256 MiB since the last time
    (see the module docstring). Returns whether it did; elsewhere (no run, jemalloc, another allocator)
    it does nothing."""
    return _RETENTION.release_fragments()


def retention_depth() -> int:
    """How many :func:`retained_freed_memory` blocks are open (for tests)."""
    return _RETENTION.depth
