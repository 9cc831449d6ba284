"""What an execution produced, read by the scoring process: captured output, the traceback's last line, the judge's
outcome record, and the one reason a run is given (``score_rl.sandbox.runner``)."""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any, Dict, Optional


class _Capture:
    """Keeps the first and the last ``limit // 2`` bytes of a stream, counting the rest."""

    def __init__(self, limit: int):
        self.half = max(limit // 2, 64)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            del self.tail[:-self.half]

    def contains_line(self, token: bytes) -> bool:
        return token in self.head.splitlines() or token in self.tail.splitlines()

    def text(self) -> str:
        omitted = self.total - len(self.head) - len(self.tail)
        gap = f"\n... [{omitted} bytes omitted] ...\n".encode() if omitted else b""
        return bytes(self.head + gap + self.tail).decode("utf-8", "replace")


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::.*)?$")
_SIGNAL_REASONS = {signal.SIGXCPU: "cpu limit", signal.SIGSEGV: "crashed", signal.SIGBUS: "crashed",
                   signal.SIGABRT: "crashed", signal.SIGILL: "crashed", signal.SIGFPE: "crashed",
                   signal.SIGXFSZ: "file size limit"}


_OTHER_EXCEPTIONS = ("StopIteration", "StopAsyncIteration", "GeneratorExit", "ForbiddenReturnValue")


def _exception_line(stderr: str) -> Optional[str]:
    """The "Type: message" line closing a traceback, if one of the last lines of stderr looks like it."""
    for line in reversed(stderr.strip().splitlines()[-3:]):
        match = _EXC_LINE.match(line.strip())
        name = match.group(1).rsplit(".", 1)[-1] if match else ""
        if name.endswith(("Error", "Exception", "Exit", "Interrupt", "Warning")) or name in _OTHER_EXCEPTIONS:
            return line.strip()[:300]
    return None


def classify(exit_code: Optional[int], sig: Optional[int], timed_out: bool, output_limited: bool,
             judged: Optional[Dict[str, Any]], exception: Optional[str], ready: bool = True) -> str:
    """The verdict reason of one execution (the only reason that passes is "passed").

    ``judged``: the judge's outcome record (None if it gave none); ``exit_code`` / ``sig`` / ``exception``: the
    candidate's process. ``ready``: the sandbox reported its setup complete; otherwise "sandbox error".
    """
    if output_limited:
        return "output limit"
    if timed_out:
        return "timeout"
    if not ready:
        return "sandbox error"
    outcome = (judged or {}).get("outcome")
    if outcome == "passed":
        return "passed"
    if outcome == "failed":
        name = str(judged.get("exception") or "").split(":")[0]
        return "failed test" if name == "AssertionError" else "runtime error"
    if outcome == "exited":
        return "exited early" if judged.get("code") == 0 else "runtime error"
    if outcome == "too large":
        return "output limit"
    if outcome == "malformed":
        return "forbidden return value"
    if outcome != "candidate gone":  # the judge gave no outcome, or could not run the tests
        return "sandbox error"
    if sig is not None:
        return _SIGNAL_REASONS.get(sig, "killed")
    if exit_code == 0:
        return "exited early"
    name = (exception or "").split(":")[0].rsplit(".", 1)[-1]
    if name in ("SyntaxError", "IndentationError", "TabError"):
        return "syntax error"
    if name == "MemoryError" or "Cannot allocate memory" in (exception or ""):
        return "memory limit"
    if name == "AssertionError":
        return "failed test"
    if name == "ForbiddenReturnValue":
        return "forbidden return value"
    return "runtime error"


def _read_outcome(fd: int) -> Optional[Dict[str, Any]]:
    """The judge's outcome record from its (finished) result pipe, or None."""
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    try:
        record = json.loads(data.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return record if isinstance(record, dict) else None
