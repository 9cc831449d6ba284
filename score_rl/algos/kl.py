"""KL estimators between the policy π and the reference π_ref on sampled tokens, per token.

With log r = log π − log π_ref on tokens sampled from π:
  k1 = log r                 unbiased *value*; as a loss its expected gradient is zero — use it only in the reward
  k2 = ½ (log r)²            as a loss: gradient E[log r · ∇log π] = ∇ KL(π ‖ π_ref) (the reverse KL)
  k3 = (r⁻¹ − 1) + log r     as a loss: its gradient follows the forward KL(π_ref ‖ π)
  full: Σ_v π(v) (log π(v) − log π_ref(v)) over the vocabulary — the exact reverse KL at each position
"""

from __future__ import annotations

import torch


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - 1 - log_ratio


def kl_full(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact per-position KL(π ‖ π_ref) from (temperature-scaled) logits [..., V]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref = torch.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - ref)).sum(-1)


SAMPLED_KL = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
