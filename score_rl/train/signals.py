"""Stopping a run cleanly: SIGINT (Ctrl-C), SIGTERM (scancel, kill, a scheduler) and SIGUSR1 (SLURM's time-limit
warning) ask the trainer to stop at the next step boundary, after writing a checkpoint of the steps done; it then exits
with 128 + the signal's number. A second Ctrl-C stops at once (losing the steps since the last checkpoint); a second
SIGTERM changes nothing (SLURM sends SIGTERM to every process of a job, and our sbatch script forwards one more).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Dict, Optional

from score_rl.launch.faults import TrainingAborted, dead_member, death_reason

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


def stopped_message(signal_name: str, run_dir: Path, done: int, steps: int, start_step: int) -> str:
    """The line a run stopped by a signal before its last step prints: where its steps are and how to resume."""
    ckpt = run_dir / "checkpoints" / f"step_{done:07d}"
    where = f"checkpoint {ckpt}" if done > 0 else "no step was finished, nothing to save"
    if done == start_step and done > 0:
        where = f"no step finished since checkpoint {ckpt}"
    return (f"stopped by {signal_name} after step {done} of {steps}; {where}; to resume, run the same command "
            f"with trainer.run_dir={run_dir.resolve()}")


def final_eval_skipped_message(signal_name: str, run_dir: Path, steps: int) -> str:
    """The line a run stopped by a signal after its last step (before or during the final evaluation) prints."""
    return (f"stopped by {signal_name} after training all {steps} steps (policy in {run_dir / 'final'}); "
            f"the final evaluation was skipped: run the same command with "
            f"trainer.run_dir={run_dir.resolve()} to evaluate")


def aborted_error(err: BaseException, learners, workers, run_dir: Path, last: Optional[Path]) -> TrainingAborted:
    """A one-line TrainingAborted for an actor that died where it cannot be recovered (a learner rank); ``last``: the
    newest intact checkpoint, if any."""
    resume = (f"resume from {last} by running the same command with trainer.run_dir={run_dir.resolve()}"
              if last else "no checkpoint was written yet (set trainer.checkpoint_every); the run restarts from step 0")
    rank = dead_member(learners, err)
    worker = dead_member(workers, err)
    who = (f"learner rank {rank}" if rank is not None else f"rollout worker {worker}" if worker is not None
           else "a Ray actor")
    return TrainingAborted(f"{who} died ({death_reason(err)}); {resume}")
