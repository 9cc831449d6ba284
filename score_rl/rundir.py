"""The run directory's contract: what a run writes where, when it counts as finished, its lock, and when a failed
start leaves nothing worth keeping. The trainer, the sweep, its report and slurm/score_rl.sbatch (through
``python -m score_rl.launch.slurm``) all read it from here, so "finished" means one thing everywhere.

A run directory holds::

    config.yaml             the run's config (auto values unresolved), rewritten at every start
    metrics.jsonl           one line per step, in order (a resumed run rewrites the redone steps' lines)
    checkpoints/            step_NNNNNNN/ directories and ``latest`` (score_rl/train/checkpoint.py)
    eval_base.json          the base model's held-out metrics (the start-of-run evaluation)
    pairs.json              Pair-SFT's wrong→right pairs, sampled once from the base model
    best/                   the best policy by trainer.best_metric (best/best.json: its value and step)
    final/                  the trained policy, written after the last step and *before* the final evaluation
    eval_before_after.json  the final evaluation (also .md)
    run_complete.json       the last thing a run writes: the run is finished from here on
    .lock                   held by the process training in the directory (RunDirLock)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict

from score_rl.errors import ConfigError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
EVAL_BASE = "eval_base.json"
EVAL_BEFORE_AFTER = "eval_before_after.json"
EVAL_TABLE = "eval_before_after.md"
PAIRS = "pairs.json"
BEST = "best"
FINAL = "final"
FINAL_CRITIC = "final_critic"
COMPLETE = "run_complete.json"
LOCK = ".lock"
FAILED = "failed.json"  # written by a sweep beside a run that failed


def is_complete(run_dir: str | Path) -> bool:
    """Whether the run finished: trained every step, saved final/ and (if asked) evaluated it. ``final/`` alone is not
    enough: it is written before the final evaluation, which a stop signal may still interrupt."""
    return (Path(run_dir) / COMPLETE).is_file()


def write_complete(run_dir: str | Path, info: Dict) -> None:
    """The run's last write (see is_complete)."""
    from score_rl.utils import dumps_json

    (Path(run_dir) / COMPLETE).write_text(dumps_json(info, indent=2))


def has_checkpoint(run_dir: str | Path) -> bool:
    from score_rl.train.checkpoint import has_checkpoint as _has

    return _has(Path(run_dir) / CHECKPOINTS)


def worth_keeping(run_dir: str | Path) -> bool:
    """Whether anything was computed in the run directory: a checkpoint, a logged step, an evaluation, the final
    policy or Pair-SFT's pairs."""
    d = Path(run_dir)
    metrics = d / METRICS
    return (has_checkpoint(d) or (d / EVAL_BASE).exists() or (metrics.is_file() and metrics.stat().st_size > 0)
            or (d / FINAL).exists() or (d / PAIRS).exists())


class RunDirLock:
    """An exclusive, non-blocking lock on ``run_dir/.lock`` for a trainer's lifetime: two processes never train into
    the same run directory (a sweep re-run while an earlier one's runs still train, a SLURM array submitted twice).
    The OS drops it when the process dies (on NFSv3, a crashed node's lock may outlive it until the server reclaims
    it). Where the filesystem has no locking (e.g. Lustre mounted without flock) it warns and goes on unlocked."""

    def __init__(self, run_dir: str | Path, log: Callable[[str], None] = print):
        import fcntl

        self.path = Path(run_dir) / LOCK
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            raise ConfigError(f"run directory {run_dir} is in use by another score-rl process (pid {holder})") from None
        except OSError as err:
            log(f"warning: cannot lock {self.path} ({err.strerror}); nothing stops a second process training here")
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing the file releases the lock

    @staticmethod
    def held(run_dir: str | Path) -> bool:
        """Whether another process holds the lock (False where locking is unsupported)."""
        import fcntl

        path = Path(run_dir) / LOCK
        if not path.is_file():
            return False
        with open(path, "a") as f:  # opened for writing: NFS emulates flock with fcntl locks, which need it
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            except OSError:
                return False
            fcntl.flock(f, fcntl.LOCK_UN)
        return False
