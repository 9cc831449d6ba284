"""The one place that computes token log-probs: log_softmax(logits / T) at the sampled tokens."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from score_rl.compat import accepts, cache_keyword, cache_kwargs, output_cache, unwrap
from score_rl.episode import Episode
from score_rl.utils import cache_gap


@dataclass
class SharedPrefix:
    """Rows of a batch that begin with the same tokens: row r belongs to group ``group[r]``, whose first
    ``length[g]`` tokens are the same in every member; ``rows[g]`` is one member of group g."""

    group: torch.Tensor  # [B] long
    length: torch.Tensor  # [G] long, >= 1
    rows: torch.Tensor  # [G] long

    @classmethod
    def of(cls, episodes: Sequence[Episode], singletons: bool = False) -> Optional["SharedPrefix"]:
        """Episodes with the same turn-1 prompt (a problem's samples) share it but its last token (which predicts
        the first response token, so every target lies after the shared part). None when a prompt has fewer than 2
        tokens, or (unless ``singletons``: groups of one episode each then) when no two episodes share one."""
        groups: Dict[tuple, int] = {}
        group = [groups.setdefault(tuple(ep.turns[0].prompt_ids), len(groups)) for ep in episodes]
        if (len(groups) == len(episodes) and not singletons) or any(len(prompt) < 2 for prompt in groups):
            return None
        rows = {g: r for r, g in reversed(list(enumerate(group)))}  # each group's first row
        return cls(torch.tensor(group), torch.tensor([len(prompt) - 1 for prompt in groups]),
                   torch.tensor([rows[g] for g in range(len(groups))]))


# models whose K/V cache turned out not to be shareable on a first try (sliding windows, no cache under gradient
# checkpointing, ...) → why; not tried again
_NO_SHARED_CACHE: "weakref.WeakKeyDictionary[object, str]" = weakref.WeakKeyDictionary()
# rotary embeddings whose frequencies follow the longest position of a call: a shared part run on its own would get
# other frequencies than inside a whole row
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def token_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float, return_logits: bool = False,
    first_target: int = 0, shared: Optional[SharedPrefix] = None,
) -> Tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of input_ids[:, 1:] given their prefixes, at the sampling temperature. Shape [B, L-1]. Rows are
    right-padded (``attention_mask`` 1 on each row's tokens, then 0).

    ``first_target``: the first target index (into input_ids[:, 1:]) the caller reads — the batch's first response
    token. The logits before it (the prompt's) are not computed where the model takes ``logits_to_keep`` (every
    transformers causal LM; saves the LM head and the log-softmax over the vocabulary there, and their memory) and
    their log-probs are 0.

    ``shared``: rows that begin with the same tokens (``SharedPrefix.of``: a problem's samples share their prompt).
    Each group's shared part is run once, and its K/V cache extended by every member's own tokens: the same
    log-probs (up to float rounding) and gradients (they flow into the shared part from every member) for fewer
    positions. The log-probs inside a shared part are 0. Used where the model (under its wrappers) takes a K/V cache
    and keeps a plain one; else every row runs whole (``shared_prompt_off`` says why).

    Both are ignored with ``return_logits`` (the full-KL estimator wants every position's logits)."""
    if shared is not None and not return_logits:
        logp = _shared_prefix_logprobs(model, input_ids, attention_mask, temperature, shared)
        if logp is not None:
            return logp, None
    length = input_ids.shape[1]
    kwargs = {}
    if 0 < first_target < length - 1 and not return_logits and accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = length - first_target  # the last positions: those predicting targets ≥ first_target
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits[:, :-1]
    skipped = length - 1 - logits.shape[1]
    if temperature != 1.0:
        logits = logits / temperature
    logp = selective_log_softmax(logits.float(), input_ids[:, 1 + skipped:])
    if skipped:
        logp = torch.nn.functional.pad(logp, (skipped, 0))
    return logp, (logits if return_logits else None)


