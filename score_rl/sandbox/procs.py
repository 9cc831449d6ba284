"""Find and kill every process an execution left behind, however it detached (``score_rl.sandbox``'s sweep).

A sandboxed process is recognised by any of three tags, strongest first:

- ``uid``: the dedicated per-execution uid it runs as (root mode). An unprivileged process cannot change its uid, so
  this tag cannot be shed; no other process on the machine uses that uid.
- ``pidns``: the PID namespace it lives in (``/proc/PID/ns/pid``). A process cannot leave its PID namespace.
- ``marker``: ``SCORE_RL_SANDBOX=<token>`` in its initial environment. Weakest: a process that ``execve``s with a
  clean environment sheds it. It is the only tag left when neither namespaces nor a dedicated uid are available.

Processes are signalled through a pidfd opened *before* the tag check, so a recycled pid is never killed by mistake.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import List, Optional

MARKER_VAR = "SCORE_RL_SANDBOX"


def own_pidns() -> Optional[str]:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass(frozen=True)
class Tags:
    """What identifies one execution's processes. Refuses tags that would also match the scoring process."""

    marker: str
    uid: Optional[int] = None
    pidns: Optional[str] = None

    def __post_init__(self) -> None:
        if len(self.marker) < 16:
            raise ValueError("sandbox marker too short to be unique")
        if self.uid is not None and self.uid in (0, os.getuid(), os.geteuid()):
            raise ValueError(f"refusing to sweep uid {self.uid}: the scoring process runs as it")
        if self.pidns is not None and self.pidns == own_pidns():
            raise ValueError("refusing to sweep the scoring process's own PID namespace")


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def matches(pid: int, tags: Tags) -> bool:
    """Whether live process ``pid`` carries one of the tags (zombies never match: they are already dead)."""
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return False
    uids: List[int] = []
    for line in status.splitlines():
        if line.startswith(b"State:") and line.split()[1:2] in ([b"Z"], [b"X"]):
            return False
        if line.startswith(b"Uid:"):
            uids = [int(x) for x in line.split()[1:]]
    if tags.uid is not None and tags.uid in uids:
        return True
    if tags.pidns is not None:
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") == tags.pidns:
                return True
        except OSError:
            pass
    environ = _read(f"/proc/{pid}/environ")
    return environ is not None and f"{MARKER_VAR}={tags.marker}".encode() in environ.split(b"\0")


def _protected() -> set:
    """The calling process, its ancestors and PID 1: never swept, whatever a tag says."""
    pids, pid = {1}, os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        status = _read(f"/proc/{pid}/status") or b""
        ppid = [line.split()[1] for line in status.splitlines() if line.startswith(b"PPid:")]
        pid = int(ppid[0]) if ppid else 0
    return pids


def find(tags: Tags) -> List[int]:
    """Pids of live processes carrying a tag (the calling process and its ancestors excluded)."""
    protected = _protected()
    return [int(name) for name in os.listdir("/proc")
            if name.isdigit() and int(name) not in protected and matches(int(name), tags)]


def _kill(pid: int, tags: Tags) -> bool:
    try:
        pidfd = os.pidfd_open(pid)
    except (ProcessLookupError, AttributeError, OSError):
        pidfd = None
    try:
        if not matches(pid, tags):
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:  # pre-5.3 kernels: a small pid-reuse window remains
            os.kill(pid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def sweep(tags: Tags, timeout_s: float = 2.0) -> tuple:
    """SIGKILL tagged processes until none is left. Returns (number killed, pids still alive at the deadline)."""
    deadline = time.monotonic() + timeout_s
    killed = set()
    while True:
        pids = find(tags)
        if not pids:
            return len(killed), []
        for pid in pids:
            if _kill(pid, tags):
                killed.add(pid)
        if time.monotonic() > deadline:
            return len(killed), find(tags)
        time.sleep(0.002)
