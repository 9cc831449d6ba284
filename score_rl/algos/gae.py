"""Per-turn GAE(λ) over the tokens of two-turn episodes, in the learner's padded layout.

An episode is a token-level MDP: each response token is an action, taken in the state of everything before it. Inside a
turn the tokens follow each other undiscounted; between turns (from the last token of turn t to the first of turn t+1,
across the correction instruction, which is not an action) the discount is γ = ``shaping.gamma``:

    δ_j = r_j + d_j · V(s_{j+1}) − V(s_j),     A_j = δ_j + d_j · λ · A_{j+1},     return_j = A_j + V(s_j)
    d_j = 1 inside a turn, γ from a turn's last token to the next turn's first, and 0 after the episode's last token.

r_j is the token's reward: −β_t · (log π_old − log π_ref) of the token when the KL sits in the reward (k1), plus the
turn's shaped reward R_t on its last token. So Σ_j r_j over turn t is REINFORCE's per-turn reward, and with λ = 1 every
token's advantage is G_t − V(s_j), G_t = Σ_{j ∈ turn t} r_j + γ · G_{t+1}: REINFORCE with the critic as baseline. With
γ = 0 turn 1's advantages never depend on anything in turn 2.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch

from score_rl.episode import Episode


def gae(rewards: torch.Tensor, values: torch.Tensor, turn: torch.Tensor, gamma: float, lam: float
        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both [B, T] and 0 off actions. ``turn``: 0 where the position is not an action (prompt,
    correction instruction, padding), else the action's 1-based turn index; ``rewards`` / ``values`` are read only at
    actions."""
    n, width = rewards.shape
    advantages = torch.zeros_like(rewards, dtype=torch.float64)
    next_value = torch.zeros(n, dtype=torch.float64)
    next_adv = torch.zeros(n, dtype=torch.float64)
    next_turn = torch.zeros(n, dtype=turn.dtype)  # turn of the next action to the right (0: none)
    for j in reversed(range(width)):
        t = turn[:, j]
        act = t > 0
        discount = torch.where(next_turn == t, 1.0, gamma).to(torch.float64)  # next_value, next_adv are 0 if none
        v = values[:, j].double()
        delta = rewards[:, j].double() + discount * next_value - v
        a = delta + discount * lam * next_adv
        advantages[:, j] = torch.where(act, a, 0.0)
        next_value = torch.where(act, v, next_value)
        next_adv = torch.where(act, a, next_adv)
        next_turn = torch.where(act, t, next_turn)
    returns = torch.where(turn > 0, advantages + values.double(), 0.0)
    return advantages, returns


def token_rewards(batch: Dict[str, torch.Tensor], episodes: Sequence[Episode], kl_in_reward: bool) -> torch.Tensor:
    """r_j of every action in ``collate``'s layout: the detached k1 penalty −β_t · (log π_old − log π_ref) per token
    (when the KL sits in the reward; π_old = the sampling policy, as for REINFORCE's per-turn penalty) plus R_t on each
    turn's last token."""
    actions = batch["turn"] > 0
    rewards = torch.zeros(batch["turn"].shape, dtype=torch.float64)
    if kl_in_reward:
        k1 = batch["sampling_logprobs"].double() - batch["ref_logprobs"].double()
        rewards = torch.where(actions, -batch["kl_coef"].double() * k1, 0.0)
    for i, ep in enumerate(episodes):
        for (start, end), turn in zip(ep.response_spans(), ep.turns):
            if end == start:
                raise ValueError(f"PPO: a turn of {ep.problem_id} has no response token to credit its reward to")
            rewards[i, end - 2] += turn.shaped_reward  # target index of the last token (collate: position p → p-1)
    return rewards


def explained_variance(returns: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(return − V) / Var(return) over the masked tokens (nan when fewer than 2 or the returns are constant)."""
    r, v = returns[mask].double(), values[mask].double()
    if r.numel() < 2 or float(r.var()) == 0.0:
        return float("nan")
    return float(1.0 - (r - v).var() / r.var())


def whiten(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantages shifted and scaled to mean 0, std 1 over the masked tokens (others stay 0)."""
    a = advantages[mask]
    if a.numel() < 2:
        return advantages
    return torch.where(mask, (advantages - a.mean()) / (a.std() + 1e-8), 0.0)