def _shared_prefix_logprobs(model, input_ids, attention_mask, temperature, shared) -> Optional[torch.Tensor]:
    """token_logprobs with each group's shared part run once; None where the model cannot (then nothing was run)."""
    if shared_prompt_off(model):
        return None
    device = input_ids.device
    group, length, rows = shared.group.to(device), shared.length.to(device), shared.rows.to(device)
    width = input_ids.shape[1]
    # 1. each group's shared part once, right-padded to the longest
    span = int(length.max())
    prefix_mask = (torch.arange(span, device=device)[None, :] < length[:, None]).long()
    members = prefix_mask[group].bool()
    if not (input_ids[:, :span] == input_ids[rows][group, :span])[members].all():
        raise ValueError("token_logprobs: rows of a SharedPrefix group do not begin with the same tokens")
    out = model(input_ids=input_ids[rows, :span], attention_mask=prefix_mask, use_cache=True, logits_to_keep=1)
    cache = output_cache(out)
    gap = cache_gap(cache)  # e.g. sliding windows, or gradient checkpointing (no cache in training)
    if gap:
        _NO_SHARED_CACHE[unwrap(model)] = gap
        return None
    cache.batch_select_indices(group)  # a copy of its group's K/V for every row (gradients sum back into it)
    # 2. every row's own tokens after its group's shared part, attending to the cache and to themselves
    start, row_len = length[group], attention_mask.sum(dim=1)
    suffix = int((row_len - start).max())
    cols = start[:, None] + torch.arange(suffix, device=device)[None, :]  # each suffix token's position
    own = cols < row_len[:, None]
    cols = cols.clamp(max=width - 1)
    logits = model(input_ids=input_ids.gather(1, cols), attention_mask=torch.cat([prefix_mask[group], own.long()], 1),
                   position_ids=cols, use_cache=True, **cache_kwargs(model, cache)).logits
    if temperature != 1.0:
        logits = logits / temperature
    # the suffix token at position p predicts the token at p + 1: target index p
    has_target = (cols + 1 < row_len[:, None]) & own
    logp = selective_log_softmax(logits.float(), input_ids.gather(1, (cols + 1).clamp(max=width - 1)))
    logp = logp * has_target
    placed = torch.zeros(input_ids.shape[0], width - 1 + suffix, dtype=logp.dtype, device=device)
    return placed.scatter(1, torch.where(has_target, cols, width - 1 + torch.arange(suffix, device=device)), logp)[
        :, :width - 1]


def shared_prompt_off(model) -> Optional[str]:
    """Why ``token_logprobs`` runs every row whole for ``model`` even when given a ``SharedPrefix`` (a short reason,
    for the run's start-up line), or None when it shares. What the model's signature and config tell is known at
    once; what its cache does is known after a first try (``probe_shared_prompt``)."""
    inner = unwrap(model)
    if inner in _NO_SHARED_CACHE:
        return _NO_SHARED_CACHE[inner]
    if cache_keyword(model) is None:
        return "its forward takes no K/V cache argument"
    missing = [name for name in ("position_ids", "use_cache", "logits_to_keep") if not accepts(model, name)]
    if missing:
        return f"its forward takes no {', '.join(missing)}"
    rope = _rope_type(inner)
    if rope in _LENGTH_DEPENDENT_ROPE:
        return f"{rope} rotary embeddings follow each call's length"
    return None


def probe_shared_prompt(model, device) -> Optional[str]:
    """``shared_prompt_off`` after a first try on two 3-token rows that share 2 (a pass of 5 positions, no gradient),
    so that a cache that cannot be shared is found at start-up, not silently in the first step. Every rank of a
    ZeRO-3 engine must call it (it runs forward passes)."""
    if shared_prompt_off(model) is None:
        ids = torch.tensor([[1, 2, 3], [1, 2, 4]], device=device)
        with torch.no_grad():
            _shared_prefix_logprobs(model, ids, torch.ones_like(ids), 1.0,
                                    SharedPrefix(torch.tensor([0, 0]), torch.tensor([2]), torch.tensor([0])))
    return shared_prompt_off(model)


def first_response_target(turn: torch.Tensor) -> int:
    """The first target index any row of a collated batch trains or reads (``turn`` > 0); 0 if none."""
    columns = (turn > 0).any(dim=0).nonzero()
    return int(columns[0]) if len(columns) else 0


def _rope_type(model) -> Optional[str]:
    config = getattr(model, "config", None)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    return rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None


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
