"""One memory bound for every process of an execution: a memory cgroup per execution (``score_rl.sandbox``).

``RLIMIT_AS`` bounds each process's address space, not their sum: a candidate that forks N children of
``memory_mb`` each touches N x ``memory_mb``. A cgroup's memory limit counts every page its processes touch,
children, double forks and the files they write to the private tmpfs (shared memory) included, and the kernel's OOM
killer acts inside the cgroup only, never on the scoring process.

Where a cgroup is made:

- cgroup v1 (a ``memory`` hierarchy mounted, e.g. ``/sys/fs/cgroup/memory``): under the scoring process's own
  memory cgroup, so the host's or the container's limit still applies above it. Needs write access to that
  directory (root, or a delegated hierarchy).
- cgroup v2 (unified): under the scoring process's own cgroup when its ``cgroup.subtree_control`` already enables
  ``memory`` for its children and the directory is writable; the kernel forbids that for a non-root cgroup holding
  processes, so "auto" finds one only in a root cgroup (e.g. a container's own namespace root). Elsewhere
  ``SandboxConfig.memory_cgroup`` must name a directory the scoring user may write, with ``memory`` in its
  ``cgroup.subtree_control``, that the scoring process is not itself in (a subtree delegated for the purpose).

The candidate's supervisor joins its cgroup first thing (``child.py``), before it unshares or forks, so every
process of the execution is inside it. ``find_parent`` returns None where no cgroup can be made: the runner then
falls back to a lower process limit and says so once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

V1_FILES = {"limit": "memory.limit_in_bytes", "swap_limit": "memory.memsw.limit_in_bytes",
            "peak": "memory.max_usage_in_bytes", "events": "memory.oom_control"}
V2_FILES = {"limit": "memory.max", "swap_limit": "memory.swap.max", "peak": "memory.peak", "events": "memory.events"}


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _mounts(mountinfo: str) -> List[Tuple[str, str, str, List[str]]]:
    """(root, mount point, fs type, super options) of each cgroup mount in /proc/self/mountinfo."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 10:
            continue
        after = line.split(" - ", 1)[1].split()
        if after[0] in ("cgroup", "cgroup2"):
            found.append((fields[3], fields[4], after[0], after[2].split(",") if len(after) > 2 else []))
    return found


def find_parent(mountinfo: Optional[str] = None, self_cgroup: Optional[str] = None) -> Optional[Tuple[int, str]]:
    """(cgroup version, directory) under which this process may make per-execution memory cgroups, or None."""
    mountinfo = _read("/proc/self/mountinfo") if mountinfo is None else mountinfo
    self_cgroup = _read("/proc/self/cgroup") if self_cgroup is None else self_cgroup
    if not mountinfo or not self_cgroup:
        return None
    own = {}  # controller (or "" for v2) -> this process's cgroup path
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                own[controller] = parts[2]
    for root, point, fstype, options in _mounts(mountinfo):
        if fstype == "cgroup" and "memory" in options and "memory" in own:
            path, version = own["memory"], 1
        elif fstype == "cgroup2" and "" in own:
            path, version = own[""], 2
        else:
            continue
        rel = os.path.relpath(path, root) if path.startswith(root) else None
        if rel is None or rel.startswith(".."):
            continue  # our cgroup is outside this mount's view
        directory = os.path.normpath(os.path.join(point, rel))
        if version == 2 and "memory" not in (_read(os.path.join(directory, "cgroup.subtree_control")) or "").split():
            continue
        if os.path.isfile(os.path.join(directory, V1_FILES["limit"] if version == 1 else "cgroup.procs")) and \
                os.access(directory, os.W_OK):
            return version, directory
    return None


def parent_from_path(directory: str) -> Tuple[int, str]:
    """A directory named in the config: its version, or ValueError naming what is missing."""
    if os.path.isfile(os.path.join(directory, V1_FILES["limit"])):
        version = 1
    elif "memory" in (_read(os.path.join(directory, "cgroup.subtree_control")) or "").split():
        version = 2
    else:
        raise ValueError(f"sandbox.memory_cgroup {directory!r} is neither a cgroup v1 memory directory nor a cgroup v2 "
                         "directory with the memory controller enabled for its children")
    if not os.access(directory, os.W_OK):
        raise ValueError(f"sandbox.memory_cgroup {directory!r} is not writable by this process")
    return version, directory


