"""The per-token policy objective: REINFORCE with per-turn advantages and per-turn KL coefficients.

    loss_token = −A_t · log π(y_tok)  +  β_t · KL_tok          (t = the token's turn)

A_t and β_t come from the SCoRe shaper (score_rl/shaping.py) and the advantage estimator; the KL term is one of the
estimators in score_rl/algos/kl.py (omitted here when the KL is a reward penalty).
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
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Summed loss of one micro-batch divided by ``denominator``.

    The learner passes the whole step's count over all ranks (response tokens, or turns with a response token) divided
    by the rank count, so the gradients of all micro-batches on all ranks, averaged by data parallelism, add up to the
    gradient of the step's loss. Without a denominator: this micro-batch's own count (tokens, or non-empty rows)."""
    mask = mask.float()
    pg = -advantage * logp
    # masked positions (prompt, padding) get logp = ref_logp before the estimator: their KL is exactly 0, so an
    # extreme log-ratio there (k3's exp overflowing to inf) cannot turn the loss or its gradient into NaN via inf * 0
    kl_logp = torch.where(mask > 0, logp, ref_logp.detach())
    kl = per_token_kl(kl_estimator, kl_logp, ref_logp, logits, ref_logits)
    per_token = pg + (kl_coef * kl if kl_in_loss else 0.0)
    if loss_agg == "token-mean":
        total = (per_token * mask).sum()
        denom = denominator if denominator is not None else mask.sum().clamp(min=1)
    elif loss_agg == "seq-mean-token-sum":
        total = (per_token * mask).sum()
        denom = denominator if denominator is not None else (mask.sum(-1) > 0).sum().clamp(min=1)
    else:
        raise ValueError(f"unknown loss aggregation '{loss_agg}'")
    return total / denom, {"pg": (pg * mask).sum().detach(), "kl": (kl * mask).sum().detach()}
