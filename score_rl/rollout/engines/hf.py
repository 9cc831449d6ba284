"""Generation engine over Hugging Face ``generate``.

Sampling uses temperature only (top_k=0, top_p=1): the learner scores tokens with log_softmax(logits / T), so the
distribution sampled from is exactly the distribution trained on. The returned log-probs are those of the processed
(temperature-scaled) scores that the sampler drew from. A turn ends at any of the model's stop ids (every EOS id of its
generation config and the tokenizer's EOS); a response that reaches max_new_tokens without one is truncated.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from score_rl.rollout.engines.base import Engine, Generation, stop_token_ids


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

    @torch.no_grad()
    def generate(self, prompts: List[List[int]], temperature: float,
                 seeds: Optional[Sequence[int]] = None) -> List[Generation]:
        """HF ``generate`` has no per-request seeds: the batch is sampled from torch's global generator, which
        RolloutWorker.run_episodes seeds once per call (``seeds`` is not used)."""
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
            eos_token_id=list(self.eos_ids), pad_token_id=self.pad_id, output_scores=True, return_dict_in_generate=True,
            num_beams=1, **sampling,
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
        return gens

    def load_weights(self, weights: Dict[str, torch.Tensor]) -> None:
        own = self.model.state_dict()
        unknown = sorted(set(weights) - set(own))
        if unknown:
            raise KeyError(f"weights not in the rollout model: {unknown[:5]}")
        with torch.no_grad():
            for name, value in weights.items():
                own[name].copy_(value)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