@dataclass
class ExecutionCgroup:
    """The memory cgroup of one execution: made with its limit, joined by the candidate, read, then removed."""

    version: int
    path: str
    limit: int = 0  # bytes

    @classmethod
    def create(cls, parent: Tuple[int, str], name: str, limit_bytes: int) -> "ExecutionCgroup":
        version, directory = parent
        path = os.path.join(directory, name)
        os.mkdir(path, 0o755)
        group = cls(version, path, limit_bytes)
        files = group.files
        try:
            _write(os.path.join(path, files["limit"]), str(limit_bytes))
            if version == 2:
                _write(os.path.join(path, "memory.oom.group"), "1")  # an OOM kills the whole execution
                if os.path.exists(os.path.join(path, files["swap_limit"])):  # (no swap accounting: no file)
                    _write(os.path.join(path, files["swap_limit"]), "0")
            elif os.path.exists(os.path.join(path, files["swap_limit"])):
                _write(os.path.join(path, files["swap_limit"]), str(limit_bytes))  # memory + swap: no swapping out
        except OSError:
            group.remove()
            raise
        return group

    @property
    def files(self) -> dict:
        return V1_FILES if self.version == 1 else V2_FILES

    @property
    def procs(self) -> str:
        return os.path.join(self.path, "cgroup.procs")

    def peak_bytes(self) -> Optional[int]:
        value = _read(os.path.join(self.path, self.files["peak"]))
        return int(value) if value and value.strip().isdigit() else None

    def oom_kills(self) -> int:
        """Processes of this cgroup the kernel's OOM killer killed (v1 kernels >= 4.13 and v2 report it), whichever
        limit ran out: its own, a parent's (the job's, the container's) or the machine's."""
        return self._event("oom_kill")

    def hit_limit(self, peak: Optional[int] = None) -> bool:
        """Whether usage ever reached *this* cgroup's limit: its high-water mark within 1 MiB of the limit, or
        (v1) a failed charge counted in memory.failcnt / memory.memsw.failcnt, or (v2) the "max" event. An OOM kill
        is the execution's own doing only then. (v1 with memory + swap limited as well counts no failcnt on some
        kernels: the high-water mark is the reliable sign.)"""
        peak = self.peak_bytes() if peak is None else peak
        if self.limit and peak is not None and peak >= self.limit - (1 << 20):
            return True
        if self.version == 1:
            values = [_read(os.path.join(self.path, f)) for f in ("memory.failcnt", "memory.memsw.failcnt")]
            return any(v and v.strip().isdigit() and int(v) > 0 for v in values)
        return self._event("max") > 0

    def _event(self, name: str) -> int:
        for line in (_read(os.path.join(self.path, self.files["events"])) or "").splitlines():
            key, _, value = line.partition(" ")
            if key == name and value.strip().isdigit():
                return int(value)
        return 0

    def remove(self, timeout_s: float = 1.0) -> bool:
        """rmdir once its processes are gone (just-killed ones may take a moment to leave). False if it stayed."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)


def remove_stale(parent: Tuple[int, str]) -> int:
    """Remove empty execution cgroups left by a scoring process that died mid-execution. Returns how many."""
    removed = 0
    try:
        names = os.listdir(parent[1])
    except OSError:
        return 0
    for name in names:
        parts = name.split("_")
        if len(parts) != 4 or parts[:2] != ["score", "rl"] or not parts[2].isdigit():
            continue
        if os.path.exists(f"/proc/{parts[2]}"):
            continue  # its scoring process is alive (or the pid was reused: left for later)
        try:
            os.rmdir(os.path.join(parent[1], name))
            removed += 1
        except OSError:
            pass
    return removed

