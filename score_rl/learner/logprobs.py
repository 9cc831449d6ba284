"""The one place that computes token log-probs: log_softmax(logits / T) at the sampled tokens."""

from __future__ import annotations

from typing import Tuple

import torch


def token_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float, return_logits: bool = False
) -> Tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of input_ids[:, 1:] given their prefixes, at the sampling temperature. Shape [B, L-1]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    if temperature != 1.0:
        logits = logits / temperature
    logp = selective_log_softmax(logits.float(), input_ids[:, 1:])
    return logp, (logits if return_logits else None)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)`` gathered at ``index`` (shape of ``index``), one row at a time to bound peak memory.

    On CPU this is TRL's ``selective_log_softmax`` line for line (its fused Triton kernel is CUDA / XPU only), without
    importing TRL: ``trl.trainer.utils`` pulls in transformers' Trainer, datasets, pandas, peft and accelerate, ~5 s of
    imports in the driver and in each learner process (which import this module through the learner). On an
    accelerator TRL's own function runs (its fused kernel where Triton is installed)."""
    if logits.device.type != "cpu":
        from trl.trainer.utils import selective_log_softmax as trl_selective_log_softmax

        return trl_selective_log_softmax(logits, index)
    index = index.unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        selected = torch.gather(logits, dim=-1, index=index)
        logsumexp = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])  # a row at a time: peak memory
        return (selected - logsumexp.unsqueeze(-1)).squeeze(-1)
    # logsumexp is unstable in bfloat16 / float16: log_softmax a row at a time
    return torch.stack([torch.log_softmax(row, dim=-1).gather(dim=-1, index=idx)
                        for row, idx in zip(logits, index)]).squeeze(-1)
