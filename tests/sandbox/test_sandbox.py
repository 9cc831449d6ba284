"""The sandbox that runs model-written code: the judge's verdict, reasons, in-process hacks and hostile programs.

Hostile programs run concurrently on the pool (one fixture); each must fail with a specific reason within
timeout + 2 s, leave no process and no file behind, and leave the scoring process (and a canary process) alive.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from score_rl.sandbox import procs, wire
from score_rl.sandbox.runner import ExecResult, Job, Sandbox, SandboxConfig, _Capture, _Execution

TIMEOUT = 2.0
IS_ROOT = os.geteuid() == 0
LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(not LINUX, reason="the sandbox needs Linux")


def processes_with_marker(marker: str) -> list:
    """Independent of the code under test: every live process whose environment carries the marker."""
    needle = f"{procs.MARKER_VAR}={marker}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            pass
    return found


def processes_with_uid(uid: int) -> list:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        uids = next((line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")), [])
        state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
        if str(uid) in uids and state not in ("Z", "X"):
            found.append(int(name))
    return found


def assert_nothing_left(result: ExecResult) -> None:
    assert result.survivors == []
    assert processes_with_marker(result.marker) == []
    uid = result.isolation.get("uid")
    if uid not in (None, 0, os.getuid()):
        assert processes_with_uid(uid) == []


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout_s=TIMEOUT, workers=2)) as box:
        yield box


# --- the judge's verdict -------------------------------------------------------------------------------------------
def test_pass_needs_the_judges_verdict(sandbox):
    jobs = [
        ("def f(x):\n    return x + 1\n", "assert f(1) == 2\n", ["f"]),
        ("def f(x):\n    return x + 1\nimport sys\nsys.exit(0)\n", "assert f(1) == 2\n", ["f"]),
        ("def f(x):\n    return x + 1\nimport os\nos._exit(0)\n", "assert f(1) == 2\n", ["f"]),
        ("def f(x):\n    return x + 1\nraise SystemExit\n", "assert f(1) == 2\n", ["f"]),
        ("def f(x):\n    return 0\n", "assert f(1) == 2\n", ["f"]),
        ("def f(x):\n    return 0\nprint('0' * 32)\n", "import sys\nsys.exit(0)\n", ["f"]),  # tests exiting early
    ]
    ok, sys_exit, os_exit, raise_exit, wrong, tests_exit = sandbox.run_many(jobs)
    assert ok.passed and ok.reason == "passed" and ok.exit_code == 0
    for early in (sys_exit, os_exit, raise_exit, tests_exit):
        assert not early.passed and early.reason == "exited early" and early.exit_code == 0
    assert not wrong.passed and wrong.reason == "failed test" and wrong.exception == "AssertionError"


def test_reasons_are_specific(sandbox):
    jobs = [
        ("def f(x) return x\n", "assert f(1) == 1\n", []),
        ("def f(x):\n  return x\n   y = 1\n", "", []),
        ("def f(x):\n    return 1\nx = '''\n", "assert f(1) == 2\n'''\n", []),  # may not swallow the tests
        ("def f(x):\n    return x[5]\n", "assert f([]) == 1\n", ["f"]),
        ("import sys\nsys.exit(3)\n", "", []),
        ("import ctypes\nctypes.string_at(0)\n", "", []),  # a real segmentation fault
    ]
    syntax, indent, swallow, runtime, exit3, segv = sandbox.run_many(jobs)
    assert syntax.reason == indent.reason == swallow.reason == "syntax error"
    assert runtime.reason == "runtime error" and runtime.exception.startswith("IndexError")
    assert exit3.reason == "runtime error" and exit3.exit_code == 3
    assert segv.reason in ("crashed", "killed") and not segv.passed


def test_only_plain_data_comes_back_and_builtins_stay_trusted(sandbox):
    always_equal = "class A:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return A()\n"
    int_subclass = "class I(int):\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return I(0)\n"
    nested = "class A:\n    __eq__ = lambda s, o: True\ndef f(x):\n    return [1, {'k': (A(),)}]\n"
    patched = "import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 0.0\n"
    plain = "import collections\ndef f(x):\n    return [collections.Counter('ab'), {1: (2.0, None, 'x', b'y')}]\n"
    guarded, subclass, deep, abs_patch, fine, explicit = sandbox.run_many([
        (always_equal, "assert f(1) == 2\n", ["f"]),
        (int_subclass, "assert f(1) == 2\n", ["f"]),
        (nested, "assert f(1) == [1, {'k': (2,)}]\n", ["f"]),
        (patched, "assert abs(f(1) - 0.5) < 1e-6\n", ["f"]),
        (plain, "assert f(1) == [{'a': 1, 'b': 1}, {1: (2.0, None, 'x', b'y')}]\n", ["f"]),
        (always_equal, "def check(c):\n    assert c(1) == 2\ncheck(f)\n", ["f"]),
    ])
    for r in (guarded, subclass, deep, explicit):
        assert r.reason == "forbidden return value", r.stderr
    assert abs_patch.reason == "failed test"
    assert fine.passed, fine.stderr


def test_recursive_calls_stay_inside_the_candidate(sandbox):
    solution = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
    result = sandbox.run(solution, "assert fib(20) == 6765\n", ["fib"])
    assert result.passed, result.stderr


# --- in-process attacks: the tests and their comparisons never run in the candidate's interpreter ----------------
CHECK = "def check(candidate):\n    assert math.fabs(candidate(3) - 9) < 1e-9\n"
SETTRACE = ("import sys\ndef f(x):\n    return 0\ndef _noop(*args):\n    return None\n"
            "def _tracer(frame, event, arg):\n    g = frame.f_globals\n"
            "    if callable(g.get('check')) and g['check'] is not _noop:\n        g['check'] = _noop\n"
            "    return _tracer\nsys.settrace(_tracer)\n")
FRAME_NONCE = ("import os, sys\ndef f(x):\n    return 0\n"
               "print(sys._getframe(1).f_locals['job'].get('nonce'), flush=True)\nos._exit(0)\n")
PATCH_MODULE = "import math\nmath.fabs = lambda x: 0.0\ndef f(x):\n    return 0\n"


def test_in_process_attacks_cannot_reach_the_tests(sandbox):
    """Replacing `check` from a trace hook, reading the harness's frames, patching a module the tests import."""
    job = lambda solution: Job(solution, "import math\n" + CHECK + "check(f)\n", ("f",))  # noqa: E731
    honest, settrace, frame, patched = sandbox.run_many([job("def f(x):\n    return x * x\n"), job(SETTRACE),
                                                         job(FRAME_NONCE), job(PATCH_MODULE)])
    assert honest.passed, (honest.reason, honest.stderr, honest.tests_output)
    assert settrace.reason == "failed test" and settrace.exception == "AssertionError", settrace.tests_output
    assert frame.reason == "exited early" and frame.exit_code == 0
    assert patched.reason == "failed test"


