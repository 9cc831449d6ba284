"""Generation engine over Hugging Face ``generate``.

Sampling uses temperature only (top_k=0, top_p=1): the learner scores tokens with log_softmax(logits / T), so the
distribution sampled from is exactly the distribution trained on. The returned log-probs are those of the processed
(temperature-scaled) scores that the sampler drew from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch


@dataclass
class Generation:
    response_ids: List[int]
    logprobs: List[float]
    truncated: bool


class HFGenerator:
    def __init__(self, model, tokenizer, max_new_tokens: int, batch_size: int = 256):
        from transformers import GenerationConfig

        # A model directory's generation_config.json may carry top_k, min_p, repetition_penalty, ...: any of them
        # would make the sampled distribution differ from log_softmax(logits / T), which is what the learner trains
        # on. Start from a neutral config so only the settings passed below are in effect.
        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, bos_token_id=model.generation_config.bos_token_id,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.no_grad()
    def generate(self, prompts: List[List[int]], temperature: float) -> List[Generation]:
        out: List[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            out += self._generate_batch(prompts[start:start + self.batch_size], temperature)
        return out

    def _generate_batch(self, prompts: List[List[int]], temperature: float) -> List[Generation]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(
            do_sample=False, temperature=None, top_k=None, top_p=None)
        result = self.model.generate(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=self.max_new_tokens, min_new_tokens=0,
            eos_token_id=self.eos_id, pad_token_id=self.pad_id, output_scores=True, return_dict_in_generate=True,
            num_beams=1, **sampling,
        )
        new_tokens = result.sequences[:, width:]
        steps = len(result.scores)
        logprobs = torch.stack(
            [torch.log_softmax(result.scores[s].float(), dim=-1).gather(-1, new_tokens[:, s:s + 1]).squeeze(-1)
             for s in range(steps)], dim=1,
        ) if steps else torch.zeros(len(prompts), 0)
        gens = []
        for row in range(len(prompts)):
            tokens = new_tokens[row].tolist()
            length, truncated = len(tokens), True
            if self.eos_id in tokens:
                length, truncated = tokens.index(self.eos_id) + 1, False
            gens.append(Generation(tokens[:length], logprobs[row, :length].tolist(), truncated))
        return gens
