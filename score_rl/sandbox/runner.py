"""Run untrusted Python (model-written code) against trusted tests, isolated from the scoring process.

This module is the project's security boundary: an RL policy is rewarded by what happens here and will exploit any
hole. Each execution is two processes, driven by a thread of a pool:

- the candidate's process (``score_rl/sandbox/child.py``, isolated as below) runs the untrusted solution, then
  answers calls: it reads a function name and arguments, calls the function, writes the return value back. It
  never receives the tests, their expected values or anything that would prove a pass.
- the judge (``score_rl/sandbox/judge.py``), a fresh trusted interpreter the candidate never ran in, runs the trusted
  prelude and tests; the names of the tested functions are proxies that send each call's arguments over a pipe and
  return the decoded reply. Arguments and replies are plain data (``score_rl/sandbox/wire.py``: exact builtin
  types and a few collections, decoded without eval or pickle); anything else is "forbidden return value".

A run passes only on the judge's outcome "passed", written on a pipe only the judge holds after the tests returned.
An early ``sys.exit(0)`` / ``os._exit(0)`` of the candidate ends its process: the judge sees end of file ("exited
early"). The timeout covers both processes; a judge still waiting for its reply at the deadline is killed.

What is isolated (as root, on Linux with namespaces; ``ExecResult.isolation`` records what was actually active):

- processes: own session / process group; own PID namespace whose init is the solution, so every process it
  started dies with it, double forks and ``setsid`` included; afterwards the scoring process SIGKILLs the whole
  group and sweeps the machine for any process still carrying the execution's tags (dedicated uid, PID namespace,
  marker environment variable; see ``score_rl.sandbox.procs``), never the scoring process, its ancestors or PID 1.
  A wall-clock timeout kills everything.
- identity: a random dedicated uid/gid per execution (no supplementary groups, no capabilities, no_new_privs), so
  the solution cannot signal, ptrace or read the files of the scoring process or anything else it does not own.
  With that uid, RLIMIT_NPROC becomes meaningful (it counts per real uid; root ignores it): fork bombs hit it.
- network: a new network namespace with no interface up; connecting anywhere, 127.0.0.1 included, fails.
  Abstract unix sockets are per namespace too; path-based unix sockets are hidden or read-only (below).
- filesystem: a private mount namespace; the whole tree is read-only; /tmp, /var/tmp and /dev/shm are fresh
  size-limited tmpfs owned by the execution (the working directory is /tmp and HOME=TMPDIR=/tmp); /run is replaced;
  /proc shows only the sandbox's processes; ``hide_paths`` (by default the project directory and the scoring
  user's home; the code env adds its dataset) are covered by empty tmpfs so tests and reference solutions cannot be
  read from disk. The standard library is re-exposed read-only under /run/score_rl_python.
- memory: one bound for the whole execution, ``memory_mb`` for all its processes together, private tmpfs files
  included: a memory cgroup per execution (``score_rl.sandbox.memcg``; the kernel's OOM killer acts inside it;
  "memory limit"). Where no cgroup can be made (no writable memory hierarchy, e.g. non-root without delegation) it
  says so once and falls back to RLIMIT_AS per process with RLIMIT_NPROC lowered to ``fallback_max_processes``
  (dedicated uid only): at most that many x ``memory_mb`` (``ExecResult.isolation["memory_cgroup"]`` tells which).
- resources: RLIMIT_AS (memory_mb, per process), RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, no core files, captured
  output capped (``capture_bytes`` kept per stream) and the run killed once it wrote ``max_output_bytes``.
- environment: only PATH, LANG/LC_ALL, HOME, TMPDIR and the marker; stdin is /dev/null; ``python -I -S``.
- the job: the solution runs as module ``solution`` (``if __name__ == "__main__":`` demo blocks are skipped, as
  in HumanEval's harness), then the trusted setup code; the job file (solution and setup only) is unlinked before
  the solution runs. The tests are compiled separately, in the judge (an unterminated string cannot swallow them).
- the judge runs as the scoring user with rlimits (address space, CPU), no sandbox: it runs trusted code only and
  handles the candidate's replies as data (frames over ``max_message_mb`` are refused, "output limit"). The
  candidate cannot signal, ptrace or see it: another uid (root) or another user and PID namespace (non-root).

What is NOT isolated (or only partly):

- the candidate controls its own process, including its side of the wire: each call may return any plain data,
  keep state between calls and see every argument the tests pass (the test inputs); it cannot see expected
  values, the comparisons, the judge's modules or its outcome. A test that passes a non-plain argument, or
  calls something other than the named functions of the solution (classes, mutation of an argument), cannot be
  graded this way ("sandbox error" for arguments that cannot be sent).
- no seccomp filter: the whole syscall surface of the kernel is reachable (a kernel exploit escapes everything).
- the read-only host filesystem outside the hidden paths stays readable (e.g. /etc, /usr, /sys); CPU time is shared
  with the scoring process, bounded by the timeout and the worker count. Without a memory cgroup, RLIMIT_AS bounds
  each process's address space, not their sum, and the private tmpfs (3 x ``tmpfs_mb`` at most) is RAM on top.
- hash randomisation is not pinned (``-I`` ignores PYTHONHASHSEED): set-order-dependent output may vary per run.
- without root, an unprivileged user namespace is used when the kernel allows it: the same namespaces, but the
  processes keep the scoring user's uid (capabilities are dropped), so RLIMIT_NPROC is not set (it would count the
  scoring user's own processes): a fork bomb is bounded only by the timeout, the PID namespace teardown and the
  kernel's per-user limit, and the sweep relies on the PID namespace and the marker.
- with no namespaces at all (``namespaces=False`` or refused by the OS): only the session, rlimits, the dedicated
  uid (root only), the scrubbed environment, the private working directory and the sweep remain; files can be
  written wherever that uid may write, the network is reachable, and as root with a dedicated uid the standard
  library must be world-readable for lazy imports to work. Without namespaces *and* without a dedicated uid the
  candidate runs as the judge's user and could ptrace it: that mode protects nothing against a deliberate attack.
  ``ExecResult.isolation`` always says what was active.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from score_rl.sandbox import memcg, procs
from score_rl.sandbox.outcome import _Capture, _exception_line, _read_outcome, classify

CHILD_SCRIPT = str(Path(__file__).resolve().with_name("child.py"))
JUDGE_SCRIPT = str(Path(__file__).resolve().with_name("judge.py"))
PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
_UID_BASE, _UID_SPAN = 1 << 30, 1 << 29  # dedicated uids: far above any real account


@dataclass
class SandboxConfig:
    timeout_s: float = 5.0  # wall clock, from spawn to the end of the solution's main process
    memory_mb: int = 1024  # all processes of one execution together (cgroup); RLIMIT_AS of each process
    workers: int = 2  # concurrent executions in run_many
    max_processes: int = 64  # RLIMIT_NPROC (with a dedicated uid only)
    memory_cgroup: str = "auto"  # "auto" (a cgroup where possible), "off", or a delegated cgroup directory
    fallback_max_processes: int = 8  # RLIMIT_NPROC when no memory cgroup bounds the sum (dedicated uid only)
    max_file_mb: int = 16  # RLIMIT_FSIZE
    tmpfs_mb: int = 64  # size of the private /tmp (and /var/tmp, /dev/shm)
    max_output_bytes: int = 1 << 20  # stdout + stderr; more kills the run ("output limit")
    capture_bytes: int = 16384  # kept per stream (head and tail halves)
    namespaces: bool = True  # try mount/network/PID namespaces (fall back if the OS refuses)
    drop_privileges: bool = True  # as root: run as a dedicated per-execution uid
    user_namespace: bool = False  # as root too, isolate the way non-root scoring does (a user namespace); tests
    hide_paths: Tuple[str, ...] = ()  # extra directories to hide (default ones: see default_hide_paths)
    max_message_mb: int = 16  # largest reply (one encoded return value) the judge accepts; more is "output limit"
    python: str = sys.executable
    sweep_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.memory_mb < 64 or self.workers < 1 or self.max_processes < 1 or \
                self.fallback_max_processes < 1:
            raise ValueError(f"invalid sandbox config: {self}")


@dataclass
class ExecResult:
    passed: bool
    reason: str  # passed, failed test, syntax error, runtime error, memory limit, timeout, output limit, ...
    exit_code: Optional[int]
    signal: Optional[int]
    timed_out: bool
    duration_s: float
    stdout: str
    stderr: str
    exception: Optional[str] = None  # last line of the traceback, e.g. "AssertionError" or "MemoryError"
    output_bytes: int = 0
    swept: int = 0  # processes killed after the main process ended (or at the timeout)
    survivors: List[int] = field(default_factory=list)  # tagged pids still alive after the sweep (should be empty)
    isolation: Dict[str, Any] = field(default_factory=dict)
    marker: str = ""  # SCORE_RL_SANDBOX=<marker> was in the environment of every process of this execution
    judged: Dict[str, Any] = field(default_factory=dict)  # the judge's outcome record ({} if it gave none)
    tests_output: str = ""  # the judge's stdout and stderr (tail): the tests' prints and tracebacks
    memory_peak_bytes: Optional[int] = None  # the execution's memory cgroup's high-water mark (None: no cgroup)
    oom_kills: int = 0  # processes of the execution the kernel killed at its memory cgroup's limit

    def info(self, stderr_chars: int = 600) -> Dict[str, Any]:
        """A compact, JSON-friendly summary for ``Verdict.info``."""
        return {"exit_code": self.exit_code, "signal": self.signal, "timed_out": self.timed_out,
                "duration_s": round(self.duration_s, 3), "exception": self.exception,
                "stderr_tail": self.stderr[-stderr_chars:], "output_bytes": self.output_bytes, "swept": self.swept,
                "network_isolated": self.isolation.get("network_isolated"), "uid": self.isolation.get("uid"),
                "judge": self.judged.get("outcome"), "judge_detail": self.judged.get("detail")}


def default_hide_paths() -> Tuple[str, ...]:
    """The project checkout (datasets, reference code, the venv) and the scoring user's home directory."""
    paths = [PROJECT_ROOT, os.path.expanduser("~")]
    return tuple(p for p in dict.fromkeys(os.path.realpath(p) for p in paths) if p not in ("/", ""))


