"""KL estimators between the policy π and the reference π_ref, one value per response token.

With log r_t = log π(y_t|y_<t) − log π_ref(y_t|y_<t) on tokens sampled from π, and KL_t(y_<t) the exact KL of the
next-token distributions after the sampled prefix:
  k1 = log r_t                 E_π[Σ_t k1] = KL_seq (unbiased value of the sequence-level KL)
  k2 = ½ (log r_t)²            E_π[Σ_t k2] = Σ_t E[½ log² r_t] — not a KL (biased value)
  k3 = (r_t⁻¹ − 1) + log r_t   E_π[Σ_t k3] = KL_seq (unbiased, and non-negative per token)
  full = KL_t(y_<t) = Σ_v π(v|y_<t) (log π(v|y_<t) − log π_ref(v|y_<t))   E_π[Σ_t full] = KL_seq (exact per position)

SCoRe's KL (Eq. 3/4) is sequence-level per turn: KL_seq = KL(π(·|x) ‖ π_ref(·|x)) over whole responses. The
*gradient* an estimator follows depends on where it sits (exact expectations; tests/algos/test_kl_gradients.py,
table in docs/config.md). With g_prefix = Σ_t E[KL_t(y_<t) ∇log π(y_<t)], the part of ∇KL_seq that comes from the
policy changing which prefixes it samples (∇KL_seq = per-position reverse-KL gradient + g_prefix):
  in the reward — detached per-turn penalty β·Σ_t k, gradient E[(Σ_t k) ∇log π(y)]:
    k1    ∇KL_seq exactly: the only combination that follows the paper's objective (the default; the reward
          placement is implemented for k1 only). Not so for the others: k3 gives ∇KL_seq − (loss+k3's gradient),
          full gives g_prefix alone, k2 no KL's gradient.
  in the loss — β·k per token, gradient E[∇ Σ_t k]:
    k1    zero in expectation: it does not regularise at all
    k2    Σ_t E_{y_<t}[∇ KL(π(·|y_<t) ‖ π_ref(·|y_<t))], the per-position reverse KL with the prefix distribution held
          fixed: biased for ∇KL_seq (it misses g_prefix)
    full  the same expected gradient as k2 (without the sampling noise of the last token)
    k3    Σ_t E_{y_<t}[∇ KL(π_ref(·|y_<t) ‖ π(·|y_<t))], the per-position *forward* KL — the other direction
  For a single token (T = 1) there is no prefix: k2 and full in the loss are then ∇KL exactly too.
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
