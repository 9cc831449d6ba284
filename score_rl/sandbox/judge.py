"""The trusted half of an execution: run the tests, calling the candidate's functions through a pipe.

Executed as a script (``python -I -S -B judge.py CONFIG_JSON``) by the scoring process, in a fresh interpreter the
candidate never ran in. Standard library only. Steps:

1. Read the job (prelude, tests, the names of the candidate's functions) and set rlimits on itself.
2. Wait for the candidate's "ready" frame (its program ran to the end without error).
3. Run the prelude (trusted: HumanEval's prompt with its helpers, MBPP's setup code), bind each candidate function
   name to a proxy, import the standard modules the tests use without importing them, run the tests. A proxy call
   sends the arguments (plain data) to the candidate's process and returns the decoded reply (plain data).
4. Write one JSON line to the result pipe: ``{"outcome": ...}`` with "passed", "failed" (an exception in the tests,
   named in "exception"), "exited" (the tests called sys.exit), "candidate gone" (the candidate's process ended or
   broke a call), "too large" (a reply over the size limit), "malformed" (a reply that is not encoded plain data) or
   "error" (the harness could not run the tests, e.g. an argument that is not plain data).

A fault of the candidate is recorded on the connection, so tests that catch exceptions cannot hide it.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import json
import os
import resource
import sys
import traceback


def _load_wire():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wire.py")
    spec = importlib.util.spec_from_file_location("score_rl_sandbox_wire", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


wire = _load_wire()


class _Fault(BaseException):
    """The candidate broke the protocol; a BaseException so that ``except Exception`` in tests does not catch it."""


class _Connection:
    def __init__(self, req: int, resp: int, limit: int):
        self.req, self.resp, self.limit = req, resp, limit
        self.fault = None  # (outcome, detail) of the first fault

    def _fail(self, outcome: str, detail: str) -> _Fault:
        if self.fault is None:
            self.fault = (outcome, detail[:300])
        return _Fault(*self.fault)

    def receive(self):
        try:
            message = wire.recv(self.resp, self.limit)
        except wire.FrameTooLarge as err:
            raise self._fail("too large", str(err)) from None
        except (EOFError, OSError):
            message = None
        except Exception as err:
            raise self._fail("malformed", repr(err)) from None
        if message is None:
            raise self._fail("candidate gone", "the candidate's process ended")
        return message

    def call(self, name: str, args: tuple, kwargs: dict):
        if self.fault is not None:
            raise _Fault(*self.fault)
        try:
            request = {"call": name, "args": wire.encode(tuple(args)), "kwargs": wire.encode(dict(kwargs))}
        except wire.ForbiddenReturnValue as err:
            raise self._fail("error", f"an argument for {name} is not plain data: {err}") from None
        try:
            wire.send(self.req, request)
        except OSError:
            raise self._fail("candidate gone", "the candidate's process ended") from None
        reply = self.receive()
        try:
            return wire.decode(reply["value"])
        except Exception as err:
            raise self._fail("malformed", repr(err)) from None


def _proxy(conn: _Connection, name: str):
    def candidate(*args, **kwargs):
        return conn.call(name, args, kwargs)

    candidate.__name__ = candidate.__qualname__ = name
    return candidate


def _import_used_modules(tests: str, scope: dict) -> None:
    """Standard modules the tests use (``math.isclose``) without importing them: MBPP tests lean on the solution's."""
    try:
        tree = ast.parse(tests)
    except SyntaxError:
        return
    names = {n.value.id for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    for name in sorted(names - set(scope) - set(dir(builtins)) - {"this", "antigravity"}):
        if name in sys.stdlib_module_names:
            try:
                scope[name] = importlib.import_module(name)
            except Exception:
                pass


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return (type(exc).__name__ + (f": {text}" if text else ""))[:300]


def judge(job: dict, conn: _Connection) -> dict:
    """Run the job's tests against the candidate behind ``conn``; the outcome record."""
    try:
        hello = conn.receive()
    except _Fault:
        return {"outcome": conn.fault[0], "detail": conn.fault[1]}
    if hello != {"ready": True}:
        return {"outcome": "malformed", "detail": "no ready message"}
    scope = {"__name__": "__score_rl_tests__", "__builtins__": builtins}
    try:
        exec(compile(job["prelude"], "<prelude>", "exec"), scope)
    except BaseException as exc:
        traceback.print_exc()
        return {"outcome": "error", "detail": f"the prelude failed: {_describe(exc)}"}
    for name in job["functions"]:
        scope[name] = _proxy(conn, name)
    _import_used_modules(job["tests"], scope)
    outcome = {"outcome": "passed"}
    try:
        exec(compile(job["tests"], "<tests>", "exec"), scope)
    except _Fault:
        pass
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
        outcome = {"outcome": "exited", "code": code or 0}
    except BaseException as exc:
        traceback.print_exc()
        outcome = {"outcome": "failed", "exception": _describe(exc)}
    if conn.fault is not None:  # whatever the tests made of it
        return {"outcome": conn.fault[0], "detail": conn.fault[1]}
    return outcome


def main() -> None:
    if sys.platform.startswith("linux"):  # PR_SET_PDEATHSIG: the judge dies with the scoring process
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    cfg = json.loads(sys.argv[1])
    with open(cfg["job"], "rb") as f:
        job = json.loads(f.read())
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_bytes"], cfg["memory_bytes"]))
    try:
        outcome = judge(job, _Connection(cfg["req"], cfg["resp"], cfg["max_message_bytes"]))
    except BaseException as exc:  # the judge itself broke (e.g. out of memory on a huge reply)
        outcome = {"outcome": "error", "detail": f"the judge failed: {_describe(exc)}"}
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.write(cfg["result"], (json.dumps(outcome) + "\n").encode())
    os._exit(0)


if __name__ == "__main__":
    main()