_SAID: set = set()


def _say_once(message: str, key: Optional[str] = None) -> None:
    """A fallback or degradation, on stderr, once per process and ``key`` (default: the message; give a fixed key
    where the message names something per execution): never silent, never every execution."""
    if (key or message) not in _SAID:
        _SAID.add(key or message)
        print(message, file=sys.stderr, flush=True)


def _cgroup_parent(config: SandboxConfig) -> Optional[Tuple[int, str]]:
    """Where this sandbox makes its executions' memory cgroups; None (said once) where nothing bounds the sum."""
    if config.memory_cgroup == "off":
        return None
    if config.memory_cgroup != "auto":
        return memcg.parent_from_path(config.memory_cgroup)  # named explicitly: an error if unusable
    parent = memcg.find_parent()
    if parent is not None:
        memcg.remove_stale(parent)
    if parent is None:
        _say_once(f"score-rl sandbox: no writable memory cgroup (cgroup v1 memory hierarchy, or a delegated v2 "
                  f"subtree); each execution is bounded process by process: {config.memory_mb} MiB of address space "
                  f"each, at most {config.fallback_max_processes} processes where a dedicated uid is used")
    return parent


_PRIVATE_ROOT = "/tmp"  # where an execution's files live (see _Execution._prepare_dir)

