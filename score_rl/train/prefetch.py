"""One-step off-policy sampling (``trainer.off_policy_steps=1``): step t+1's batch is sampled while step t learns.

On Ray the next batch is sampled in a driver thread (Ray calls release the GIL while the actors work), so rollout and
learning overlap; in-process it is sampled at the same point, one after the other, so both give the same batches. The
batch waiting for its step is part of the checkpoint (a resumed run trains on it exactly as an uninterrupted one
would). The learner importance-weights the stale batch (algo.is_clip).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Tuple

from score_rl.episode import Episode


class Background:
    """``fn()`` in a thread (``threaded``), else at once; ``result()`` returns its value or raises its exception,
    ``seconds`` is how long it ran."""

    def __init__(self, fn: Callable[[], object], threaded: bool):
        self.value, self.error, self.seconds = None, None, 0.0

        def run() -> None:
            start = time.perf_counter()
            try:
                self.value = fn()
            except BaseException as err:  # re-raised in the caller's thread by result()
                self.error = err
            self.seconds = time.perf_counter() - start

        self.thread = threading.Thread(target=run, name="score-rl-rollout", daemon=True) if threaded else None
        if self.thread is not None:
            self.thread.start()
        else:
            run()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()

    def result(self):
        self.wait()
        if self.error is not None:
            raise self.error
        return self.value


class Prefetch:
    """The batch sampled ahead of its step: ``start(step)`` begins sampling it, ``finish()`` waits for it,
    ``take(step)`` hands it to its step. ``ready`` is what a checkpoint saves: (step, episodes, rollout seconds or
    None)."""

    def __init__(self, sample: Callable[[int], List[Episode]], threaded: bool, learners_busy: threading.Event):
        self.sample, self.threaded, self.learners_busy = sample, threaded, learners_busy
        self.ready: Optional[Tuple[int, List[Episode], Optional[float]]] = None
        self._running: Optional[Tuple[int, Background]] = None

    def take(self, step: int) -> Optional[Tuple[List[Episode], Optional[float]]]:
        """The batch sampled for ``step`` and its rollout time (None: not recorded); None when there is none."""
        ready, self.ready = self.ready, None
        if ready is None or ready[0] != step:
            return None
        return ready[1], ready[2]

    def start(self, step: int) -> None:
        """Sample ``step``'s batch beside the caller's work on the learner ranks (marked busy until ``finish``)."""
        self.learners_busy.set()
        self._running = (step, Background(lambda: self.sample(step), threaded=self.threaded))

    @contextmanager
    def learning(self) -> Iterator[None]:
        """Around the step's work on the learner ranks. On an error of the step's own, the sampling thread is waited
        for before the error propagates (no thread is left driving the workers); not for a dead learner (the run
        aborts) or a second Ctrl-C (it stops at once)."""
        try:
            yield
        except Exception as err:
            from score_rl.launch.faults import actor_died_types

            if self._running is not None and not isinstance(err, actor_died_types()):
                self.learners_busy.clear()
                self._running[1].wait()
            raise
        finally:
            self.learners_busy.clear()  # a worker recovered in the rollout thread may now fetch the weights

    @property
    def running(self) -> bool:
        return self._running is not None

    def finish(self) -> None:
        """Wait for the batch being sampled (its error, if any, is raised here)."""
        if self._running is None:
            return
        step, job = self._running
        self._running = None
        self.ready = (step, job.result(), job.seconds)

    def restore(self, step: int, episodes: List[Episode], seconds: Optional[float]) -> None:
        self.ready = (step, episodes, seconds)
