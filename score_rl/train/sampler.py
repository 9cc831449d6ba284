"""The problem sampler: shuffled passes over the train split, its position part of the checkpoint (exact resume)."""

from __future__ import annotations

import random
from typing import Dict, List, Sequence

from score_rl import seeds
from score_rl.envs import Problem


class ProblemSampler:
    """Shuffled passes over the train split; ``state()`` / ``load()`` save and restore the position exactly."""

    def __init__(self, problems: Sequence[Problem], seed: int):
        self.problems, self.seed = list(problems), seed
        self.epoch, self.position = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> List[int]:
        order = list(range(len(self.problems)))
        random.Random(seeds.problem_order(self.seed, self.epoch)).shuffle(order)
        return order

    def next(self, n: int) -> List[Problem]:
        batch = []
        while len(batch) < n:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffle()
            batch.append(self.problems[self._order[self.position]])
            self.position += 1
        return batch

    def state(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load(self, state: Dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._shuffle()
