"""The rollout workers as one pool: sampling, the policy version they hold, the weight push, and recovery.

A rollout worker that dies (or comes back from a Ray restart holding the base weights) is waited for, brought up to
the current policy and its shard redone with the same seed, so a step's batch does not depend on a worker's death.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, List, Sequence

from score_rl.envs import Problem
from score_rl.episode import Episode
from score_rl.launch.distributed import ActorGroup
from score_rl.launch.faults import dead_member, death_reason, wait_alive
from score_rl.rollout.worker import run_sharded


class RolloutPool:
    """``workers`` sample with the policy version ``version`` (0: the base model; one more per weight push)."""

    def __init__(self, workers: ActorGroup, learners: ActorGroup, weight_sync, max_restarts: int,
                 log: Callable[[str], None] = print):
        self.workers, self.learners, self.weight_sync = workers, learners, weight_sync
        self.max_restarts, self.log = max_restarts, log
        self.version = 0
        # set while the main thread calls the learner ranks and a rollout runs beside it (off-policy): a worker
        # recovered in the rollout thread waits for it to clear before fetching weights (ranks must see their calls
        # in one order)
        self.learners_busy = threading.Event()

    def sample(self, problems: Sequence[Problem], samples_per_problem: int, temperature: float, seed: int,
               num_turns: int, corrections_per_attempt: int = 1) -> List[Episode]:
        """Episodes for the problems, in order, from the current policy (worker i seeds with seed + i)."""
        return run_sharded(self.workers, problems, samples_per_problem, temperature, seed, num_turns,
                           corrections_per_attempt, weights_version=self.version, recover=self.recover,
                           attempts=self.max_restarts)

    def push_weights(self) -> None:
        """The learner's weights to every worker; a worker that dies meanwhile is waited for (Ray restarts it) and the
        push redone. Then every worker records the new policy version."""
        for attempt in range(self.max_restarts + 1):
            try:
                self.weight_sync.push(self.learners, self.workers)
                break
            except Exception as err:  # only a rollout worker's death is recovered here
                index = dead_member(self.workers, err)
                if index is None or attempt == self.max_restarts:
                    raise
                self.log(f"warning: rollout worker {index} died during the weight sync ({death_reason(err)}); "
                         f"waiting for Ray to restart it, then syncing again")
                wait_alive(self.workers, index)
        self.version += 1
        self._set_version(self.workers)

    def recover(self, index: int, err: BaseException) -> None:
        """Worker ``index`` failed: wait until Ray has restarted it and load the current policy into it; the caller
        redoes its shard."""
        self.log(f"warning: rollout worker {index} failed ({death_reason(err)}); restarting it with the current "
                 f"policy and redoing its shard")
        wait_alive(self.workers, index)
        one = self.workers.subset([index])
        while self.learners_busy.is_set() and threading.current_thread() is not threading.main_thread():
            time.sleep(0.05)  # the step's update is in flight on the ranks: fetch the weights after it
        if self.version > 0:  # version 0 is the base model, which a restarted worker already holds
            self.weight_sync.push(self.learners, one)
        self._set_version(one)

    def _set_version(self, group: ActorGroup) -> None:
        try:
            group.call("set_weights_version", None, self.version)
        except Exception as err:  # a worker that dies here is caught by the next rollout's check
            if dead_member(self.workers, err) is None:
                raise
