"""The one place that turns problems and attempts into prompt token ids.

Turn 2's ids are built by concatenating ids — turn-1 prompt + attempt-1 ids (as sampled, EOS included) + the
tokenised correction instruction — never by re-tokenising text, so what the learner scores is exactly what the
sampler saw.
"""

from __future__ import annotations

from typing import List

from score_rl.envs.base import Env, Problem


class PromptBuilder:
    def __init__(self, tokenizer, env: Env, use_chat_template: bool = False, max_prompt_tokens: int = 1024):
        self.tokenizer = tokenizer
        self.env = env
        self.use_chat_template = use_chat_template
        self.max_prompt_tokens = max_prompt_tokens
        if use_chat_template and not getattr(tokenizer, "chat_template", None):
            from score_rl.config import ConfigError

            raise ConfigError("config key 'prompt.use_chat_template' is true but the tokenizer has no chat template")
        self._correction_ids = self._encode_correction()

    def _encode(self, text: str) -> List[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def first_attempt(self, problem: Problem) -> List[int]:
        text = self.env.first_attempt_prompt(problem)
        if self.use_chat_template:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        else:
            ids = self._encode(text)
            if self.tokenizer.bos_token_id is not None and getattr(self.tokenizer, "add_bos_token", False):
                ids = [self.tokenizer.bos_token_id] + ids
        return self._check(ids, problem.id, 1)

    def _encode_correction(self) -> List[int]:
        text = self.env.correction_instruction()
        if not self.use_chat_template:
            return self._encode(text)
        # The chat-template text between the end of attempt 1 and the next generation prompt. Attempt 1's ids
        # already end with the EOS (end-of-turn) token the model generated, so that token is not repeated.
        user = {"role": "user", "content": "PLACEHOLDER"}
        rendered = self.tokenizer.apply_chat_template(
            [user, {"role": "assistant", "content": "ANSWER"}, {"role": "user", "content": text}],
            add_generation_prompt=True, tokenize=False,
        )
        suffix = rendered[rendered.index("ANSWER") + len("ANSWER"):]
        eos = self.tokenizer.eos_token or ""
        if eos and suffix.startswith(eos):
            suffix = suffix[len(eos):]
        return self._encode(suffix)

    def correction(self, turn1_prompt: List[int], attempt1: List[int], problem_id: str) -> List[int]:
        return self._check(turn1_prompt + attempt1 + self._correction_ids, problem_id, 2)

    def _check(self, ids: List[int], problem_id: str, turn: int) -> List[int]:
        if len(ids) > self.max_prompt_tokens:
            raise ValueError(
                f"turn-{turn} prompt of problem {problem_id} has {len(ids)} tokens > rollout.max_prompt_tokens="
                f"{self.max_prompt_tokens}; raise it or shorten the prompts (prompts are never silently truncated)"
            )
        return ids
