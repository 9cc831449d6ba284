"""One memory bound per execution: a candidate that forks cannot multiply its memory limit.

The fork-and-allocate program: N children each touch M MiB and hold it. With RLIMIT_AS alone every child gets its
own ``memory_mb`` (N x M in all); with the execution's memory cgroup, their sum stays under ``memory_mb`` (the kernel
kills the excess inside the cgroup). Counted independently of the code under test: each child that got its memory
prints "ok" while it holds it.
"""

from __future__ import annotations

import os
import sys

import pytest

from score_rl.sandbox import memcg
from score_rl.sandbox.runner import Sandbox, SandboxConfig

LINUX = sys.platform.startswith("linux")
IS_ROOT = LINUX and os.geteuid() == 0
pytestmark = pytest.mark.skipif(not LINUX, reason="the sandbox needs Linux")
HAS_V1_MEMORY = os.path.isfile("/sys/fs/cgroup/memory/memory.limit_in_bytes")


def fork_and_allocate(children: int, mib: int, hold_s: float = 1.5) -> str:
    return f"""
import os, time
kids = []
for _ in range({children}):
    try:
        pid = os.fork()
    except OSError:  # the process limit
        break
    if pid == 0:
        try:
            block = bytearray({mib} << 20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            os.write(1, b"ok\\n")
            time.sleep({hold_s})
        finally:
            os._exit(0)
    kids.append(pid)
statuses = [os.waitpid(pid, 0)[1] for pid in kids]
def f():
    return statuses
"""


def run(program: str, tests: str = "assert f() is not None", **config) -> object:
    config.setdefault("timeout_s", 10.0)
    config.setdefault("memory_mb", 256)
    with Sandbox(SandboxConfig(**config)) as sandbox:
        return sandbox.run(program, tests, ["f"])


def test_a_memory_cgroup_is_available_to_root_here():
    """CI runs as root on a host with a cgroup v1 memory hierarchy: the bound must not quietly fall back there."""
    if not (IS_ROOT and HAS_V1_MEMORY):
        pytest.skip("needs root and a cgroup v1 memory hierarchy (the fallback is tested below)")
    assert memcg.find_parent() is not None


@pytest.mark.skipif(not (IS_ROOT and HAS_V1_MEMORY), reason="needs root and a cgroup v1 memory hierarchy")
def test_forked_children_share_one_memory_bound():
    # 4 x 150 MiB = 600 MiB; each child alone fits the 256 MiB (RLIMIT_AS is per process), two together do not
    result = run(fork_and_allocate(4, 150))
    assert result.isolation["memory_cgroup"] is True
    assert result.stdout.count("ok") <= 1, result.stdout
    assert result.oom_kills >= 3
    assert result.memory_peak_bytes is not None and result.memory_peak_bytes <= 256 << 20


@pytest.mark.skipif(not (IS_ROOT and HAS_V1_MEMORY), reason="needs root and a cgroup v1 memory hierarchy")
def test_an_execution_killed_at_its_memory_bound_reads_memory_limit():
    program = fork_and_allocate(2, 150) + "assert all(s == 0 for s in statuses), statuses\n"
    result = run(program)
    assert not result.passed
    assert result.reason == "memory limit", (result.reason, result.stderr[-500:])


@pytest.mark.skipif(not (IS_ROOT and HAS_V1_MEMORY), reason="needs root and a cgroup v1 memory hierarchy")
def test_cgroups_are_removed_after_each_execution():
    parent = memcg.find_parent()
    before = {n for n in os.listdir(parent[1]) if n.startswith("score_rl_")}
    run(fork_and_allocate(2, 150))
    after = {n for n in os.listdir(parent[1]) if n.startswith("score_rl_")}
    assert after == before


@pytest.mark.skipif(not IS_ROOT, reason="RLIMIT_NPROC is set with a dedicated uid only (root)")
def test_without_a_cgroup_fewer_processes_bound_the_sum():
    result = run(fork_and_allocate(12, 8, hold_s=1.0), memory_cgroup="off", fallback_max_processes=4)
    assert result.isolation["memory_cgroup"] is False
    assert result.memory_peak_bytes is None
    # the candidate itself counts: 3 more processes at most, each within its own RLIMIT_AS
    assert 1 <= result.stdout.count("ok") <= 3, result.stdout


