"""The one place that computes token log-probs: log_softmax(logits / T) at the sampled tokens."""

from __future__ import annotations

import inspect
from typing import Tuple

import torch


def token_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float, return_logits: bool = False,
    first_target: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of input_ids[:, 1:] given their prefixes, at the sampling temperature. Shape [B, L-1].

    ``first_target``: the first target index (into input_ids[:, 1:]) the caller reads — the batch's first response
    token. The logits before it (the prompt's) are not computed where the model takes ``logits_to_keep`` (every
    transformers causal LM; saves the LM head and the log-softmax over the vocabulary there, and their memory) and
    their log-probs are 0. Ignored with ``return_logits`` (the full-KL estimator wants every position's logits)."""
    length = input_ids.shape[1]
    kwargs = {}
    if 0 < first_target < length - 1 and not return_logits and takes_logits_to_keep(model):
        kwargs["logits_to_keep"] = length - first_target  # the last positions: those predicting targets ≥ first_target
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits[:, :-1]
    skipped = length - 1 - logits.shape[1]
    if temperature != 1.0:
        logits = logits / temperature
    logp = selective_log_softmax(logits.float(), input_ids[:, 1 + skipped:])
    if skipped:
        logp = torch.nn.functional.pad(logp, (skipped, 0))
    return logp, (logits if return_logits else None)


def first_response_target(turn: torch.Tensor) -> int:
    """The first target index any row of a collated batch trains or reads (``turn`` > 0); 0 if none."""
    columns = (turn > 0).any(dim=0).nonzero()
    return int(columns[0]) if len(columns) else 0


def takes_logits_to_keep(model) -> bool:
    """Whether ``model`` — under pass-through wrappers (a DeepSpeed engine's ``module``, a PEFT model's base model,
    the LoRA reference's ``model``) — accepts ``logits_to_keep`` (transformers' causal LMs do; a custom model may
    not, and then gets every position)."""
    for _ in range(8):  # wrappers nest a few deep at most
        if hasattr(model, "get_base_model"):  # PEFT
            model = model.get_base_model()
        call = model.forward if isinstance(model, torch.nn.Module) else model.__call__
        params = inspect.signature(call).parameters
        if "logits_to_keep" in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
        inner = getattr(model, "module", None)  # a wrapper passing **kwargs to what it wraps
        inner = inner if inner is not None else getattr(model, "model", None)
        if inner is None or not callable(inner):
            return False
        model = inner
    return False


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
