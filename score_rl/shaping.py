"""SCoRe reward shaping: the paper's Stage I (Eq. 3) and Stage II (Eq. 4), per turn.

Stage I — learn to correct without collapsing; attempt 1 stays close to the base model:
    max  E[ r(y2, y*) − β2 · KL(π(·|x1) ‖ π_ref(·|x1)) − β1 · KL(π(·|x2) ‖ π_ref(·|x2)) ]
    → turn 1: reward 0,     KL coefficient β2 (strong)
      turn 2: reward r2,    KL coefficient β1

Stage II — multi-turn RL on both attempts with a progress bonus on attempt 2:
    max  E[ Σ_{t=1,2} r̂(y_t, y*) − β1 · KL(π(·|x_t) ‖ π_ref(·|x_t)) ],   r̂(y2) = r2 + α · (r2 − r1)
    → turn 1: reward r1,                    KL coefficient β1
      turn 2: reward r2 + α · (r2 − r1),    KL coefficient β1

Each attempt is credited with its own (shaped) reward; the turn discount γ is applied later, by the advantage
estimator (γ = 0: no credit flows from turn 2 to turn 1). The bonus is never clipped.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

from score_rl.config import ShapingConfig
from score_rl.episode import Episode

STAGE_I, STAGE_II = 1, 2


def stage_at(step: int, cfg: ShapingConfig) -> int:
    """Stage schedule: ``stage1_steps`` steps of Stage I, then Stage II."""
    return STAGE_I if step < cfg.stage1_steps else STAGE_II


def shaping_bonus(r1: float, r2: float, alpha: float) -> float:
    """α · (r2 − r1): wrong→right is rewarded, right→wrong punished, unchanged outcomes get nothing."""
    return alpha * (r2 - r1)


def shaped_turn_rewards(r1: float, r2: float, stage: int, cfg: ShapingConfig) -> Tuple[List[float], List[float]]:
    """(per-turn rewards, per-turn KL coefficients) of one two-turn episode."""
    if stage == STAGE_I:
        return [0.0, r2], [cfg.beta2, cfg.beta1]
    if stage == STAGE_II:
        return [r1, r2 + shaping_bonus(r1, r2, cfg.alpha)], [cfg.beta1, cfg.beta1]
    raise ValueError(f"unknown SCoRe stage {stage}")


def shape_episodes(episodes: Sequence[Episode], stage: int, cfg: ShapingConfig) -> None:
    """Fill every turn's ``shaped_reward`` and ``kl_coef`` in place."""
    for ep in episodes:
        if len(ep.turns) != 2:
            raise ValueError(f"SCoRe shaping needs two-turn episodes, got {len(ep.turns)} turns ({ep.problem_id})")
        rewards, kl_coefs = shaped_turn_rewards(ep.turns[0].reward, ep.turns[1].reward, stage, cfg)
        for turn, reward, coef in zip(ep.turns, rewards, kl_coefs):
            turn.shaped_reward, turn.kl_coef = reward, coef
