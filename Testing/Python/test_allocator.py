from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest
from medsegany import allocator, cpu_tuning


class FakeAllocator:
    name = "fake"

    def __init__(self) -> None:
        self.retained = 0
        self.restored = 0

    def retain(self):
        self.retained += 1

        def restore() -> None:
            self.restored += 1

        return restore


@pytest.fixture
def fake(monkeypatch) -> FakeAllocator:
    fake = FakeAllocator()
    monkeypatch.setattr(allocator, "process_allocator", lambda: fake)
    return fake


def test_only_the_outermost_block_retains_and_restores(fake):
    with allocator.retained_freed_memory() as name:
        assert name == "fake" and allocator.retention_depth() == 1
        with allocator.retained_freed_memory():
            assert allocator.retention_depth() == 2
        assert (fake.retained, fake.restored) == (1, 0)
    assert (fake.retained, fake.restored) == (1, 1) and allocator.retention_depth() == 0
    with allocator.retained_freed_memory(enabled=False) as name:
        assert name is None and allocator.retention_depth() == 0
    assert fake.retained == 1


def test_an_error_inside_still_restores(fake):
    with pytest.raises(RuntimeError), allocator.retained_freed_memory():
        raise RuntimeError("boom")
    assert (fake.retained, fake.restored, allocator.retention_depth()) == (1, 1, 0)


def test_blocks_of_several_threads_share_one_retention(fake):
    inside, release = threading.Barrier(3), threading.Event()

    def worker() -> None:
        with allocator.retained_freed_memory():
            inside.wait(timeout=10)
            release.wait(timeout=10)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    inside.wait(timeout=10)
    assert allocator.retention_depth() == 2 and fake.restored == 0
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert (fake.retained, fake.restored, allocator.retention_depth()) == (1, 1, 0)


def test_fragments_are_released_only_inside_a_run_and_by_an_allocator_that_can(fake, monkeypatch):
    calls = []
    monkeypatch.setattr(fake, "release_fragments", lambda: calls.append(1) or True, raising=False)
    assert allocator.release_fragments() is False and calls == []  # no run: nothing to release
    with allocator.retained_freed_memory():
        assert allocator.release_fragments() is True and calls == [1]
    assert allocator.release_fragments() is False and calls == [1]
    monkeypatch.delattr(fake, "release_fragments")  # jemalloc's: nothing piles up there
    with allocator.retained_freed_memory():
        assert allocator.release_fragments() is False


def _run_child(code: str, preload: str = "", **variables: str) -> str:
    env = {"LD_PRELOAD": preload, "PATH": "/usr/bin:/bin", **variables}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# the child's resident memory in MiB
RSS_CODE = """
    import numpy as np
    from medsegany.allocator import retained_freed_memory

    def rss_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
"""
# RSS of the child after freeing 128 MiB in blocks of BLOCK_MIB, inside the block and after it, in MiB.
FREED_RSS_CODE = RSS_CODE + """
    before = rss_mib()
    with retained_freed_memory() as name:
        blocks = [np.ones(BLOCK_MIB << 17) for _ in range(128 // BLOCK_MIB)]  # every page touched
        del blocks
        inside = rss_mib() - before
    after = rss_mib() - before
    print(name, round(inside), round(after))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc is Linux's allocator")
@pytest.mark.parametrize("block_mib", [16, 64])
def test_glibc_keeps_freed_blocks_during_a_run_and_returns_them_after(block_mib):
    """16 MiB: below the 32 MiB mmap threshold; 64 MiB (LiteMedSAM's float32 activations, 256 channels of
    256 x 256): above it, mapped and unmapped at every slice unless glibc maps nothing."""
    code = FREED_RSS_CODE.replace("BLOCK_MIB", str(block_mib))
    name, inside, after = _run_child(code).split()
    if name == "None":
        pytest.skip("this Python does not run on glibc")
    # 128 MiB were freed inside the block: glibc's default (mmap above 128 KiB) would return all of it
    assert name == "glibc" and int(inside) >= 100 and int(after) <= 30, (inside, after)
    name, inside, after = _run_child(code, MEDSEGANY_KEEP_FREED_MEMORY="0").split()
    assert name == "None" and int(inside) <= 30, "the opt-out leaves glibc's defaults"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc is Linux's allocator")
def test_glibc_maps_large_blocks_again_after_a_run():
    """After the run glibc's default comes back: a 64 MiB block is mapped, and returned when freed."""
    code = RSS_CODE + """
    with retained_freed_memory() as name:
        pass
    before = rss_mib()
    block = np.ones(64 << 17)
    del block
    print(name, round(rss_mib() - before))
"""
    name, kept = _run_child(code).split()
    if name == "None":
        pytest.skip("this Python does not run on glibc")
    assert int(kept) <= 10, kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc is Linux's allocator")
