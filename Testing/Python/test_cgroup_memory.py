"""A container's memory limit, read from fake cgroup trees of both versions, and used by the estimator."""

from __future__ import annotations

from pathlib import Path

from medsegany.cgroup_memory import cgroup_memory_room

GIB = 2**30


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v2_the_tightest_limit_from_the_group_up_less_what_it_uses_but_reclaimable_cache(tmp_path):
    root = tmp_path / "sys_fs_cgroup"
    write(root / "cgroup.controllers", "cpu memory pids\n")
    write(tmp_path / "cgroup", "0::/kubepods/pod1/ctr\n")
    write(root / "kubepods/pod1/ctr/memory.max", "max\n")  # the container: no limit of its own
    write(root / "kubepods/pod1/ctr/memory.current", f"{GIB}\n")
    write(root / "kubepods/pod1/memory.max", f"{8 * GIB}\n")  # the pod: 8 GiB
    write(root / "kubepods/pod1/memory.current", f"{3 * GIB}\n")
    write(root / "kubepods/pod1/memory.stat", f"anon {2 * GIB}\ninactive_file {GIB}\nactive_file 5\n")
    write(root / "kubepods/memory.max", f"{64 * GIB}\n")
    write(root / "kubepods/memory.current", f"{10 * GIB}\n")
    assert cgroup_memory_room(tmp_path / "cgroup", root) == 6 * GIB  # 8 - (3 - 1 reclaimable)


def test_v1_the_memory_controllers_hierarchy_and_no_limit(tmp_path):
    root = tmp_path / "sys_fs_cgroup"
    write(tmp_path / "cgroup", "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    group = root / "memory/docker/abc"
    write(group / "memory.limit_in_bytes", f"{4 * GIB}\n")
    write(group / "memory.usage_in_bytes", f"{3 * GIB}\n")
    write(group / "memory.stat", f"cache {2 * GIB}\ntotal_inactive_file {GIB}\n")
    write(root / "memory/memory.limit_in_bytes", "9223372036854771712\n")  # the root: no limit
    assert cgroup_memory_room(tmp_path / "cgroup", root) == 2 * GIB
    write(group / "memory.limit_in_bytes", "9223372036854771712\n")
    assert cgroup_memory_room(tmp_path / "cgroup", root) is None


def test_inside_a_container_the_path_names_the_hosts_view_and_the_mount_is_the_group(tmp_path):
    """With a cgroup namespace the container sees its own group at the mount; without one the path in
    /proc/self/cgroup does not exist under the mount, and the mount's files are the container's."""
    root = tmp_path / "sys_fs_cgroup"
    write(root / "cgroup.controllers", "memory\n")
    write(root / "memory.max", f"{2 * GIB}\n")
    write(root / "memory.current", f"{GIB // 2}\n")
    write(tmp_path / "cgroup", "0::/system.slice/docker-abc.scope\n")
    assert cgroup_memory_room(tmp_path / "cgroup", root) == GIB + GIB // 2


def test_no_cgroup_files_mean_no_limit(tmp_path):
    assert cgroup_memory_room(tmp_path / "missing", tmp_path) is None
    write(tmp_path / "cgroup", "0::/\n")
    assert cgroup_memory_room(tmp_path / "cgroup", tmp_path / "nothing_mounted") is None


def test_the_estimator_plans_within_a_containers_limit(monkeypatch):
    import medsegany.cgroup_memory as cgroup_memory
    import medsegany.host_memory as host_memory
    import medsegany.memory_estimate as memory_estimate

    # the machine's 63.5 GiB available plus the process's own 0.5 GiB
    monkeypatch.setattr(host_memory, "available_bytes", lambda: 64 * GIB - GIB // 2)
    monkeypatch.setattr(host_memory, "resident_bytes", lambda: GIB // 2)
    monkeypatch.setattr(cgroup_memory, "cgroup_memory_room", lambda: 2 * GIB)
    assert memory_estimate.available_memory_bytes("cpu") == 2 * GIB + GIB // 2
    monkeypatch.setattr(cgroup_memory, "cgroup_memory_room", lambda: 128 * GIB)  # looser than the host
    assert memory_estimate.available_memory_bytes("cpu") == 64 * GIB
    monkeypatch.setattr(cgroup_memory, "cgroup_memory_room", lambda: None)
    assert memory_estimate.available_memory_bytes("cpu") == 64 * GIB
