"""The memory a Linux container (cgroup) still lets this process use, for the memory plan.

Why: ``/proc/meminfo`` describes the whole machine. A labelling job in a container with a memory limit
(Docker ``--memory``, a Kubernetes pod's ``limits.memory``, a Slurm job) sees the host's free memory
there, so a plan made from it could overrun the limit, and the kernel then kills the process without
a word: no error message, no output. The limit and what the group already uses are in its cgroup files.

Both cgroup versions are read: v2 (``memory.max``, ``memory.current``) and v1 (``memory.limit_in_bytes``,
``memory.usage_in_bytes``), from the process's own group up to the root, since a limit set on a parent
group holds for its children too. Page cache that the kernel can drop (``inactive_file``) is not counted
as used, as Docker and the kubelet count a container's working set.
"""

from __future__ import annotations

from pathlib import Path

# cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit value (9223372036854771712)
NO_LIMIT_ABOVE = 1 << 60


def cgroup_memory_room(
    proc_cgroup: Path | str = "/proc/self/cgroup", root: Path | str = "/sys/fs/cgroup"
) -> int | None:
    """Bytes the tightest memory limit on this process's cgroup and its parents still allows, or None
    when no limit is set (or the files cannot be read: not Linux, no cgroup mounted)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    root = Path(root)
    rooms = []
    v2_mounted = (root / "cgroup.controllers").exists()  # v2 alone: its one hierarchy at the root
    for line in lines:
        hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
        if hierarchy == "0" and controllers == "" and v2_mounted:
            rooms += _rooms(root, path, "memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # v1: the memory controller's own hierarchy
            v1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
            rooms += _rooms(root / "memory", path, *v1)
    return min(rooms) if rooms else None


def _rooms(mount: Path, path: str, limit_file: str, usage_file: str, inactive_key: str) -> list[int]:
    """Room under each limit from the group at ``path`` up to the mount (inside a container the path
    often names the host's view: then only the mount's own files, the container's group, are read)."""
    groups = []
    leaf = mount / path.strip("/")
    if leaf.is_dir() and path.strip("/"):
        groups = [leaf, *[p for p in leaf.parents if p.is_relative_to(mount) and p != mount]]
    groups.append(mount)
    rooms = []
    for group in groups:
        limit = _read_int(group / limit_file)
        if limit is None or limit >= NO_LIMIT_ABOVE:
            continue
        usage = _read_int(group / usage_file) or 0
        reclaimable = _stat(group / "memory.stat").get(inactive_key, 0)
        rooms.append(max(0, limit - max(0, usage - reclaimable)))
    return rooms


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":  # v2: no limit
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    return values