def test_glibc_returns_the_free_pages_once_they_grew_by_more_than_the_limit_during_a_run():
    """Holes between blocks that stay (as a slice's cached features leave them): 32 MiB of them stay for
    the next slice; 128 MiB more (free bytes grown past the limit, 64 MiB here) go back at the next
    release. 128 MiB freed at the heap's top stay (the next slice's working set; trimming it would release
    again at every slice), and the next call finds nothing new. Outside a run nothing happens."""
    code = RSS_CODE + """
    from medsegany import allocator

    allocator.GLIBC_FRAGMENT_BYTES = 64 << 20
    live = []

    def holes(mib):  # blocks of 4 MiB, every page touched; every other one freed, the rest kept
        blocks = [np.ones(4 << 17) for _ in range(mib // 2)]
        live.extend(blocks[1::2])
        del blocks

    outside = allocator.release_fragments()
    with retained_freed_memory() as name:
        before = rss_mib()
        holes(32)
        small = allocator.release_fragments()
        kept = rss_mib() - before - 32
        holes(128)  # its first 32 MiB fill the holes left before
        large = allocator.release_fragments()
        released = rss_mib() - before - 160
        top = np.ones(128 << 17)  # beyond every hole
        del top
        at_top = allocator.release_fragments()
        top_kept = rss_mib() - before - 160
        again = allocator.release_fragments()
    print(name, outside, small, round(kept), large, round(released), at_top, round(top_kept), again)
"""
    name, outside, small, kept, large, released, at_top, top_kept, again = _run_child(code).split()
    if name == "None":
        pytest.skip("this Python does not run on glibc")
    assert (outside, small, large, at_top, again) == ("False", "False", "True", "True", "False")
    assert int(kept) >= 25 and int(released) <= 12 and int(top_kept) >= 115, (kept, released, top_kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc is Linux's allocator")
def test_glibc_returns_the_free_pages_of_a_worker_threads_arena():
    """Slicer runs its sessions on one model thread (slicer_worker), whose blocks glibc takes from an arena
    of that thread's own, in heaps of 64 MiB, not from the main heap. Its holes are counted and go back
    too: 96 MiB of them, made and released on the worker thread, against a 64 MiB limit."""
    code = RSS_CODE + """
    from medsegany import allocator
    from medsegany.slicer_worker import ModelWorker

    allocator.GLIBC_FRAGMENT_BYTES = 64 << 20
    live = []

    def job(context):
        with retained_freed_memory() as name:
            before = rss_mib()
            blocks = [np.ones(4 << 17) for _ in range(48)]  # 4 MiB each, every page touched
            live.extend(blocks[1::2])
            del blocks
            holes = rss_mib() - before - 96
            released = allocator.release_fragments()
            left = rss_mib() - before - 96
        return [(name, round(holes), released, round(left))]

    worker = ModelWorker()
    ((name, holes, released, left),) = worker.run_sync(job)
    worker.shutdown()
    print(name, holes, released, left)
"""
    name, holes, released, left = _run_child(code).split()
    if name == "None":
        pytest.skip("this Python does not run on glibc")
    assert int(holes) >= 80 and released == "True" and int(left) <= 12, (holes, released, left)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc is Linux's allocator")
def test_glibc_keeps_a_worker_threads_heaps_during_a_run_and_gives_them_back_after():
    """glibc unmaps a thread arena's heap once it is all free, whatever the trim threshold: a slice's
    working set on Slicer's model thread would be faulted in again at every slice. Inside a run 192 MiB
    freed on that thread stay; after the run the thread's next free gives them back."""
    code = RSS_CODE + """
    from medsegany.slicer_worker import ModelWorker

    def job(context):
        with retained_freed_memory() as name:
            before = rss_mib()
            blocks = [np.ones(4 << 17) for _ in range(48)]  # 4 MiB each, every page touched: 3 or 4 heaps
            del blocks
            inside = rss_mib() - before
        np.ones(1 << 17)  # a free of 1 MiB: glibc tries to trim the thread's heap after it
        return [(name, round(inside), round(rss_mib() - before))]

    worker = ModelWorker()
    ((name, inside, after),) = worker.run_sync(job)
    worker.shutdown()
    print(name, inside, after)
"""
    name, inside, after = _run_child(code).split()
    if name == "None":
        pytest.skip("this Python does not run on glibc")
    assert int(inside) >= 150 and int(after) <= 70, (inside, after)


def test_jemalloc_decay_is_off_during_a_run_and_restored_after():
    path = cpu_tuning.find_jemalloc()
    if path is None:
        pytest.skip("jemalloc is not installed here")
    code = """
        import ctypes
        from medsegany.allocator import retained_freed_memory

        mallctl = ctypes.CDLL(None).mallctl

        def decay(name):
            value, size = ctypes.c_ssize_t(), ctypes.c_size_t(8)
            code = mallctl(name.encode(), ctypes.byref(value), ctypes.byref(size), None, ctypes.c_size_t(0))
            assert code == 0
            return value.value

        names = ["arenas.dirty_decay_ms", "arena.0.dirty_decay_ms", "arena.0.muzzy_decay_ms"]
        before = [decay(n) for n in names]
        with retained_freed_memory() as name:
            inside = [decay(n) for n in names]
        print(name, before == [decay(n) for n in names], inside, min(before))
    """
    name, restored, *rest = _run_child(code, preload=path).split(maxsplit=2)
    inside, smallest_before = rest[0].rsplit(maxsplit=1)
    assert name == "jemalloc" and restored == "True"
    assert inside == "[-1, -1, -1]" and int(smallest_before) >= 0
    name, inside, after = _run_child(FREED_RSS_CODE, preload=path).split()
    assert int(inside) >= 100 and int(after) <= 30, (inside, after)