def test_the_candidates_process_never_holds_the_tests():
    job = Job("x = 1\n", "assert f(1) == 2\n", ("f",), prelude="P = 1\n")
    execution = _Execution(SandboxConfig(drop_privileges=False), (), job)
    private, _, job_path, judge_path = execution._prepare_dir()
    try:
        assert json.loads(Path(job_path).read_text()) == {"solution": "x = 1\n", "setup": ""}
        assert "assert f(1)" in Path(judge_path).read_text()
    finally:
        shutil.rmtree(private)


def test_the_judges_files_live_under_tmp_whatever_tmpdir_says(tmp_path, monkeypatch):
    """The candidate's mount namespace covers /tmp with a fresh tmpfs; a TMPDIR elsewhere (a SLURM job's directory)
    stays visible to it, and under a user namespace it runs as the scoring user, who can read the judge's files."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "job-tmpdir"))
    (tmp_path / "job-tmpdir").mkdir()
    execution = _Execution(SandboxConfig(drop_privileges=False), (), Job("x = 1\n", "assert f(1) == 2\n", ("f",)))
    private, _, _, judge_path = execution._prepare_dir()
    try:
        assert Path(private).parent == Path("/tmp") and Path(judge_path).stat().st_mode & 0o077 == 0
    finally:
        shutil.rmtree(private)
    assert not any((tmp_path / "job-tmpdir").iterdir())


def test_tests_catching_exceptions_cannot_hide_a_broken_candidate(sandbox):
    catch_all = "try:\n    f(1)\nexcept BaseException:\n    pass\nfor _ in range(3):\n    try:\n        f(2)\n" \
                "    except Exception:\n        pass\n"
    gone, raising, forged = sandbox.run_many([
        ("import os\ndef f(x):\n    os._exit(0)\n", catch_all, ["f"]),
        ("def f(x):\n    raise ValueError('no')\n", catch_all, ["f"]),
        # the candidate owns its side of the wire: it can send anything, and it is decoded as data or refused
        ("import sys\nsys.modules['score_rl_sandbox_wire'].encode = lambda v: {'x': 1}\ndef f(x):\n    return 1\n",
         catch_all, ["f"]),
    ])
    assert gone.reason == "exited early", (gone.reason, gone.judged)
    assert raising.reason == "runtime error" and raising.exception.startswith("ValueError")
    assert forged.reason == "forbidden return value" and forged.judged["outcome"] == "malformed"


def test_judge_imports_used_modules_and_refuses_unsendable_arguments(sandbox):
    uses_math, unsendable = sandbox.run_many([
        ("import math\ndef f(x):\n    return math.sqrt(x)\n", "assert math.isclose(f(4), 2.0)\n", ["f"]),
        ("def f(x):\n    return 1\n", "assert f(object()) == 1\n", ["f"]),
    ])
    assert uses_math.passed, (uses_math.reason, uses_math.tests_output)
    assert unsendable.reason == "sandbox error" and unsendable.judged["outcome"] == "error"


def test_huge_replies_are_refused(sandbox):
    box = Sandbox(SandboxConfig(timeout_s=TIMEOUT, max_message_mb=1))
    result = box.run("def f():\n    return 'x' * (2 << 20)\n", "assert f() == ''\n", ["f"])
    assert result.reason == "output limit" and result.judged["outcome"] == "too large"


def test_wire_round_trip_and_refusals():
    import collections
    values = [None, True, 0, -7, 3 ** 200, -(2 ** 64), 1.5, -0.0, float("inf"), 1e300, 2j, "é\ud800", b"\x00b",
              bytearray(b"z"), (1, (2,)), [1, [2.0]], {1, 2}, frozenset({"a"}), {(1, 2): [None], "k": {"n": 1}},
              collections.Counter("aab"), collections.OrderedDict(a=1), collections.deque([1], maxlen=3),
              range(1, 9, 2), collections.defaultdict(list, {"a": [1]}), ()]
    for value in values:
        back = wire.decode(json.loads(json.dumps(wire.encode(value))))
        assert back == value and type(back) is type(value), (value, back)
        if isinstance(value, (tuple, list)):
            assert [type(x) for x in back] == [type(x) for x in value]
    nan = wire.decode(json.loads(json.dumps(wire.encode(float("nan")))))
    assert nan != nan
    cyclic = []
    cyclic.append(cyclic)

    class Sub(int):
        pass

    for bad in (Sub(1), object(), cyclic, [1, {"k": lambda: 0}], ValueError()):
        with pytest.raises(wire.ForbiddenReturnValue):
            wire.encode(bad)
    for bad in ({"zz": []}, {"t": 1}, {"r": [1.5]}, {"s": [[1]]}, {"d": [[[1], 2]]}, {"a": 1, "b": 2, "c": 3}):
        with pytest.raises((ValueError, TypeError)):
            wire.decode(bad)


def test_isolation_is_recorded(sandbox):
    result = sandbox.run("import os\nprint(os.getuid(), os.getcwd(), os.environ['HOME'], sorted(os.environ))\n")
    assert result.passed
    iso = result.isolation
    assert set(iso) >= {"network_isolated", "pid_namespace", "readonly_root", "uid"}
    if IS_ROOT and iso["namespaces"]:
        assert iso["network_isolated"] and iso["pid_namespace"] and iso["readonly_root"] and iso["private_tmp"]
        assert iso["uid"] not in (0, os.getuid())
        assert iso["errors"] == []
        uid, cwd, home, env = result.stdout.splitlines()[0].split(" ", 3)
        assert int(uid) == iso["uid"] and cwd == home == "/tmp"
        assert eval(env) == ["HOME", "LANG", "LC_ALL", "PATH", procs.MARKER_VAR, "TMPDIR"]


def test_hidden_paths_and_scrubbed_environment(sandbox, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    box = Sandbox(SandboxConfig(timeout_s=TIMEOUT))
    project = str(Path(__file__).resolve().parents[2])
    # the project directory is hidden: empty, or absent when it lives under a path the sandbox replaces (/tmp)
    result = box.run(f"import os\np = {project!r}\nprint(sorted(os.listdir(p)) if os.path.isdir(p) else [], "
                     "'SECRET_TOKEN' in os.environ)\n")
    assert result.passed
    if result.isolation["namespaces"]:
        assert result.stdout.split("\n")[0] == "[] False"
    else:
        assert "False" in result.stdout


@pytest.mark.skipif(not IS_ROOT, reason="writes a directory into the interpreter's install prefix")
def test_a_hidden_directory_inside_the_interpreter_prefix_is_hidden_in_its_re_exposed_copy_too():
    """The standard library's prefix is bind-mounted whole at /run/score_rl_python (child.py); a dataset installed
    into that prefix (a non-venv install) and hidden must not be readable through the copy."""
    prefix = os.path.realpath(sys.base_prefix)
    secret_dir = Path(prefix) / "lib" / f"score_rl_hidden_{uuid.uuid4().hex[:8]}"
    secret_dir.mkdir()
    try:
        (secret_dir / "tests.txt").write_text("expected answers")
        os.chmod(secret_dir, 0o755)
        os.chmod(secret_dir / "tests.txt", 0o644)
        copy = "/run/score_rl_python" + str(secret_dir)[len(prefix):]
        probe = (f"import os\nfor p in ({str(secret_dir)!r}, {copy!r}):\n"
                 "    print(p, os.path.isfile(os.path.join(p, 'tests.txt')))\n")
        result = Sandbox(SandboxConfig(timeout_s=TIMEOUT, hide_paths=(str(secret_dir),))).run(probe)
        assert result.passed, result.stderr
        if result.isolation["namespaces"]:
            assert result.stdout.split() == [str(secret_dir), "False", copy, "False"], result.stdout
    finally:
        shutil.rmtree(secret_dir)


def test_output_capture_keeps_head_and_tail():
    cap = _Capture(100)
    for i in range(1000):
        cap.add(f"{i:04d}\n".encode())
    text = cap.text()
    assert text.startswith("0000\n") and text.endswith("0999\n") and "bytes omitted" in text
    assert len(text) < 200 and cap.total == 5000
    assert cap.contains_line(b"0999") and not cap.contains_line(b"0500")


def test_sweep_tags_refuse_to_match_the_scoring_process():
    with pytest.raises(ValueError):
        procs.Tags(marker="a" * 32, pidns=procs.own_pidns())
    with pytest.raises(ValueError):
        procs.Tags(marker="a" * 32, uid=os.getuid())
    with pytest.raises(ValueError):
        procs.Tags(marker="short")
    assert os.getpid() not in procs.find(procs.Tags(marker=uuid.uuid4().hex))


def test_pool_runs_concurrently_in_order():
    with Sandbox(SandboxConfig(timeout_s=TIMEOUT, workers=2)) as box:
        start = time.monotonic()
        results = box.run_many([(f"import time\ntime.sleep(1.5)\nprint({i})\n", "", []) for i in range(4)])
        elapsed = time.monotonic() - start
    assert [r.stdout.split()[0] for r in results] == ["0", "1", "2", "3"]
    assert all(r.passed for r in results)
    # one at a time would take >= 6 s of sleeping; two at a time ~3 s plus start-up (a behaviour, not a benchmark)
    assert elapsed < 5.0, f"4 x 1.5 s sleeps on 2 workers took {elapsed:.2f} s: the pool does not run concurrently"


# --- hostile programs ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile(sandbox):
    """Run every hostile program once, concurrently; yield {name: (result, context)}."""
    tag = uuid.uuid4().hex
    home = os.path.expanduser("~")
    project = str(Path(__file__).resolve().parents[2])
    outside = [f"/tmp/score_rl_escape_{tag}", f"{home}/score_rl_escape_{tag}", f"{project}/score_rl_escape_{tag}",
               f"/var/tmp/score_rl_escape_{tag}", f"/dev/shm/score_rl_escape_{tag}"]
    detached_file = f"/tmp/score_rl_detached_{tag}"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.05)
    port = server.getsockname()[1]
    canary = subprocess.Popen(["sleep", "60"])
    wrong = "\ndef f():\n    return None\n"
    programs = {
        "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "memory_10gb": "x = bytearray(10 * 1024 ** 3)\n" + wrong,
        "infinite_loop": "while True:\n    pass\n",
        "ignore_sigterm": "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(100)\n",
        "write_outside": "import os\nfor p in %r:\n    try:\n        open(p, 'w').write('pwned')\n    except OSError:\n"
                         "        pass\nopen(os.path.join(os.environ['HOME'], 'ok'), 'w').write('inside is fine')\n"
                         "open(%r, 'w').write('pwned')\n" % (outside, outside[2]),
        "socket": f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n"
                  "s.sendall(b'hello')\n" + wrong,
        "read_stdin": "import sys\ndata = sys.stdin.read()\nline = input()\n" + wrong,
        "kill_parent": "import os\ntry:\n    os.kill(os.getppid(), 9)\nexcept OSError:\n    pass\n"
                       "try:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\n" + wrong,
        "detached_child": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                          "        time.sleep(1.5)\n        open(%r, 'w').write('survived')\n"
                          "        print('survived')\n    os._exit(0)\n" % detached_file + wrong,
        "output_flood": "while True:\n    print('x' * 10000)\n",
    }
    names = list(programs)
    started = time.monotonic()
    results = sandbox.run_many([(programs[n], "assert f() == 1\n", ["f"]) for n in names])
    finished = time.monotonic()
    try:
        server.accept()
        connected = True
    except OSError:
        connected = False
    context = {"outside": outside, "detached_file": detached_file, "connected": connected, "canary": canary,
               "finished": finished, "started": started}
    yield {n: (r, context) for n, r in zip(names, results)}
    canary.kill()
    canary.wait()
    server.close()


def _check_common(result: ExecResult, reasons: tuple) -> None:
    assert not result.passed
    assert result.reason in reasons, (result.reason, result.exception, result.stderr[-500:])
    assert result.duration_s <= TIMEOUT + 2.0, result.duration_s
    assert_nothing_left(result)


def test_fork_bomb(hostile):
    result, ctx = hostile["fork_bomb"]
    _check_common(result, ("timeout", "runtime error", "memory limit"))
    assert ctx["canary"].poll() is None


def test_allocating_10gb(hostile):
    result, _ = hostile["memory_10gb"]
    _check_common(result, ("memory limit",))
    assert result.exception.startswith("MemoryError")


def test_infinite_loop(hostile):
    result, _ = hostile["infinite_loop"]
    _check_common(result, ("timeout",))
    assert result.timed_out and result.duration_s >= TIMEOUT


def test_ignoring_sigterm(hostile):
    result, _ = hostile["ignore_sigterm"]
    _check_common(result, ("timeout",))


def test_writing_outside_the_working_directory(hostile):
    result, ctx = hostile["write_outside"]
    _check_common(result, ("runtime error",))
    # read-only, not permitted, or (for a project under /tmp, which the sandbox replaces) not even visible
    assert any(why in result.exception for why in ("Read-only file system", "Permission denied",
                                                   "No such file or directory")), result.exception
    for path in ctx["outside"]:
        assert not os.path.exists(path), path


def test_network(hostile):
    result, ctx = hostile["socket"]
    _check_common(result, ("runtime error", "failed test"))
    if result.isolation.get("network_isolated"):
        assert result.reason == "runtime error" and "Network is unreachable" in result.exception
        assert not ctx["connected"]
    else:  # no network namespace on this OS: at least the attempt is visible
        assert result.isolation.get("network_isolated") is False


def test_reading_stdin(hostile):
    result, _ = hostile["read_stdin"]
    _check_common(result, ("runtime error",))
    assert result.exception.startswith("EOFError") and result.duration_s < TIMEOUT


def test_killing_the_parent(hostile):
    result, ctx = hostile["kill_parent"]
    _check_common(result, ("failed test", "killed"))
    assert ctx["canary"].poll() is None  # kill(-1, 9) reached nothing outside the sandbox
    os.kill(os.getpid(), 0)  # the scoring process is alive (we are running)


def test_detached_child_does_not_outlive_the_execution(hostile):
    result, ctx = hostile["detached_child"]
    _check_common(result, ("failed test",))
    time.sleep(max(0.0, ctx["finished"] + 2.5 - time.monotonic()))  # past the grandchild's 1.5 s sleep
    assert not os.path.exists(ctx["detached_file"])
    assert "survived" not in result.stdout
    assert_nothing_left(result)


def test_output_flood_is_capped(hostile):
    result, _ = hostile["output_flood"]
    _check_common(result, ("output limit",))
    assert len(result.stdout) < SandboxConfig().capture_bytes + 200
    assert result.duration_s < TIMEOUT


# --- weaker isolation modes: the sweep alone must catch what the PID namespace would have -------------------------
def _detached_writer(path: str, clean_exec: bool) -> str:
    if clean_exec:  # sheds the marker variable: only the dedicated uid identifies it
        body = f"os.execve('/bin/sh', ['sh', '-c', 'sleep 1; echo escaped > {path}'], {{}})"
    else:
        body = f"time.sleep(1)\n        open({path!r}, 'w').write('escaped')"
    # The program waits (pipe) until the detached grandchild exists in its own session before it exits, so the
    # escape is always there for the sweep to find (without it, a loaded machine's group kill can win the race).
    return ("import os, time\nr, w = os.pipe()\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.write(w, b'1')\n        {body}\n    os._exit(0)\nos.read(r, 1)\n")


@pytest.mark.skipif(not IS_ROOT, reason="a dedicated uid needs root")
def test_uid_sweep_without_namespaces_kills_detached_exec():
    path = f"/tmp/score_rl_uid_sweep_{uuid.uuid4().hex}"
    box = Sandbox(SandboxConfig(timeout_s=TIMEOUT, namespaces=False, drop_privileges=True))
    result = box.run(_detached_writer(path, clean_exec=True))
    assert result.isolation["namespaces"] is False and result.isolation["uid"] not in (0, None)
    assert result.swept >= 1
    time.sleep(1.6)
    assert not os.path.exists(path)
    assert_nothing_left(result)


def test_marker_sweep_without_namespaces_or_uid():
    path = f"/tmp/score_rl_marker_sweep_{uuid.uuid4().hex}"
    box = Sandbox(SandboxConfig(timeout_s=TIMEOUT, namespaces=False, drop_privileges=False))
    result = box.run(_detached_writer(path, clean_exec=False))
    assert result.isolation["network_isolated"] is False  # recorded, not hidden
    assert result.swept >= 1
    time.sleep(1.6)
    assert not os.path.exists(path)
    assert_nothing_left(result)


def test_user_namespace_mode():
    """What non-root scoring gets: user + mount + network + PID namespaces, capabilities dropped."""
    path = f"/tmp/score_rl_userns_{uuid.uuid4().hex}"
    box = Sandbox(SandboxConfig(timeout_s=TIMEOUT, user_namespace=True))
    program = ("import ctypes, socket\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "assert libc.mount(b'none', b'/', None, 0x20 | 0x1000 | 0x4000, None) != 0  # no remount rw\n"
               "assert libc.umount2(b'/tmp', 2) != 0\n"
               "try:\n    socket.socket().connect(('127.0.0.1', 1))\nexcept OSError as e:\n    print(e.errno)\n"
               + _detached_writer(path, clean_exec=False))
    result = box.run(program)
    if not result.isolation["namespaces"]:
        pytest.skip("user namespaces are not available here: " + "; ".join(result.isolation["errors"]))
    assert result.passed, result.stderr
    assert result.isolation["user_namespace"] and result.isolation["network_isolated"]
    assert result.stdout.split()[0] == "101"  # ENETUNREACH
    time.sleep(1.6)
    assert not os.path.exists(path)
    assert_nothing_left(result)
