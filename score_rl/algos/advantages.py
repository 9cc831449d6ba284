"""Per-turn advantage estimators over the group of samples of one problem.

Turn t's return is G_t = R_t + γ · G_{t+1}, where R_t is the turn's shaped reward (minus its KL penalty when the KL
sits in the reward). With γ = 0 (the paper's choice) turn 1's advantage never depends on turn 2's reward.
The baseline of turn t is computed from the same turn of the problem's other samples.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence

import torch

from score_rl.episode import Episode


def turn_returns(rewards: Sequence[float], gamma: float) -> List[float]:
    returns, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def _rloo(g: torch.Tensor) -> torch.Tensor:
    n = g.shape[0]
    if n < 2:
        raise ValueError("RLOO needs at least 2 samples per problem")
    return g - (g.sum(0, keepdim=True) - g) / (n - 1)


def _group_mean(g: torch.Tensor) -> torch.Tensor:
    return g - g.mean(0, keepdim=True)


def _group_norm(g: torch.Tensor) -> torch.Tensor:
    return (g - g.mean(0, keepdim=True)) / (g.std(0, keepdim=True, unbiased=False) + 1e-6)


def _none(g: torch.Tensor) -> torch.Tensor:
    return g.clone()


ADVANTAGE_ESTIMATORS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "rloo": _rloo, "group_mean": _group_mean, "group_norm": _group_norm, "none": _none,
}


def compute_advantages(
    episodes: Sequence[Episode], estimator: str, gamma: float,
    kl_penalties: Optional[Sequence[Sequence[float]]] = None,
) -> None:
    """Fill every turn's ``advantage`` in place. ``kl_penalties[i][t]``: summed KL of turn t (reward-side KL only)."""
    groups: Dict[str, List[int]] = defaultdict(list)
    for i, ep in enumerate(episodes):
        groups[ep.problem_id].append(i)
    fn = ADVANTAGE_ESTIMATORS[estimator]
    for members in groups.values():
        rows = []
        for i in members:
            rewards = [t.shaped_reward for t in episodes[i].turns]
            if kl_penalties is not None:
                rewards = [r - t.kl_coef * kl for r, t, kl in zip(rewards, episodes[i].turns, kl_penalties[i])]
            rows.append(turn_returns(rewards, gamma))
        adv = fn(torch.tensor(rows, dtype=torch.float64))
        for row, i in enumerate(members):
            for t, turn in enumerate(episodes[i].turns):
                turn.advantage = float(adv[row, t])