class _UidAllocator:
    """Random dedicated uids, never two alike among this process's running executions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: set = set()
        self._rng = random.SystemRandom()

    def acquire(self) -> int:
        with self._lock:
            while True:
                uid = _UID_BASE + self._rng.randrange(_UID_SPAN)
                if uid not in self._used:
                    self._used.add(uid)
                    return uid

    def release(self, uid: int) -> None:
        with self._lock:
            self._used.discard(uid)


_UIDS = _UidAllocator()


@dataclass(frozen=True)
class Job:
    """One execution: the untrusted program and the trusted code that grades it."""

    solution: str  # untrusted: runs in the sandboxed candidate process only
    tests: str = ""  # trusted: runs in the judge; raises (AssertionError...) to fail
    functions: Tuple[str, ...] = ()  # names the tests call that the solution defines: proxies in the judge
    prelude: str = ""  # trusted, run in the judge before the tests (HumanEval's prompt with its helpers)
    setup: str = ""  # trusted, run in both processes: after the solution, and in the judge after the prelude


class _Execution:
    """One run: spawn candidate and judge, pump output until exit / timeout / output limit, kill and sweep."""

    def __init__(self, config: SandboxConfig, hide: Tuple[str, ...], job: Job,
                 cgroup_parent: Optional[Tuple[int, str]] = None):
        self.cfg = config
        self.hide = hide
        self.job = job
        self.cgroup_parent = cgroup_parent
        self.cgroup: Optional[memcg.ExecutionCgroup] = None
        self.marker = secrets.token_hex(16)
        self.uid = _UIDS.acquire() if (config.drop_privileges and os.geteuid() == 0) else None
        self.out = _Capture(config.capture_bytes)
        self.err = _Capture(config.capture_bytes)
        self.status = bytearray()

    # --- spawning ------------------------------------------------------------------------------------------------
    def _prepare_dir(self) -> Tuple[str, str, str, str]:
        # under /tmp whatever TMPDIR says: the candidate's mount namespace covers /tmp with a fresh tmpfs, so the
        # judge's files (the tests and what they expect) are out of its sight even where its uid could read them (a
        # user namespace runs it as the scoring user; a TMPDIR such as a SLURM job's directory stays visible)
        private = tempfile.mkdtemp(prefix="score_rl_sandbox_", dir=_PRIVATE_ROOT if os.access(_PRIVATE_ROOT, os.W_OK)
                                   else None)
        workdir = os.path.join(private, "work")
        os.mkdir(workdir, 0o700)
        if self.uid is not None:  # used only without namespaces; the job files themselves stay root-only
            os.chmod(private, 0o711)
            os.chown(workdir, self.uid, self.uid)
        paths = []
        for name, content in (("job.json", {"solution": self.job.solution, "setup": self.job.setup}),
                              ("judge.json", {"tests": self.job.tests, "functions": list(self.job.functions),
                                              "prelude": self.job.prelude + "\n" + self.job.setup})):
            path = os.path.join(private, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(content, f)
            paths.append(path)
        return private, workdir, paths[0], paths[1]

    def _make_cgroup(self) -> None:
        """The execution's memory cgroup (``memory_mb`` for all its processes); None, said once, where it fails."""
        if self.cgroup_parent is None:
            return
        try:
            self.cgroup = memcg.ExecutionCgroup.create(self.cgroup_parent, f"score_rl_{os.getpid()}_{self.marker[:16]}",
                                                       self.cfg.memory_mb << 20)
        except OSError as err:
            _say_once(f"score-rl sandbox: cannot make a memory cgroup under {self.cgroup_parent[1]} ({err}); "
                      f"this execution's processes are bounded one by one (RLIMIT_AS), at most "
                      f"{self.cfg.fallback_max_processes} of them (said once)", key="cgroup create")

    def _spawn(self, workdir: str, job_path: str, status_w: int, rpc: Tuple[int, int]) -> subprocess.Popen:
        cfg = self.cfg
        bounded = self.cgroup is not None  # the cgroup bounds the sum; otherwise fewer processes bound it
        child_cfg = {"job": job_path, "status_fd": status_w, "req_fd": rpc[0], "resp_fd": rpc[1], "workdir": workdir,
                     "uid": self.uid, "namespaces": cfg.namespaces, "user_namespace": cfg.user_namespace,
                     "hide": list(self.hide), "tmpfs_mb": cfg.tmpfs_mb, "memory_bytes": cfg.memory_mb << 20,
                     "cpu_s": int(cfg.timeout_s) + 1, "file_bytes": cfg.max_file_mb << 20,
                     "max_processes": cfg.max_processes if bounded else min(cfg.max_processes,
                                                                            cfg.fallback_max_processes),
                     "cgroup_procs": self.cgroup.procs if bounded else None}
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir,
               "TMPDIR": workdir, procs.MARKER_VAR: self.marker}
        return subprocess.Popen([cfg.python, "-I", "-S", "-B", CHILD_SCRIPT, json.dumps(child_cfg)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd=workdir, start_new_session=True, pass_fds=(status_w, *rpc), close_fds=True)

    def _spawn_judge(self, private: str, judge_path: str, fds: Tuple[int, int, int], log) -> subprocess.Popen:
        cfg = self.cfg
        judge_cfg = {"job": judge_path, "req": fds[0], "resp": fds[1], "result": fds[2],
                     "memory_bytes": cfg.memory_mb << 20, "cpu_s": int(cfg.timeout_s) + 1,
                     "max_message_bytes": cfg.max_message_mb << 20}
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        return subprocess.Popen([cfg.python, "-I", "-S", "-B", JUDGE_SCRIPT, json.dumps(judge_cfg)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=private,
                                start_new_session=True, pass_fds=fds, close_fds=True)

    # --- reading -------------------------------------------------------------------------------------------------
    def _read_into(self, fd: int, sink) -> bool:
        """Read what is available; False on EOF."""
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        if isinstance(sink, bytearray):
            sink.extend(chunk)
        else:
            sink.add(chunk)
        return True

    def _pump(self, proc: subprocess.Popen, status_r: int, deadline: float) -> str:
        """Forward output until the sandbox's main process exits ("exited"), "timeout" or "output limit"."""
        sel = selectors.DefaultSelector()
        streams = {proc.stdout.fileno(): self.out, proc.stderr.fileno(): self.err, status_r: self.status}
        for fd in streams:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        try:
            pidfd = os.pidfd_open(proc.pid)
            sel.register(pidfd, selectors.EVENT_READ)
        except (AttributeError, OSError):
            pidfd = None
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                events = sel.select(remaining if pidfd is not None else min(remaining, 0.01))
                for key, _ in events:
                    if key.fd == pidfd:
                        return "exited"
                    if not self._read_into(key.fd, streams[key.fd]):
                        sel.unregister(key.fd)
                    if self.out.total + self.err.total > self.cfg.max_output_bytes:
                        return "output limit"
                if pidfd is None and os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                    return "exited"
        finally:
            sel.close()
            if pidfd is not None:
                os.close(pidfd)

    def _drain(self, proc: subprocess.Popen, status_r: int, wait_s: float) -> None:
        """Read the pipes to EOF (all writers are dead by now) within ``wait_s``."""
        fds = {proc.stdout.fileno(): self.out, proc.stderr.fileno(): self.err, status_r: self.status}
        deadline = time.monotonic() + wait_s
        with selectors.DefaultSelector() as sel:
            for fd in fds:
                sel.register(fd, selectors.EVENT_READ)
            while sel.get_map() and time.monotonic() < deadline:
                for key, _ in sel.select(max(deadline - time.monotonic(), 0)):
                    if not self._read_into(key.fd, fds[key.fd]) or (
                            key.fd != status_r and self.out.total + self.err.total > self.cfg.max_output_bytes):
                        sel.unregister(key.fd)

    def _report(self) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        setup: Dict[str, Any] = {}
        exit_info: Dict[str, Any] = {}
        for line in bytes(self.status).splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if "exit_code" in item:
                exit_info = item
            else:
                setup = item
        return setup, exit_info

    # --- the whole run -------------------------------------------------------------------------------------------
    def run(self) -> ExecResult:
        start = time.monotonic()
        deadline = start + self.cfg.timeout_s
        private, workdir, job_path, judge_path = self._prepare_dir()
        status_r, status_w = os.pipe()
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        result_r, result_w = os.pipe()
        handed = [status_w, req_r, resp_w, req_w, resp_r, result_w]  # closed here once both processes hold them
        proc = judge = None
        log = os.fdopen(os.open(os.path.join(private, "judge.log"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), "w+b")
        try:
            self._make_cgroup()  # inside the try: the finally below removes it whatever happens next
            proc = self._spawn(workdir, job_path, status_w, (req_r, resp_w))
            judge = self._spawn_judge(private, judge_path, (req_w, resp_r, result_w), log)
            for fd in handed:
                os.close(fd)
            handed = []
            outcome = self._pump(proc, status_r, deadline)
            # the group first, while the unreaped leader still pins the group id; then every tagged process
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._drain_status(status_r)
            setup, _ = self._report()
            pidns = setup.get("pidns") if setup.get("pid_namespace") else None
            if pidns is not None and pidns == procs.own_pidns():
                pidns = None  # a confused report must never turn the sweep against the scoring process
            tags = procs.Tags(marker=self.marker, uid=self.uid, pidns=pidns)
            swept, survivors = procs.sweep(tags, self.cfg.sweep_timeout_s)
            proc.wait()
            self._drain(proc, status_r, 0.5)
            if outcome == "exited":  # the judge sees end of file once every sandboxed process is gone
                try:
                    judge.wait(max(deadline - time.monotonic(), 0.0) + 0.5)
                except subprocess.TimeoutExpired:
                    outcome = "timeout"
            judged = _read_outcome(result_r) if judge.poll() is not None else None
        finally:
            for fd in handed + [status_r, result_r]:
                os.close(fd)
            if judge is not None and judge.poll() is None:
                judge.kill()
                judge.wait()
            log.seek(0)
            judge_output = log.read()[-self.cfg.capture_bytes:].decode("utf-8", "replace")
            log.close()
            if proc is not None:
                for stream in (proc.stdout, proc.stderr):
                    stream.close()
                if proc.returncode is None:
                    proc.kill()
                    proc.wait()
            shutil.rmtree(private, ignore_errors=True)
            if self.uid is not None:
                _UIDS.release(self.uid)
            memory = self._close_cgroup()
        return self._result(proc, outcome, judged, judge_output, time.monotonic() - start, swept, survivors,
                            memory)

    def _close_cgroup(self) -> Tuple[Optional[int], int]:
        """(peak bytes, OOM kills at the execution's own limit) of its cgroup, removed now that its processes are
        gone. An OOM kill while usage never reached this limit (a parent's or the machine's ran out) is not counted:
        the run is then "killed", not "memory limit"."""
        if self.cgroup is None:
            return None, 0
        peak = self.cgroup.peak_bytes()
        kills = self.cgroup.oom_kills() if self.cgroup.hit_limit(peak) else 0
        if not self.cgroup.remove():
            _say_once(f"score-rl sandbox: could not remove the memory cgroup {self.cgroup.path} (a process of the "
                      "execution is still in it; said once)", key="cgroup remove")
        return peak, kills

    def _drain_status(self, status_r: int) -> None:
        """Non-blocking: whatever the sandbox reported so far (its setup report names the PID namespace)."""
        while True:
            try:
                chunk = os.read(status_r, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.status.extend(chunk)

    def _result(self, proc: subprocess.Popen, outcome: str, judged: Optional[Dict[str, Any]], judge_output: str,
                duration: float, swept: int, survivors: List[int], memory: Tuple[Optional[int], int]) -> ExecResult:
        setup, exit_info = self._report()
        timed_out, limited = outcome == "timeout", outcome == "output limit"
        if exit_info:
            exit_code, sig = exit_info["exit_code"], exit_info["signal"]
        elif proc.returncode is not None and proc.returncode < 0:  # the supervisor itself was killed
            exit_code, sig = None, -proc.returncode
        else:
            exit_code, sig = proc.returncode, None
        stdout, stderr = self.out.text(), self.err.text()
        exception = _exception_line(stderr) if exit_code not in (0, None) else None
        reason = classify(exit_code, sig, timed_out, limited, judged, exception, bool(setup.get("ready")))
        if memory[1] and reason not in ("passed", "timeout", "output limit"):
            reason = "memory limit"  # the kernel killed a process at the cgroup's limit: the cause, whatever followed
        if judged and judged.get("outcome") == "failed":
            exception = judged.get("exception")
        if reason == "sandbox error":
            stderr += "\n[sandbox] " + "; ".join(setup.get("errors", []))
        isolation = {k: setup.get(k) for k in ("namespaces", "user_namespace", "network_isolated", "pid_namespace",
                                               "private_proc", "readonly_root", "private_tmp", "hidden", "uid",
                                               "errors", "workdir", "memory_cgroup")}
        return ExecResult(passed=reason == "passed", reason=reason, exit_code=exit_code, signal=sig,
                          timed_out=timed_out, duration_s=duration, stdout=stdout, stderr=stderr, exception=exception,
                          output_bytes=self.out.total + self.err.total, swept=swept, survivors=survivors,
                          isolation=isolation, marker=self.marker, judged=judged or {}, tests_output=judge_output,
                          memory_peak_bytes=memory[0], oom_kills=memory[1])


class Sandbox:
    """Runs jobs (untrusted solution + trusted tests) one by one or concurrently on ``config.workers`` threads."""

    def __init__(self, config: Optional[SandboxConfig] = None):
        self.config = config or SandboxConfig()
        hide = default_hide_paths() + tuple(os.path.realpath(p) for p in self.config.hide_paths)
        self._hide = tuple(dict.fromkeys(p for p in hide if os.path.isdir(p)))
        self._cgroup_parent = _cgroup_parent(self.config)
        self._pool: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()

    def run(self, solution: Union[str, Job], tests: str = "", functions: Sequence[str] = ()) -> ExecResult:
        """Run ``solution`` (untrusted) in the sandbox and ``tests`` (trusted) in the judge; see module docstring.

        ``functions`` names the solution's functions the tests call (proxies in the judge). A ``Job`` says more.
        """
        job = solution if isinstance(solution, Job) else Job(solution, tests, tuple(functions))
        return _Execution(self.config, self._hide, job, self._cgroup_parent).run()

    def run_many(self, jobs: Sequence[Union[Job, Tuple[str, str, Sequence[str]]]]) -> List[ExecResult]:
        """Run ``Job``s or ``(solution, tests, functions)`` tuples on the worker pool; results in input order."""
        if not jobs:
            return []
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="sandbox")
        return list(self._pool.map(lambda job: self.run(job) if isinstance(job, Job) else self.run(*job), jobs))

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
