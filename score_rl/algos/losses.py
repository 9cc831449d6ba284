"""The per-token policy objectives, with per-turn (REINFORCE) or per-token (PPO) advantages and per-turn KL
coefficients (t = the token's turn):

    REINFORCE   loss_tok = −A_t · log π(y_tok)                                  +  β_t · KL_tok
    one-step off-policy (trainer.off_policy_steps=1): the REINFORCE loss_tok × w_tok, w = min(π / π_sampler, c)
                (detached; truncated importance sampling: the batch was sampled by the policy one update earlier)
    PPO         loss_tok = −min(ρ · A_tok, clip(ρ, 1 − ε, 1 + ε) · A_tok)       +  β_t · KL_tok,   ρ = π / π_old
    critic      loss_tok = ½ · max((V − R)², (V_old + clip(V − V_old, −c, c) − R)²)

A and β come from the SCoRe shaper (score_rl/shaping.py) and the advantage estimator (score_rl/algos/advantages.py or
GAE, score_rl/algos/gae.py); the KL term is one of the estimators in score_rl/algos/kl.py (omitted here when the KL is
a reward penalty). Every loss is a masked sum divided by ``denominator`` (the learner's step-wide count).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from score_rl.algos.kl import SAMPLED_KL, kl_full


def per_token_kl(
    estimator: str, logp: torch.Tensor, ref_logp: torch.Tensor,
    logits: Optional[torch.Tensor] = None, ref_logits: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    if estimator == "full":
        if logits is None or ref_logits is None:
            raise ValueError("the full KL needs the logits of policy and reference")
        return kl_full(logits, ref_logits)
    return SAMPLED_KL[estimator](logp, ref_logp)


def reinforce_kl_loss(
    logp: torch.Tensor, ref_logp: torch.Tensor, advantage: torch.Tensor, kl_coef: torch.Tensor, mask: torch.Tensor,
    kl_estimator: str = "k2", kl_in_loss: bool = True, loss_agg: str = "token-mean", denominator: float | None = None,
    logits: Optional[torch.Tensor] = None, ref_logits: Optional[torch.Tensor] = None,
    sampling_logp: Optional[torch.Tensor] = None, is_clip: float = 2.0,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Summed loss of one micro-batch divided by ``denominator``.

    The learner passes the whole step's count over all ranks (response tokens, or turns with a response token) divided
    by the rank count, so the gradients of all micro-batches on all ranks, averaged by data parallelism, add up to the
    gradient of the step's loss. Without a denominator: this micro-batch's own count (tokens, or non-empty rows).

    ``sampling_logp`` (one-step off-policy): the log-probs the sampler drew the tokens with; every token's loss is
    weighted by the detached w = min(exp(log π − log π_sampler), ``is_clip``), so that the expected gradient is the
    on-policy one (up to the truncation). The parts add the mask-weighted sums of w (``is_weight``) and of the tokens
    whose weight was truncated (``is_clipped``)."""
    pg = -advantage * logp
    weight = None
    if sampling_logp is not None:
        log_ratio = torch.where(mask > 0, logp.detach() - sampling_logp, 0.0)  # 0 off the mask: no overflow there
        ratio = torch.exp(log_ratio)
        weight = torch.clamp(ratio, max=is_clip)
    loss, parts = _policy_loss(pg, logp, ref_logp, kl_coef, mask, kl_estimator, kl_in_loss, loss_agg, denominator,
                               logits, ref_logits, weight)
    if weight is not None:
        m = mask.float()
        parts["is_weight"] = (weight * m).sum()
        parts["is_clipped"] = ((ratio > is_clip).float() * m).sum()
    return loss, parts


def ppo_kl_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantage: torch.Tensor,
    kl_coef: torch.Tensor, mask: torch.Tensor, clip_eps: float, kl_estimator: str = "k1", kl_in_loss: bool = False,
    loss_agg: str = "token-mean", denominator: float | None = None,
    logits: Optional[torch.Tensor] = None, ref_logits: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The clipped surrogate (``clip_eps`` = 0: unclipped) plus the KL term, like ``reinforce_kl_loss``. The parts add
    the mask-weighted sums of clipped tokens (those whose clipped term is the min: they give no gradient; ``clipped``),
    of the approximate KL(π_old ‖ π) = (ρ − 1) − log ρ (``approx_kl``) and of |ρ − 1| (``ratio_dev``)."""
    log_ratio = torch.where(mask > 0, logp - old_logp, 0.0)  # 0 off the mask: exp cannot overflow there
    ratio = torch.exp(log_ratio)
    surrogate = ratio * advantage
    if clip_eps > 0:
        clipped_surrogate = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantage
        pg = -torch.min(surrogate, clipped_surrogate)
        clipped = (clipped_surrogate < surrogate).float()  # the clipped term is the min: no gradient from this token
    else:
        pg, clipped = -surrogate, torch.zeros_like(surrogate)
    loss, parts = _policy_loss(pg, logp, ref_logp, kl_coef, mask, kl_estimator, kl_in_loss, loss_agg, denominator,
                               logits, ref_logits)
    m = mask.float()  # weighted like the loss
    with torch.no_grad():
        parts["clipped"] = (clipped * m).sum()
        parts["approx_kl"] = (((ratio - 1) - log_ratio) * m).sum()
        parts["ratio_dev"] = ((ratio - 1).abs() * m).sum()
    return loss, parts


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, value_clip: float,
    loss_agg: str = "token-mean", denominator: float | None = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """½ (V − R)², or with ``value_clip`` = c > 0 the larger of that and ½ (V_old + clip(V − V_old, −c, c) − R)²:
    once V has moved more than c from V_old towards its return R, this token stops pulling it (other tokens, through
    shared weights, still can). Masked sum / ``denominator``."""
    err = (values - returns) ** 2
    if value_clip > 0:
        clipped = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
        err = torch.max(err, (clipped - returns) ** 2)
    per_token = 0.5 * err
    total, denom = _aggregate(per_token, mask.float(), loss_agg, denominator)
    return total / denom, {"value_loss": (per_token * mask).sum().detach()}


def _policy_loss(pg, logp, ref_logp, kl_coef, mask, kl_estimator, kl_in_loss, loss_agg, denominator, logits,
                 ref_logits, weight=None):
    mask = mask.float()
    # masked positions (prompt, padding) get logp = ref_logp before the estimator: their KL is exactly 0, so an
    # extreme log-ratio there (k3's exp overflowing to inf) cannot turn the loss or its gradient into NaN via inf * 0
    kl_logp = torch.where(mask > 0, logp, ref_logp.detach())
    kl = per_token_kl(kl_estimator, kl_logp, ref_logp, logits, ref_logits)
    per_token = pg + (kl_coef * kl if kl_in_loss else 0.0)
    if weight is not None:  # importance weight of a token sampled by an older policy (detached)
        per_token = weight * per_token
    total, denom = _aggregate(per_token, mask, loss_agg, denominator)
    return total / denom, {"pg": (pg * mask).sum().detach(), "kl": (kl * mask).sum().detach()}


def _aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_agg: str, denominator: float | None):
    """(masked sum, what it is divided by): ``denominator``, or this batch's own tokens / non-empty rows."""
    total = (per_token * mask).sum()
    if denominator is not None:
        return total, denominator
    if loss_agg == "token-mean":
        return total, mask.sum().clamp(min=1)
    if loss_agg == "seq-mean-token-sum":
        return total, (mask.sum(-1) > 0).sum().clamp(min=1)
    raise ValueError(f"unknown loss aggregation '{loss_agg}'")
