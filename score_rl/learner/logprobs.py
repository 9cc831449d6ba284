"""The one place that computes token log-probs: log_softmax(logits / T) at the sampled tokens."""

from __future__ import annotations

from typing import Tuple

import torch
from trl.trainer.utils import selective_log_softmax


def token_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float, return_logits: bool = False
) -> Tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of input_ids[:, 1:] given their prefixes, at the sampling temperature. Shape [B, L-1]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    if temperature != 1.0:
        logits = logits / temperature
    logp = selective_log_softmax(logits.float(), input_ids[:, 1:])
    return logp, (logits if return_logits else None)
