"""Stopping a run cleanly: SIGINT (Ctrl-C), SIGTERM (scancel, kill, a scheduler) and SIGUSR1 (SLURM's time-limit
warning) ask the trainer to stop at the next step boundary, after writing a checkpoint of the steps done; it then exits
with 128 + the signal's number. A second Ctrl-C stops at once (losing the steps since the last checkpoint); a second
SIGTERM changes nothing (SLURM sends SIGTERM to every process of a job, and our sbatch script forwards one more).
"""

from __future__ import annotations

import os
import signal
from typing import Dict, Optional

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")


class TrainingStopped(Exception):
    """The run stopped at a step boundary on a signal; ``message`` is the one line to print, ``exit_code`` 128 + n."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum, self.message = signum, message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Remembers the first stop signal; ``install`` / ``restore`` put the handlers in place and back (main thread)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: Dict[int, object] = {}
        self._ignored: set = set()  # ignored when first installed: stay ignored

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def request(self, signum: int) -> None:
        """What a signal does (tests call it directly)."""
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        again = "; press Ctrl-C again to stop at once" if signum == signal.SIGINT else ""
        # os.write, not print: a handler may run while the main thread is inside print (reentrant call)
        os.write(2, f"\nscore-rl: {signal.Signals(signum).name} received: stopping after the current step, with a "
                    f"checkpoint{again}\n".encode())

    def install(self) -> "StopRequest":
        """Put the handlers in place; again after something replaced them (``ray.init`` installs a SIGTERM handler
        of its own that prints a stack dump and exits)."""
        for name in STOP_SIGNALS:
            sig = getattr(signal, name)
            previous = signal.getsignal(sig)
            if sig in self._ignored:
                continue
            if sig not in self._previous:
                if previous is signal.SIG_IGN:  # e.g. `nohup`, or a shell that started us in the background
                    self._ignored.add(sig)
                    continue
                self._previous[sig] = previous
            signal.signal(sig, self._handle)
        return self

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def _handle(self, signum, frame) -> None:
        self.request(signum)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
