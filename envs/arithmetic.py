"""Synthetic two-digit addition, generated offline from a seed: the CPU quickstart and the tests.

Problems are all pairs (a, b) in [min_operand, max_operand]^2, split by the seed into disjoint train / test sets of
*unordered* pairs (a + b and b + a are always in the same split). The verifier reads the response's answer as
``params.answer`` says: ``first``, its first integer (what the tiny base model writes: " 75"); ``final``, the answer a
real model states (``final_number``: a boxed number, ``#### n``, "the answer is n", the number after the last "=",
else the last number), so "23 + 45 = 68" is 68, not 23.

``demonstrations`` produces the supervised warm-up traces of the locally built base model. They imitate what the
SCoRe paper observes in real base models: a systematic first-attempt error (here: the carry from the ones place is
forgotten, a classic student slip, so attempt 1 is right only on problems without that carry) and a second attempt
that mostly repeats the first (non-correcting, Δ ≤ 0 under greedy decoding), occasionally recomputes correctly, and
occasionally changes a right answer into a wrong one. The correction behaviour is therefore in the base model's
support but not its mode: reinforcement learning has to find and amplify it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, List, Tuple

from score_rl.envs.base import Env, Problem, Verdict

_INT = re.compile(r"-?\d+")
# a number as models write it: 1,234 or 1234, optionally with decimals (68.0 is the integer 68)
_NUMBER = r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?"
# each pattern starts at a literal and never has two runs of \s* side by side, so a long run of whitespace is
# scanned once from each literal, not split every possible way (quadratic)
# group 2 set: the left side of a restated equation ("= 13 + 26", "the answer is 23 + 45 = 68"), not a result
# (matched, then dropped: a lookahead would backtrack into the number); "$68$" and "**68**" are read as 68
_RESULT = r"(?:\$\s*|\*\*)?(" + _NUMBER + r")(?:\*\*)?([ \t]*[-+*/×])?"
_STATED = [re.compile(p) for p in (r"\\boxed\{\s*(" + _NUMBER + r")\s*\}", r"####\s*(" + _NUMBER + ")",
                                   r"(?i:answer)\s+(?i:is)\s*(?::\s*)?" + _RESULT, r"=\s*" + _RESULT)]
_ANY_NUMBER = re.compile(_NUMBER)
# Responses longer than this (characters) are not read: reward 0, "too long" (generations here are a few tokens).
# Every pattern above is matched in linear time on any text; the cap bounds the constant.
MAX_RESPONSE_CHARS = 200_000
_MAX_DIGITS = 40  # no sum is that long (and int() refuses over 4,300 digits)


def final_number(text: str):
    """The answer a model states, as a number (int where it is integral, else float; None if there is no number):
    the last ``\\boxed{n}``, else the last ``#### n``, else the last "the answer is n", else the number after the
    last "=" that ends its expression (not "= 13 +"), else the last number in the text. Thousands separators are
    dropped."""
    for pattern in _STATED:
        found = [m.group(1) for m in pattern.finditer(text) if pattern.groups < 2 or m.group(2) is None]
        if found:
            return _as_number(found[-1])
    found = _ANY_NUMBER.findall(text)
    return _as_number(found[-1]) if found else None


def _as_number(token: str):
    token = token.replace(",", "")
    if len(token) > _MAX_DIGITS:
        return None
    value = float(token)
    return int(token.split(".")[0]) if value.is_integer() else value


def forgot_carry_sum(a: int, b: int) -> int:
    """a + b with the carry from the ones place dropped (37 + 48 -> 75)."""
    return (a // 10 + b // 10) * 10 + (a % 10 + b % 10) % 10


class ArithmeticEnv(Env):
    name = "arithmetic"

    @dataclass
    class Params:
        min_operand: int = 10
        max_operand: int = 99
        num_test: int = 500
        answer: str = "first"  # first: the response's first integer; final: final_number (real models)
        # warm-up teacher of the locally built base model (see module docstring)
        demo_first_correct: float = 0.0  # attempt 1 is the correct sum (else the forgotten-carry slip)
        # a sum >= drop_hundreds_from (>= 100): attempt 1 drops its hundreds digit, whatever the two choices above
        demo_drop_hundreds: float = 0.0
        drop_hundreds_from: int = 100
        demo_copy: float = 0.55  # attempt 2 repeats attempt 1
        demo_fix: float = 0.25  # attempt 2 is the correct sum
        # the rest: attempt 2 is a different wrong answer

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        p = self.params
        if not 0 <= p.min_operand <= p.max_operand:
            from score_rl.errors import ConfigError

            raise ConfigError("config key 'env.params.min_operand' must be in [0, max_operand]")
        if p.drop_hundreds_from < 100:
            from score_rl.errors import ConfigError

            raise ConfigError("config key 'env.params.drop_hundreds_from' must be >= 100 (a sum below has no hundreds "
                              f"digit), got {p.drop_hundreds_from}")
        if p.answer not in ("first", "final"):
            from score_rl.errors import ConfigError

            raise ConfigError(f"config key 'env.params.answer' must be first or final, got {p.answer!r}")
        self._splits = self._split(p.min_operand, p.max_operand, p.num_test, self.seed)

    @staticmethod
    def _split(lo: int, hi: int, num_test: int, seed: int) -> dict:
        """Held-out *unordered* pairs: a + b and its commuted twin b + a are always in the same split, so no test
        problem is a train problem with its operands swapped. The test split holds exactly min(num_test, half of all
        ordered pairs) problems; both splits are shuffled, and everything is deterministic in the seed."""
        rng = random.Random(seed)
        groups = [[(a, b), (b, a)] if a != b else [(a, a)] for a in range(lo, hi + 1) for b in range(a, hi + 1)]
        rng.shuffle(groups)
        target = min(num_test, (hi - lo + 1) ** 2 // 2)
        test, train, room = [], [], target
        for group in groups:  # greedy fill: a twin pair needs room for two problems, a + a for one
            if len(group) <= room:
                test.append(group)
                room -= len(group)
            else:
                train.append(group)
        if room == 1:  # only when every a + a is already in test: trade one of them for a twin pair from train
            single = next(g for g in reversed(test) if len(g) == 1)
            pair = next(g for g in train if len(g) == 2)
            test.remove(single)
            train.remove(pair)
            test.append(pair)
            train.append(single)
        splits = {"test": [ab for g in test for ab in g], "train": [ab for g in train for ab in g]}
        for problems in splits.values():
            rng.shuffle(problems)  # twins are not adjacent (evaluation takes the first problems of the test split)
        return splits

    def problems(self, split: str) -> List[Problem]:
        if split not in self._splits:
            from score_rl.errors import ConfigError

            raise ConfigError(f"env '{self.name}' has no split '{split}' (splits: {sorted(self._splits)})")
        return [Problem(id=f"{split}/{a}+{b}", text=f"{a} + {b}", reference=a + b) for a, b in self._splits[split]]

    def verify(self, response: str, reference: Any) -> Verdict:
        if len(response) > MAX_RESPONSE_CHARS:
            return Verdict(0.0, "too long", {"extracted": None, "chars": len(response)})
        if self.params.answer == "final":
            value = final_number(response)
        else:
            match = _INT.search(response)
            value = _as_number(match.group()) if match else None
        if value is None:
            return Verdict(0.0, "no answer extracted", {"extracted": None})
        if value == int(reference):
            return Verdict(1.0, "correct", {"extracted": value})
        return Verdict(0.0, "wrong answer", {"extracted": value})

    def demonstrations(self, n: int, seed: int) -> List[Tuple[Problem, List[str]]]:
        """n warm-up episodes from the train split: (problem, [attempt-1 text, attempt-2 text])."""
        rng = random.Random(seed)
        train = self.problems("train")
        out = []
        for _ in range(n):
            problem = rng.choice(train)
            a, b = (int(x) for x in problem.text.split(" + "))
            first = forgot_carry_sum(a, b)
            if self.params.demo_first_correct > 0 and rng.random() < self.params.demo_first_correct:
                first = a + b  # (drawn only when enabled: the quickstart's demonstrations stay what they were)
            if (a + b >= self.params.drop_hundreds_from and self.params.demo_drop_hundreds > 0
                    and rng.random() < self.params.demo_drop_hundreds):
                first = (a + b) % 100
            u = rng.random()
            if u < self.params.demo_copy:
                second = first
            elif u < self.params.demo_copy + self.params.demo_fix:
                second = a + b
            else:
                second = rng.choice([v for v in range(a + b - 20, a + b + 21) if v not in (a + b, first) and v >= 0])
            out.append((problem, [f" {first}", f" {second}"]))
        return out
