"""Per-turn advantage estimators over the group of samples of one problem.

Turn t's return is G_t = R_t + γ · G_{t+1}, where R_t is the turn's shaped reward (minus its KL penalty when the KL
sits in the reward). With γ = 0 (the paper's choice) turn 1's advantage never depends on turn 2's reward.
The baseline of turn t is computed from the same turn of the problem's other samples.

Conditional turn-2 groups (``rollout.corrections_per_attempt`` = m > 1; episodes carry
``Episode.first_attempt_id``): the m sibling episodes that continue one first attempt form turn 2's group — its
baseline estimates the value of correcting *this* attempt, so anything that depends only on the first attempt (such
as the −α·r1 part of SCoRe's bonus) cancels out of turn 2's advantage. Turn 1's group is the problem's distinct first
attempts, each with return R_1 + γ · (mean of its siblings' G_2).
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

    def rewards_of(i: int) -> List[float]:
        rewards = [t.shaped_reward for t in episodes[i].turns]
        if kl_penalties is not None:
            rewards = [r - t.kl_coef * kl for r, t, kl in zip(rewards, episodes[i].turns, kl_penalties[i])]
        return rewards

    for members in groups.values():
        if all(episodes[i].first_attempt_id is None for i in members):
            adv = fn(torch.tensor([turn_returns(rewards_of(i), gamma) for i in members], dtype=torch.float64))
            for row, i in enumerate(members):
                for t, turn in enumerate(episodes[i].turns):
                    turn.advantage = float(adv[row, t])
        else:
            _conditional_advantages(episodes, members, rewards_of, fn, gamma)


def _conditional_advantages(episodes, members: List[int], rewards_of, fn, gamma: float) -> None:
    """Turn ≥ 2 baselined among the siblings of one first attempt; turn 1 among the problem's distinct attempts."""
    siblings: Dict[int, List[int]] = defaultdict(list)
    for i in members:
        if episodes[i].first_attempt_id is None:
            raise ValueError(f"problem {episodes[i].problem_id} mixes episodes with and without a shared first attempt")
        siblings[episodes[i].first_attempt_id].append(i)
    first_returns = []
    for attempt, sibs in siblings.items():
        if any(episodes[i].turns[0].response_ids != episodes[sibs[0]].turns[0].response_ids for i in sibs):
            raise ValueError(f"episodes of first attempt {attempt} ({episodes[sibs[0]].problem_id}) do not share it")
        rewards = {i: rewards_of(i) for i in sibs}
        later = {i: turn_returns(rewards[i][1:], gamma) for i in sibs}  # G_2, G_3, ... of each sibling
        adv = fn(torch.tensor([later[i] for i in sibs], dtype=torch.float64))
        for row, i in enumerate(sibs):
            for t, turn in enumerate(episodes[i].turns[1:]):
                turn.advantage = float(adv[row, t])
        # the first attempt is the same in every sibling: one return, its continuation valued by the siblings' mean
        first_returns.append(rewards[sibs[0]][0] + gamma * sum(later[i][0] for i in sibs) / len(sibs))
    adv1 = fn(torch.tensor([[g] for g in first_returns], dtype=torch.float64))
    for row, sibs in enumerate(siblings.values()):
        for i in sibs:
            episodes[i].turns[0].advantage = float(adv1[row, 0])
