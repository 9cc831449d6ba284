"""What every rollout engine shares: the Generation record, the stop ids of a model, and the engine interface.

An engine samples one turn for a batch of token-id prompts and returns, per prompt, the sampled ids and the log-probs
of the distribution it sampled from, log_softmax(logits / T) (no top-k / top-p / penalties: the learner trains on that
same distribution). ``load_weights`` takes any subset of the policy's weights by their Hugging Face names (a bucket of
the weight sync), so a large model's weights never have to exist twice in host memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch


@dataclass
class Generation:
    response_ids: List[int]
    logprobs: List[float]
    truncated: bool


def stop_token_ids(generation_config, tokenizer, extra=()) -> List[int]:
    """Every token id that ends a turn: the generation config's EOS ids (an int or a list, e.g. Qwen's
    [<|im_end|>, <|endoftext|>] or Llama 3's [<|eot_id|>, <|end_of_text|>]), the tokenizer's ``eos_token_id`` and
    ``extra``, deduplicated in that order."""
    ids: List[int] = []
    config_eos = getattr(generation_config, "eos_token_id", None)
    config_eos = [config_eos] if isinstance(config_eos, int) else list(config_eos or [])
    for token in [*config_eos, tokenizer.eos_token_id, *extra]:
        if token is not None and int(token) not in ids:
            ids.append(int(token))
    if not ids:
        raise ValueError("the model has no EOS token: neither its generation config nor its tokenizer defines one")
    return ids


def load_generation_config(model_path: str):
    """The model directory's generation config (only its EOS / BOS ids are used), or one derived from config.json."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_path)
    except OSError:  # no generation_config.json
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_path))


def request_seed(seed, index: int) -> int:
    """A request's sampling seed from the call's seed and the prompt's index (independent streams per request)."""
    parts = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    entropy = [int(p) % 2**64 for p in (*parts, index)]  # SeedSequence takes non-negative ints (seeds may be < 0)
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] & 0x7FFFFFFF)


class Engine:
    """The interface RolloutWorker uses (HFGenerator and VLLMEngine implement it)."""

    eos_ids: List[int]

    def generate(self, prompts: List[List[int]], temperature: float,
                 seeds: Optional[Sequence[int]] = None, keep_cache: bool = False) -> List[Generation]:
        """One turn per prompt. ``seeds``: one per prompt; an engine that seeds per request (vLLM) samples each
        prompt's turn from its seed alone, whatever the batch; HF samples the batch from torch's generator.
        ``keep_cache``: a hint that the next call's prompts extend these prompts and their responses (the next turn);
        an engine may keep this call's KV cache for it (HF does; vLLM's prefix caching needs no hint and ignores it).
        It never changes what is sampled, only how much of the next call's prompts has to be prefilled."""
        raise NotImplementedError

    def begin_weight_update(self) -> None:
        """Start an update made of several ``load_weights`` buckets (an engine that post-processes layers, e.g.
        vLLM, finishes a layer once all of its weights have arrived)."""

    def load_weights(self, weights: Dict[str, torch.Tensor]) -> None:
        """Overwrite the named weights (Hugging Face names; any subset) in place."""
        raise NotImplementedError

    def finish_weight_update(self) -> None:
        """End the update: every weight loaded since ``begin_weight_update`` is in effect."""

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """A CPU copy of the weights sampled with, by Hugging Face names (tests compare them with the learner's)."""
        raise NotImplementedError
