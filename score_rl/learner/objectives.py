"""Per-algorithm losses of one micro-batch, chosen by algorithm name (``make_objective``):

    reinforce    −A_t · log π + β_t · KL                                      (score_rl/algos/losses.py)
    off-policy   the REINFORCE loss × min(π / π_sampler, algo.is_clip)       (trainer.off_policy_steps > 0)
    ppo          −min(ρ · A, clip(ρ, 1 ± ε) · A) + β_t · KL,  ρ = π / π_old;  critic: the clipped value loss

Each returns one loss per engine it trains (the policy's first, then the critic's) and the parts the learner sums
into its per-rank statistics: ``pg`` always, and the objective's ``sums`` as ``{part}_sum``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from score_rl.algos.losses import ppo_kl_loss, reinforce_kl_loss, value_loss
from score_rl.config import Config
from score_rl.learner.stats import POLICY_STATS

Parts = Dict[str, torch.Tensor]


@dataclass
class Passes:
    """What a micro-batch's forward passes give the objective. ``denominator``: this rank's share of the update's
    loss denominator; ``logits`` / ``ref_logits``: only with the full-KL estimator."""

    b: Dict[str, torch.Tensor]
    logp: torch.Tensor
    ref_logp: torch.Tensor
    mask: torch.Tensor
    denominator: float
    logits: Optional[torch.Tensor] = None
    ref_logits: Optional[torch.Tensor] = None


class Objective:
    """A micro-batch's losses, one per engine (``critic``: the policy's and the critic's), and their parts."""

    sums: Tuple[str, ...] = ()  # parts summed into the rank's statistics as f"{part}_sum", besides the pg loss
    critic = False

    def __init__(self, cfg: Config):
        self.algo = cfg.algo

    def losses(self, p: Passes, values: Callable[[Dict[str, torch.Tensor]], torch.Tensor]) -> Tuple[List, Parts]:
        raise NotImplementedError

    def options(self, p: Passes) -> Dict:
        """The keyword arguments of the policy loss: the KL term and the aggregation."""
        algo = self.algo
        return dict(kl_estimator=algo.kl_estimator, kl_in_loss=not algo.uses_reward_kl(), loss_agg=algo.loss_agg,
                    denominator=p.denominator, logits=p.logits, ref_logits=p.ref_logits)

    def new_stats(self) -> Dict[str, float]:
        """The rank's zeroed statistics of one update."""
        return {"loss": 0.0, "pg_loss_sum": 0.0, **dict.fromkeys(POLICY_STATS, 0.0),
                **{f"{key}_sum": 0.0 for key in self.sums}}

    def add_parts(self, stats: Dict[str, float], parts: Parts) -> None:
        stats["pg_loss_sum"] += float(parts["pg"])
        for key in self.sums:
            stats[f"{key}_sum"] += float(parts[key])


class Reinforce(Objective):
    """−A_t · log π + β_t · KL per token (``reinforce_kl_loss``), A_t the turn's (or the token's) advantage."""

    def losses(self, p, values):
        b = p.b
        loss, parts = reinforce_kl_loss(p.logp, p.ref_logp, b["advantage"], b["kl_coef"], p.mask, **self.options(p))
        return [loss], parts


class OffPolicyReinforce(Reinforce):
    """The REINFORCE loss × w, w = min(π / π_sampler, algo.is_clip) (detached): the batch was sampled one update ago,
    the weight makes its expected gradient the current policy's."""

    sums = ("is_weight", "is_clipped")

    def options(self, p):
        return {**super().options(p), "sampling_logp": p.b["sampling_logprobs"], "is_clip": self.algo.is_clip}


class PPO(Objective):
    """The clipped surrogate + KL (``ppo_kl_loss``) for the policy, the clipped value loss (``value_loss``) for the
    critic, on the token advantages, returns, log π_old and V_old the turns carry."""

    sums = ("value_loss", "clipped", "approx_kl", "ratio_dev")
    critic = True

    def losses(self, p, values):
        b, ppo = p.b, self.algo.ppo
        loss, parts = ppo_kl_loss(p.logp, b["old_logprobs"], p.ref_logp, b["advantage"], b["kl_coef"], p.mask,
                                  ppo.clip_eps, **self.options(p))
        v_loss, v_parts = value_loss(values(b), b["values"], b["returns"], p.mask, ppo.value_clip, self.algo.loss_agg,
                                     p.denominator)
        parts.update(v_parts)
        return [loss, v_loss], parts


OBJECTIVES = {"reinforce": Reinforce, "ppo": PPO}


def make_objective(name: str, cfg: Config) -> Objective:
    """The objective of algorithm ``name``; REINFORCE importance-weighted when trainer.off_policy_steps > 0."""
    if name == "reinforce" and cfg.trainer.off_policy_steps > 0:
        return OffPolicyReinforce(cfg)
    return OBJECTIVES[name](cfg)
