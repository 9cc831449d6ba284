"""Hostile model outputs: every env's scoring path (``verify_batch``, what the rollout worker calls) gives a verdict
quickly on adversarial text — long whitespace runs, unclosed delimiters, deep nesting, megabytes of repetition.

Answer extraction runs in the calling process, before any sandbox or math-verify deadline: one slow response stalls a
whole training step. Each case must get reward 0 (or the right reward, for the controls that end in a correct answer)
within ``BOUND_S``; bench/verifier_worst_case.py prints the measured seconds per kB.
"""

from __future__ import annotations

import json
import time
from typing import List, Tuple

import pytest

from score_rl.config import PromptConfig
from score_rl.envs.arithmetic import ArithmeticEnv, final_number
from score_rl.envs.code import CodeEnv
from score_rl.envs.code_extraction import _select, defines, extract_code
from score_rl.envs.math import MathEnv
from score_rl.envs.math_answers import extract_answer_with_source, last_boxed, normalize_answer

BOUND_S = 5.0  # generous on a slow shared machine; linear parsing takes well under a second per case
K = 1000
M = 1_000_000
UNDER_CAP = 199_000  # just under the 200,000-character response cap of every env: fully parsed


def hostile_cases() -> List[Tuple[str, str]]:
    """(name, text) of the adversarial responses; none states the references used below (42, a failing program)."""
    cases = [
        # measured before linear parsing: minutes each, or no verdict at all
        ("code: one long line", "a" + " " * 100 * K + "b"),
        ("code: 20,000 unclosed fences", "```a\n" * 20 * K),
        ("math: spaces inside \\boxed (30k)", "\\boxed{6" + " " * 30 * K + "7}"),
        ("math: spaces inside \\boxed (100k)", "\\boxed{6" + " " * 100 * K + "7}"),
        ("math: 14,286 unclosed \\boxed{", "\\boxed{" * 14_286),
        # whitespace runs
        ("spaces 100k", " " * 100 * K), ("spaces under cap", " " * UNDER_CAP), ("spaces 1M", " " * M),
        ("tabs under cap", "\t" * UNDER_CAP), ("newlines under cap", "\n" * UNDER_CAP),
        ("space-newline under cap", " \n" * (UNDER_CAP // 2)), ("nbsp under cap", "\u00a0" * UNDER_CAP),
        ("number, spaces, unit", "5" + " " * UNDER_CAP + "cm"),
        ("number, spaces, percent", "\\boxed{6" + " " * (UNDER_CAP - 20) + "percent}"),
        ("square, spaces, unit", "\\boxed{5 square" + " " * (UNDER_CAP - 20) + "x}"),
        ("text unit, spaces", "\\boxed{5 \\text{" + " " * (UNDER_CAP - 20) + "cm}}"),
        ("assignment, spaces", "x" + " " * UNDER_CAP + "= 1"),
        ("fence, spaces", "```" + " " * UNDER_CAP + "x"),
        ("fence tag, spaces", "```python" + " " * UNDER_CAP + "\n"),
        ("= and spaces", "= " + " " * UNDER_CAP + "x"),
        ("answer is, spaces", "The answer is" + " " * UNDER_CAP + "x"),
        ("final answer is, tabs", "The final answer is 5" + "\t" * UNDER_CAP + "x"),
        ("def, spaces", "def f(" + " " * UNDER_CAP),
        # unclosed delimiters
        ("unclosed python fences", "```python\n" * (UNDER_CAP // 10)),
        ("unclosed \\boxed{ under cap", "\\boxed{" * (UNDER_CAP // 7)),
        ("unclosed \\fbox{ with text", "\\fbox{ x " * (UNDER_CAP // 9)),
        ("unclosed braces", "{" * UNDER_CAP), ("closing braces", "}" * UNDER_CAP),
        ("unclosed dollars", "$" * UNDER_CAP), ("one dollar, text", "The final answer is $" + "x" * UNDER_CAP),
        ("escaped braces", "\\boxed{" + "\\{" * (UNDER_CAP // 2)),
        # deep nesting
        ("\\boxed, nested 50k", "\\boxed{" + "{" * 50 * K + "}" * 50 * K),
        ("\\boxed, open 50k", "\\boxed{" + "{" * 50 * K),
        ("nested \\boxed", "\\boxed{" * 20 * K + "x" + "}" * 19 * K),
        ("brackets 50k", "(" * 50 * K + "[" * 50 * K),
        # a megabyte of a short pattern (over the cap: "too long") and the same just under the cap
        ("1 MB 'ab'", "ab" * (M // 2)), ("1 MB '= 1 '", "= 1 " * (M // 4)),
        ("1 MB \\boxed{1}", "\\boxed{1}" * (M // 9)),
        ("\\boxed{1} under cap", "\\boxed{1}" * (UNDER_CAP // 9)),
        ("answer is under cap", "the answer is " * (UNDER_CAP // 14)),
        ("final answer is $ under cap", "The final answer is $" * (UNDER_CAP // 21)),
        ("final answer is correct under cap", "The final answer is correct. " * (UNDER_CAP // 29)),
        ("5 cm under cap", "5 cm " * (UNDER_CAP // 5)), ("percent under cap", "percent " * (UNDER_CAP // 8)),
        ("\\text{ under cap", "\\text{ " * (UNDER_CAP // 7)), ("^\\circ under cap", "^ " * (UNDER_CAP // 2)),
        ("code lines under cap", "if x:\n" * (UNDER_CAP // 6)), ("x = under cap", "x = " * (UNDER_CAP // 4)),
        ("#### under cap", "#### " * (UNDER_CAP // 5)), ("digits under cap", "1" * UNDER_CAP),
        ("thousands under cap", "1,000" * (UNDER_CAP // 5)), ("decimals under cap", "1.1" * (UNDER_CAP // 3)),
        # mixed unicode
        ("unicode digits", "\u0663" * 50 * K), ("unicode mix", "\u00e9\u4e2d\U0001f600\u2028\u0301 $\\{" * 20 * K),
        ("line separators", "\u2028" * UNDER_CAP), ("emoji under cap", "\U0001f600" * UNDER_CAP),
    ]
    return cases


def _controls() -> List[Tuple[str, str]]:
    """Hostile text followed by a well-formed answer: the answer still counts."""
    return [("spaces then \\boxed{42}", " " * 100 * K + "The answer is \\boxed{42}."),
            ("unclosed \\boxed{ then \\boxed{42}", "\\boxed{" * 10 * K + " so \\boxed{42}"),
            ("unclosed fences then answer", "```a\n" * 10 * K + "The answer is 42.")]


CASES = hostile_cases()
IDS = [name for name, _ in CASES]
REFERENCE = 42


def _timed(fn, *args):
    start = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - start


@pytest.fixture(scope="module")
def math_env():
    env = MathEnv({"workers": 1, "timeout_s": 3.0})
    env.verify_batch(["\\boxed{1}"], ["2"])  # start the verifier pool before any case is timed
    yield env
    env.close()


class _NoSandbox:
    """Stands in for the sandbox (bounded by its own deadline, tests/sandbox): every program fails."""

    def run_many(self, jobs):
        return [_Failed() for _ in jobs]


class _Failed:
    passed, reason = False, "failed test"

    def info(self):
        return {}


@pytest.fixture(scope="module")
def code_env(tmp_path_factory):
    path = tmp_path_factory.mktemp("mbpp") / "mbpp.jsonl"
    rows = [{"task_id": i, "text": "Square a number.", "code": "def sq(x):\n    return x * x\n",
             "test_list": ["assert sq(3) == 9"]} for i in (1, 2)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    env = CodeEnv({"dataset": str(path), "test_fraction": 0.5})
    env._sandbox = _NoSandbox()
    yield env


@pytest.mark.parametrize("answer", ["first", "final"])
@pytest.mark.parametrize("name, text", CASES, ids=IDS)
def test_arithmetic_verdict_is_quick(name, text, answer):
    env = ArithmeticEnv({"answer": answer}, PromptConfig(), seed=0)
    (verdict,), seconds = _timed(env.verify_batch, [text], [REFERENCE])
    assert verdict.reward == 0.0 and verdict.reason in ("wrong answer", "no answer extracted", "too long"), verdict
    assert seconds < BOUND_S, (name, seconds)


@pytest.mark.parametrize("name, text", CASES, ids=IDS)
def test_math_verdict_is_quick(name, text, math_env):
    (verdict,), seconds = _timed(math_env.verify_batch, [text], [str(REFERENCE)])
    if verdict.reason == "timeout":  # math-verify's own deadline (a long answer): restart its pool, untimed
        math_env.verify_batch(["\\boxed{1}"], ["2"])
    assert verdict.reward == 0.0, verdict
    assert verdict.reason in ("wrong answer", "no answer extracted", "too long", "timeout"), verdict
    assert seconds < BOUND_S, (name, seconds)


@pytest.mark.parametrize("name, text", CASES, ids=IDS)
def test_code_verdict_is_quick(name, text, code_env):
    reference = code_env.problems("test")[0].reference
    (verdict,), seconds = _timed(code_env.verify_batch, [text], [reference])
    assert verdict.reward == 0.0 and verdict.reason in ("failed test", "no code extracted", "too long"), verdict
    assert seconds < BOUND_S, (name, seconds)


@pytest.mark.parametrize("name, text", _controls(), ids=[n for n, _ in _controls()])
def test_an_answer_after_hostile_text_still_counts(name, text, math_env):
    (verdict,), seconds = _timed(math_env.verify_batch, [text], [str(REFERENCE)])
    assert seconds < BOUND_S, (name, seconds)
    assert verdict.reward == 1.0, verdict
    arithmetic = ArithmeticEnv({"answer": "final"}, PromptConfig(), seed=0)
    assert arithmetic.verify(text, REFERENCE).reward == 1.0


def test_responses_over_the_cap_are_too_long(math_env, code_env):
    text = "The answer is \\boxed{42}." + " " * M
    assert math_env.verify_batch([text], ["42"])[0].reason == "too long"
    assert ArithmeticEnv({"answer": "final"}, PromptConfig(), seed=0).verify(text, 42).reason == "too long"
    code = "```python\ndef sq(x):\n    return x * x\n```" + " " * M
    assert extract_code(code) is None
    assert code_env.verify_batch([code], [code_env.problems("test")[0].reference])[0].reason == "too long"


@pytest.mark.parametrize("name, text", CASES, ids=IDS)
def test_parsing_is_linear_past_the_cap(name, text):
    """The extraction functions themselves, without the response cap (up to 1 MB): linear time, not just capped."""
    start = time.monotonic()
    _select("```python\n" + text + "\n```", "f")
    _select(text, "f")
    if len(text) <= UNDER_CAP:
        extract_code(text, "f", "def f(x):\n    pass\n")
    defines(text, "f")
    answer, _ = extract_answer_with_source(text)
    normalize_answer(answer if answer is not None else text)
    last_boxed(text)
    final_number(text)
    assert time.monotonic() - start < BOUND_S, name
