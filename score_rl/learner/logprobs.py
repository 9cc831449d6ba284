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


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk_tokens: int = 2048) -> torch.Tensor:
    """``log_softmax(logits, -1)`` read at ``index`` (result shaped like ``index``), never holding the whole
    [..., vocab] log-softmax: log p = logit[index] - logsumexp(logits), ``chunk_tokens`` positions at a time.
    Low-precision logits are upcast to float32 a chunk at a time (a bfloat16 logsumexp loses the digits the KL needs).

    On CUDA / XPU, TRL's function runs instead (a fused Triton kernel where Triton is installed); it is imported only
    there, since ``trl.trainer.utils`` pulls in transformers' Trainer, datasets, pandas, peft and accelerate (~5 s per
    process, and every learner imports this module)."""
    if logits.device.type != "cpu":
        from trl.trainer.utils import selective_log_softmax as fused

        return fused(logits, index)
    if logits.shape[:-1] != index.shape:
        raise ValueError(f"selective_log_softmax: logits {tuple(logits.shape)} do not match index {tuple(index.shape)}")
    flat_logits, flat_index = logits.reshape(-1, logits.shape[-1]), index.reshape(-1, 1)
    parts = []
    for start in range(0, flat_index.shape[0], chunk_tokens):
        block = flat_logits[start:start + chunk_tokens]
        if block.dtype not in (torch.float32, torch.float64):
            block = block.float()
        picked = block.gather(-1, flat_index[start:start + chunk_tokens]).squeeze(-1)
        parts.append(picked - torch.logsumexp(block, dim=-1))
    if not parts:  # no positions at all
        return flat_logits.new_zeros(index.shape, dtype=torch.promote_types(logits.dtype, torch.float32))
    return torch.cat(parts).view(index.shape)
