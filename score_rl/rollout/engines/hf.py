"""Generation engine over Hugging Face ``generate``.

Sampling uses temperature only (top_k=0, top_p=1): the learner scores tokens with log_softmax(logits / T), so the
distribution sampled from is exactly the distribution trained on. The returned log-probs are those of the processed
(temperature-scaled) scores that the sampler drew from. A turn ends at any of the model's stop ids (every EOS id of its
generation config and the tokenizer's EOS); a response that reaches max_new_tokens without one is truncated.

KV-cache reuse between turns: ``generate(..., keep_cache=True)`` keeps each batch's K/V cache (what HF ``generate``
returns with ``return_dict_in_generate``) and, per row, the tokens it holds (the context, then the response but its
last sampled token, which ``generate`` never feeds back). The next ``generate`` call continues each row from the
longest prefix of its context found in its row of the cache, so turn 2 (turn-1 prompt + attempt + correction ids)
prefills only the correction ids. Its input is the cached positions (left padding and the pads ``generate`` fed after
a row's EOS masked out with attention mask 0, and so is any cached token past the row's common prefix) followed by
each row's uncached tail, left-padded; ``generate`` feeds only the positions past the cache, and the position ids,
derived from the attention mask's cumulative sum, are those of a full prefill. Anything else (another number of
rows, or a reuse that would not shorten the prefilled block) is a full prefill; any weight update drops the cache.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from score_rl.compat import cache_keyword, cache_kwargs, output_cache
from score_rl.rollout.engines.base import Engine, Generation, stop_token_ids
from score_rl.utils import cache_gap


@dataclass
class _Prefix:
    """What one generate batch leaves for the next call: its K/V ``cache``, the token ``ids`` at the cached positions,
    ``mask`` 1 where a position holds a token of its row (0: left padding, pads fed after the row's EOS), and per row
    the ``tokens`` the cache holds, in order."""

    cache: object
    ids: torch.Tensor
    mask: torch.Tensor
    tokens: List[List[int]]

    def rows(self, index: List[int]) -> "_Prefix":
        """These rows of the prefix (repeats allowed), as a new cache: the kept one is left as it was."""
        cache = copy.copy(self.cache)
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        at = torch.tensor(index, device=self.ids.device)
        cache.batch_select_indices(at)
        return _Prefix(cache, self.ids[at], self.mask[at], [self.tokens[i] for i in index])


def _common_prefix(a: List[int], b: List[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i in range(n) if a[i] != b[i])


class HFGenerator(Engine):
    def __init__(self, model, tokenizer, max_new_tokens: int, batch_size: int = 256, extra_stop_ids=()):
        from transformers import GenerationConfig

        # Every EOS id of the model's generation config ends a turn (an instruct model's end-of-turn token is often
        # not the tokenizer's eos_token), plus the tokenizer's eos_token_id and ``extra_stop_ids`` (the chat
        # template's end-of-turn token, see RolloutWorker).
        self.eos_ids = stop_token_ids(model.generation_config, tokenizer, extra_stop_ids)
        self.eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else self.eos_ids[0]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        # A model directory's generation_config.json may carry top_k, min_p, repetition_penalty, ...: any of them
        # would make the sampled distribution differ from log_softmax(logits / T), which is what the learner trains
        # on. Start from a neutral config so only the settings passed below (and the stop ids) are in effect.
        model.generation_config = GenerationConfig(
            eos_token_id=list(self.eos_ids), bos_token_id=model.generation_config.bos_token_id,
            pad_token_id=self.pad_id,
        )
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        # what the last generate(keep_cache=True) kept: (its number of prompts, its batch size, one _Prefix a batch)
        self._kept: Optional[Tuple[int, int, List[Optional[_Prefix]]]] = None
        # why a kept cache could not be continued with this model (the first reason seen; None: it could so far)
        self.kv_reuse_off: Optional[str] = None if cache_keyword(model) else "its forward takes no K/V cache argument"

    @torch.no_grad()
    def generate(self, prompts: List[List[int]], temperature: float,
                 seeds: Optional[Sequence[int]] = None, keep_cache: bool = False) -> List[Generation]:
        """HF ``generate`` has no per-request seeds: the batch is sampled from torch's global generator, which
        RolloutWorker.run_episodes seeds once per call (``seeds`` is not used). ``keep_cache``: see the module
        docstring; whatever the previous call kept is used (or not) by this call, then dropped."""
        kept, self._kept = self._kept, None
        out: List[Generation] = []
        prefixes: List[Optional[_Prefix]] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start:start + self.batch_size]
            gens, prefix = self._generate_batch(batch, temperature, self._prefix_for(kept, start, len(batch),
                                                                                  len(prompts)), keep_cache)
            out += gens
            prefixes.append(prefix)
        del kept
        if keep_cache:
            self._kept = (len(prompts), self.batch_size, prefixes)
        return out

    def probe_kv_reuse(self) -> Optional[str]:
        """Why turn 2 cannot continue turn 1's K/V cache with this model, or None when it can: found by a greedy
        2-token generation from a 3-token prompt (samples nothing, draws no random numbers), so a model that cannot
        is known at start-up rather than silently re-prefilled every step."""
        if self.kv_reuse_off is None:
            self._generate_batch([[self.pad_id] * 3], 0.0, keep_cache=True, max_new_tokens=2)
        return self.kv_reuse_off

    def _reusable(self, cache, cached: int) -> bool:
        """Whether ``generate``'s returned cache holds the ``cached`` positions fed to it, every one of them (else the
        reason is kept in ``kv_reuse_off``)."""
        problem = cache_gap(cache)
        if problem is None and cache.get_seq_length() != cached:
            problem = f"its K/V cache holds {cache.get_seq_length()} positions where {cached} were fed"
        if problem is not None and self.kv_reuse_off is None:
            self.kv_reuse_off = problem
        return problem is None

    def _prefix_for(self, kept, start: int, rows: int, total: int) -> Optional[_Prefix]:
        """The kept cache rows for prompts start .. start + rows - 1 of a call of ``total`` prompts: prompt i continues
        row i of the kept call, or row i // m when the call has m times as many prompts (m corrections of each
        attempt). None when there is none, or when those rows lie in different kept batches."""
        if kept is None or not kept[0] or total % kept[0]:
            return None
        kept_total, kept_batch_size, prefixes = kept
        m = total // kept_total
        first, last = start // m, (start + rows - 1) // m
        batch = first // kept_batch_size
        if last // kept_batch_size != batch or prefixes[batch] is None:
            return None
        prefix = prefixes[batch]
        index = [i // m - batch * kept_batch_size for i in range(start, start + rows)]
        if m > 1 or index != list(range(len(prefix.tokens))):
            return prefix.rows(index)
        prefixes[batch] = None  # used once: generate extends it in place
        return prefix

    def _left_pad(self, rows: List[List[int]], device) -> Tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=device, dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device, dtype=torch.long)
        return ids, mask

    def _generate_batch(self, prompts: List[List[int]], temperature: float, prefix: Optional[_Prefix] = None,
                        keep_cache: bool = False, max_new_tokens: Optional[int] = None
                        ) -> Tuple[List[Generation], Optional[_Prefix]]:
        device = next(self.model.parameters()).device
        cache = None
        if prefix is not None:
            # each row goes on from the longest common prefix of its context and its cached tokens, keeping at least
            # one token to feed (the logits of the next token come from it)
            matched = [min(_common_prefix(p, t), max(len(p) - 1, 0)) for p, t in zip(prompts, prefix.tokens)]
            if max(len(p) - n for p, n in zip(prompts, matched)) < max(len(p) for p in prompts):
                tail_ids, tail_mask = self._left_pad([p[n:] for p, n in zip(prompts, matched)], device)
                cached = prefix.mask.bool() & (prefix.mask.cumsum(1) <= torch.tensor(matched, device=device)[:, None])
                input_ids = torch.cat([prefix.ids, tail_ids], dim=1)
                mask = torch.cat([cached.long(), tail_mask], dim=1)
                cache = prefix.cache
        if cache is None:  # a full prefill
            input_ids, mask = self._left_pad(prompts, device)
        del prefix
        width = input_ids.shape[1]
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(
            do_sample=False, temperature=None, top_k=None, top_p=None)
        result = self.model.generate(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens or self.max_new_tokens,
            min_new_tokens=0,
            eos_token_id=list(self.eos_ids), pad_token_id=self.pad_id, output_scores=True, return_dict_in_generate=True,
            num_beams=1, **(cache_kwargs(self.model, cache) if cache is not None else {}), **sampling,
        )
        new_tokens = result.sequences[:, width:]
        steps = len(result.scores)
        logprobs = torch.stack(
            [torch.log_softmax(result.scores[s].float(), dim=-1).gather(-1, new_tokens[:, s:s + 1]).squeeze(-1)
             for s in range(steps)], dim=1,
        ) if steps else torch.zeros(len(prompts), 0)
        stops = set(self.eos_ids)
        gens = []
        for row in range(len(prompts)):
            tokens = new_tokens[row].tolist()
            # the turn ends at the first of any stop id (generate pads the rest of a finished row)
            end = next((i for i, token in enumerate(tokens) if token in stops), None)
            length, truncated = (len(tokens), True) if end is None else (end + 1, False)
            gens.append(Generation(tokens[:length], logprobs[row, :length].tolist(), truncated))
        kept = None
        # generate feeds every sampled token back but the last one: the cache holds sequences[:, :width + steps - 1]
        cached = width + steps - 1
        returned = output_cache(result)
        if keep_cache and steps and self._reusable(returned, cached):
            lengths = torch.tensor([len(g.response_ids) for g in gens], device=device)
            generated = (torch.arange(steps, device=device)[None, :] < lengths[:, None]).long()
            kept = _Prefix(returned, result.sequences[:, :cached],
                           torch.cat([mask, generated], dim=1)[:, :cached],
                           [p + g.response_ids[:steps - 1] for p, g in zip(prompts, gens)])
        return gens, kept

    def load_weights(self, weights: Dict[str, torch.Tensor]) -> None:
        self._kept = None  # computed with the old weights
        own = self.model.state_dict()
        unknown = sorted(set(weights) - set(own))
        if unknown:
            raise KeyError(f"weights not in the rollout model: {unknown[:5]}")
        with torch.no_grad():
            for name, value in weights.items():
                own[name].copy_(value)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
