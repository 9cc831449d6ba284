"""The one place that turns problems and attempts into prompt token ids.

Turn 2's ids are built by concatenating ids — turn-1 prompt + attempt-1 ids (as sampled, EOS included) + the
tokenised correction instruction — never by re-tokenising text, so what the learner scores is exactly what the
sampler saw.

An attempt that was cut at ``rollout.max_new_tokens`` has no end-of-turn token. Its turn is closed with the boundary
ids that a finished attempt ends with (the tokenizer's EOS for plain prompts; the chat template's end-of-turn token,
e.g. ``<|im_end|>`` or ``<|eot_id|>``, with ``prompt.use_chat_template=true``), so the next turn always starts after a
well-formed turn boundary. Those ids belong to the *next* turn's prompt (they follow the sampled ids), so they are
context: the learner neither trains on them nor counts them as attempt-1 tokens (Episode.response_spans).
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

from score_rl.envs.base import Env, Problem


class PromptBuilder:
    def __init__(self, tokenizer, env: Env, use_chat_template: bool = False, max_prompt_tokens: int = 1024,
                 stop_ids: Optional[Iterable[int]] = None):
        """``stop_ids``: the token ids that end a generation (HFGenerator.eos_ids); default the tokenizer's EOS."""
        self.tokenizer = tokenizer
        self.env = env
        self.use_chat_template = use_chat_template
        self.max_prompt_tokens = max_prompt_tokens
        if stop_ids is None:
            stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.stop_ids = [int(i) for i in stop_ids]
        if use_chat_template and not getattr(tokenizer, "chat_template", None):
            from score_rl.errors import ConfigError

            raise ConfigError("config key 'prompt.use_chat_template' is true but the tokenizer has no chat template")
        # turn_end_id: the token that closes a turn (None: the template has none); _boundary_ids: the ids inserted
        # after an attempt that does not end with it; _correction_ids: the correction instruction that follows.
        self.turn_end_id, self._boundary_ids, self._correction_ids = self._encode_correction()

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

    def _special_ids(self) -> set:
        special = set(self.tokenizer.all_special_ids) | set(self.stop_ids)
        added = getattr(self.tokenizer, "added_tokens_decoder", None) or {}
        return special | {int(i) for i, token in added.items() if getattr(token, "special", False)}

    def _encode_correction(self) -> Tuple[Optional[int], List[int], List[int]]:
        text = self.env.correction_instruction()
        if not self.use_chat_template:
            eos = self.tokenizer.eos_token_id
            return eos, ([eos] if eos is not None else []), self._encode(text)
        # The chat-template text between the end of attempt 1 and the next generation prompt, rendered once.
        # ``closing`` is what the template writes after an assistant message (e.g. "<|im_end|>\n"); its first special
        # token is the end-of-turn token the model generates (and stops at). The ids up to and including it are the
        # boundary: a finished attempt already ends with the end-of-turn token, a truncated one gets them inserted.
        user = {"role": "user", "content": "PLACEHOLDER"}
        answer = {"role": "assistant", "content": "ANSWER"}

        def after_answer(messages, generation_prompt):
            rendered = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=generation_prompt, tokenize=False)
            return rendered[rendered.index("ANSWER") + len("ANSWER"):]

        suffix = after_answer([user, answer, {"role": "user", "content": text}], True)
        last = after_answer([user, answer], False)
        n = 0
        while n < min(len(suffix), len(last)) and suffix[n] == last[n]:
            n += 1
        closing = suffix[:n]
        eos = self.tokenizer.eos_token or ""
        if not closing and eos and suffix.startswith(eos):
            closing = eos
        special = self._special_ids()
        turn_end = next((i for i in self._encode(closing) if i in special), None)
        suffix_ids = self._encode(suffix)
        if turn_end is None or turn_end not in suffix_ids:
            return None, [], suffix_ids  # no end-of-turn token: the whole suffix follows every attempt
        cut = suffix_ids.index(turn_end) + 1
        return turn_end, suffix_ids[:cut], suffix_ids[cut:]

    def ended_turn(self, attempt: List[int]) -> bool:
        """Whether the attempt's last sampled token closed its turn (the template's end-of-turn token with a chat
        template; any stop id for plain prompts). False for a truncated attempt."""
        if not attempt:
            return False
        if self.use_chat_template:
            return attempt[-1] == self.turn_end_id
        return attempt[-1] in self.stop_ids

    def correction_ids(self, attempt: List[int]) -> List[int]:
        """The ids that follow an attempt in the next turn's prompt: the turn boundary if the attempt lacks it, then
        the correction instruction. They are context, not part of the attempt."""
        boundary = [] if self.ended_turn(attempt) else self._boundary_ids
        return boundary + self._correction_ids

    def correction(self, turn1_prompt: List[int], attempt1: List[int], problem_id: str) -> List[int]:
        return self._check(turn1_prompt + attempt1 + self.correction_ids(attempt1), problem_id, 2)

    def _check(self, ids: List[int], problem_id: str, turn: int) -> List[int]:
        if len(ids) > self.max_prompt_tokens:
            raise ValueError(
                f"turn-{turn} prompt of problem {problem_id} has {len(ids)} tokens > rollout.max_prompt_tokens="
                f"{self.max_prompt_tokens}; raise it or shorten the prompts (prompts are never silently truncated)"
            )
        return ids
