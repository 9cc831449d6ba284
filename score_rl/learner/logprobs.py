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


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk_bytes: int = 64 << 20) -> torch.Tensor:
    """``log_softmax(logits, -1)`` read at ``index`` (result shaped like ``index``): log p = logit[index] −
    logsumexp(logits), over views of ``logits`` of about ``chunk_bytes`` of float32 each (whole rows of the leading
    dimension, or position ranges of one row), so no [..., vocab] temporary bigger than a chunk is made — not even for
    a non-contiguous input such as ``logits[:, :-1]``. Low-precision logits are upcast to float32 a chunk at a time (a
    bfloat16 logsumexp loses the digits the KL needs); under autograd ``logsumexp`` keeps those upcast chunks for its
    backward, so that saves memory only without grad.

    On CUDA / XPU, TRL's function runs instead (a fused Triton kernel where Triton is installed); it is imported only
    there, since ``trl.trainer.utils`` pulls in transformers' Trainer, datasets, pandas, peft and accelerate (~5 s per
    process, and every learner imports this module)."""
    if logits.shape[:-1] != index.shape:
        raise ValueError(f"selective_log_softmax: logits {tuple(logits.shape)} do not match index {tuple(index.shape)}")
    if logits.device.type != "cpu":
        from trl.trainer.utils import selective_log_softmax as fused

        return fused(logits, index)
    if logits.dim() == 2:  # [positions, vocab]: one row
        return selective_log_softmax(logits.unsqueeze(0), index.unsqueeze(0), chunk_bytes).squeeze(0)
    if logits.dim() > 3:  # [..., positions, vocab]
        return selective_log_softmax(logits.flatten(0, -3), index.flatten(0, -2), chunk_bytes).view(index.shape)
    rows, positions, vocab = logits.shape
    if rows * positions == 0:
        return logits[..., 0].float() * 0  # empty, but with a grad_fn like any other result
    per_chunk = max(1, chunk_bytes // (4 * vocab))  # positions a chunk holds
    if per_chunk >= positions:  # whole rows at a time
        step = per_chunk // positions
        return torch.cat([_picked_logp(logits[r:r + step], index[r:r + step]) for r in range(0, rows, step)])
    return torch.cat([torch.cat([_picked_logp(logits[r:r + 1, p:p + per_chunk], index[r:r + 1, p:p + per_chunk])
                                 for p in range(0, positions, per_chunk)], dim=1) for r in range(rows)])


def _picked_logp(block: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    if block.dtype not in (torch.float32, torch.float64):
        block = block.float()
    return block.gather(-1, chosen.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(block, dim=-1)