def test_find_parent_v1_under_the_own_cgroup(tmp_path):
    own = tmp_path / "job" / "42"
    own.mkdir(parents=True)
    (own / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    mountinfo = f"35 31 0:32 / {tmp_path} rw,relatime - cgroup cgroup rw,memory\n"
    assert memcg.find_parent(mountinfo, "4:memory:/job/42\n0::/\n") == (1, str(own))
    # a cgroup outside the mount's root is not reachable through it
    mountinfo = f"35 31 0:32 /other {tmp_path} rw,relatime - cgroup cgroup rw,memory\n"
    assert memcg.find_parent(mountinfo, "4:memory:/job/42\n") is None


def test_find_parent_v2_needs_memory_delegated_to_children(tmp_path):
    (tmp_path / "cgroup.procs").write_text("")
    (tmp_path / "cgroup.subtree_control").write_text("cpu pids\n")
    mountinfo = f"41 31 0:38 / {tmp_path} rw,relatime - cgroup2 cgroup2 rw\n"
    assert memcg.find_parent(mountinfo, "0::/\n") is None
    (tmp_path / "cgroup.subtree_control").write_text("cpu memory pids\n")
    assert memcg.find_parent(mountinfo, "0::/\n") == (2, str(tmp_path))


def test_a_named_directory_that_is_no_cgroup_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither a cgroup v1 memory directory nor a cgroup v2"):
        Sandbox(SandboxConfig(memory_cgroup=str(tmp_path)))


def test_stale_execution_cgroups_of_dead_scoring_processes_are_removed(tmp_path):
    dead_pid = 2 ** 22 + 1  # above pid_max's default: no such process
    stale = tmp_path / f"score_rl_{dead_pid}_{'a' * 16}"
    alive = tmp_path / f"score_rl_{os.getpid()}_{'b' * 16}"
    other = tmp_path / "unrelated"
    for d in (stale, alive, other):
        d.mkdir()
    assert memcg.remove_stale((1, str(tmp_path))) == 1
    assert not stale.exists() and alive.exists() and other.exists()


def test_the_fallback_is_said_once(capsys, monkeypatch):
    monkeypatch.setattr(memcg, "find_parent", lambda: None)
    monkeypatch.setattr("score_rl.sandbox.runner._SAID", set())
    Sandbox(SandboxConfig())
    Sandbox(SandboxConfig())
    err = capsys.readouterr().err
    assert err.count("no writable memory cgroup") == 1


def test_an_oom_kill_counts_as_the_executions_own_only_when_it_reached_its_limit(tmp_path):
    """The kernel counts oom_kill on the killed process's cgroup whichever limit ran out (a parent's, the
    machine's): only an execution that reached its own limit is "memory limit"."""
    v1 = memcg.ExecutionCgroup(1, str(tmp_path), 256 << 20)
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (tmp_path / "memory.failcnt").write_text("0\n")
    (tmp_path / "memory.max_usage_in_bytes").write_text(f"{100 << 20}\n")
    assert v1.oom_kills() == 2 and not v1.hit_limit(), "a parent's limit: 100 MiB used of 256"
    (tmp_path / "memory.failcnt").write_text("17\n")
    assert v1.hit_limit()
    (tmp_path / "memory.failcnt").write_text("0\n")
    (tmp_path / "memory.max_usage_in_bytes").write_text(f"{256 << 20}\n")
    assert v1.hit_limit(), "at the limit"
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 1\noom_kill 1\n")
    assert not memcg.ExecutionCgroup(2, str(v2)).hit_limit()
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert memcg.ExecutionCgroup(2, str(v2)).hit_limit()


@pytest.mark.skipif(not (IS_ROOT and HAS_V1_MEMORY), reason="needs root and a cgroup v1 memory hierarchy")
def test_a_cgroup_that_cannot_be_made_is_said_once_however_many_executions(monkeypatch, capsys):
    calls = []

    def refuse(parent, name, limit):
        calls.append(name)
        raise OSError(f"cannot create {parent[1]}/{name}")  # the message names each execution's own path
    monkeypatch.setattr(memcg.ExecutionCgroup, "create", staticmethod(refuse))
    monkeypatch.setattr("score_rl.sandbox.runner._SAID", set())
    with Sandbox(SandboxConfig(timeout_s=10.0)) as sandbox:
        results = [sandbox.run("def f():\n    return 1\n", "assert f() == 1", ["f"]) for _ in range(3)]
    assert len(calls) == 3 and all(r.passed and r.isolation["memory_cgroup"] is False for r in results)
    assert capsys.readouterr().err.count("cannot make a memory cgroup") == 1


def test_a_killed_scoring_process_leaves_no_sandbox_process_behind(tmp_path):
    """The supervisor and the judge die with the scoring process (PR_SET_PDEATHSIG), the candidate with its
    supervisor: nothing runs on until the timeout the dead scoring process held."""
    import signal
    import subprocess
    import time

    import psutil

    script = ("from score_rl.sandbox import Sandbox, SandboxConfig\n"
              "Sandbox(SandboxConfig(timeout_s=60)).run('import time\\ntime.sleep(300)\\ndef f(): return 1', "
              "'assert f() == 1', ['f'])\n")
    scoring = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        tree = []
        while time.monotonic() < deadline:
            tree = psutil.Process(scoring.pid).children(recursive=True)
            if len(tree) >= 3:  # the supervisor, the judge, the candidate
                break
            time.sleep(0.1)
        assert len(tree) >= 3, tree
        time.sleep(0.5)
        scoring.send_signal(signal.SIGKILL)
        scoring.wait()
        _, alive = psutil.wait_procs(tree, timeout=5)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [p.cmdline()[:3] for p in alive]
    finally:
        if scoring.poll() is None:
            scoring.kill()
