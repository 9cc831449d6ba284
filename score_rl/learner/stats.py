"""Per-rank sums of an update, their reduction into the step's metrics, and the loss denominator.

    denominator = Σ_trained turns loss_weight · |response|   (token-mean)   or   Σ_non-empty trained turns loss_weight
    metric      = Σ_ranks sum / Σ_ranks count                 (weighted by tokens, not a mean of per-rank means)

A rank returns sums and counts only; the driver (score_rl/train/algorithms.py) adds them up and divides once.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from score_rl.episode import Episode
from score_rl.learner.logprobs import SharedPrefix, shared_prompt_off

# sums describing the policy on a batch (policy_metrics turns them into logprob_mismatch, entropy_proxy, kl_turn*)
POLICY_STATS = ("logprob_mismatch_sum", "neg_logp_sum", "tokens", "kl_turn1_sum", "kl_turn2_sum", "tokens_turn1",
                "tokens_turn2", "shared_rows")


def loss_denominator(episodes: Sequence[Episode], loss_agg: str) -> float:
    """What the step's summed loss is divided by, over all ranks: trained response tokens (token-mean) or trained
    turns with at least one response token (seq-mean-token-sum), each counted with its turn's ``loss_weight``.
    Turns with ``trained`` unset count for nothing."""
    if loss_agg == "token-mean":
        return float(sum(t.loss_weight * len(t.response_ids) for ep in episodes for t in ep.turns if t.trained))
    if loss_agg == "seq-mean-token-sum":
        return float(sum(t.loss_weight for ep in episodes for t in ep.turns if t.trained and t.response_ids))
    raise ValueError(f"unknown loss aggregation '{loss_agg}'")


def add_policy_stats(stats: Dict[str, float], b: Dict[str, torch.Tensor], logp: torch.Tensor,
                     ref_logp: torch.Tensor, mask: torch.Tensor, shared_rows: int) -> None:
    """Adds a micro-batch's ``POLICY_STATS`` to ``stats``: |log π − log π_sampler| and −log π over the loss mask
    (weighted like the loss), and k1 = log π − log π_ref over every response token of each turn."""
    stats["shared_rows"] += shared_rows  # rows whose policy pass ran their prompt once per group (a SharedPrefix)
    stats["logprob_mismatch_sum"] += float(((logp - b["sampling_logprobs"]).abs() * mask).sum())
    stats["neg_logp_sum"] += float((-logp * mask).sum())
    stats["tokens"] += float(mask.sum())
    for t in (1, 2):  # per-token k1 estimate of KL(π ‖ π_ref), over every response token of the turn
        m = b["turn"] == t
        stats[f"kl_turn{t}_sum"] += float(((logp - ref_logp) * m).sum())
        stats[f"tokens_turn{t}"] += float(m.sum())


def shared_rows(model, shared: Optional[SharedPrefix]) -> int:
    """How many rows the last ``token_logprobs(model, ..., shared=shared)`` ran with their prompt shared."""
    return 0 if shared is None or shared_prompt_off(model) else len(shared.group)


def sum_rank_stats(per_rank: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Σ over the ranks of every key of the first rank's statistics."""
    return {k: sum(r[k] for r in per_rank) for k in per_rank[0]}


def policy_metrics(total: Dict[str, float]) -> Dict[str, float]:
    """Summed ``POLICY_STATS`` → per-token means: logprob_mismatch, entropy_proxy (mean −log π), the token count,
    shared_prompt_rows and kl_turn1 / kl_turn2 (mean k1 estimate of KL(π ‖ π_ref) per turn)."""
    tokens = max(total["tokens"], 1.0)
    out = {
        "logprob_mismatch": total["logprob_mismatch_sum"] / tokens,
        "entropy_proxy": total["neg_logp_sum"] / tokens,
        "tokens": total["tokens"],
        "shared_prompt_rows": total["shared_rows"],  # learner.share_prompt_prefix at work: 0 when it is off
    }
    for t in (1, 2):
        out[f"kl_turn{t}"] = total[f"kl_turn{t}_sum"] / max(total[f"tokens_turn{t}"], 1.0)
    return out


def reduce_rank_stats(per_rank: Sequence[Dict[str, float]], denominator: float) -> Dict[str, float]:
    """The ranks' sums and counts → the step's metrics, weighted by tokens (not a mean of per-rank means).
    ``denominator``: the step's ``loss_denominator``."""
    total = sum_rank_stats(per_rank)
    tokens = max(total["tokens"], 1.0)
    policy = policy_metrics(total)
    out = {
        "loss": total["loss"],
        "pg_loss": total["pg_loss_sum"] / max(denominator, 1.0),
        "logprob_mismatch": policy.pop("logprob_mismatch"),
        "entropy_proxy": policy.pop("entropy_proxy"),
        "grad_norm": per_rank[0]["grad_norm"],  # the global norm: the same on every rank
        **policy,  # tokens, shared_prompt_rows, kl_turn1, kl_turn2 (of π_old, the policy before the update)
    }
    if "value_loss_sum" in total:  # PPO: per-token means over the update's trained tokens (weighted as in the loss)
        out["value_loss"] = total["value_loss_sum"] / max(denominator, 1.0)
        for key in ("clipped", "approx_kl", "ratio_dev"):
            out[{"clipped": "clip_frac"}.get(key, key)] = total[f"{key}_sum"] / tokens
        out["critic_grad_norm"] = per_rank[0]["critic_grad_norm"]
    if "is_weight_sum" in total:  # one-step off-policy: the importance weights per trained token (weighted as the loss)
        out["is_weight"] = total["is_weight_sum"] / tokens
        out["is_clip_frac"] = total["is_clipped_sum"] / tokens
    return out
