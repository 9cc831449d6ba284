"""The math environment (envs/math.py): answer extraction, answer equivalence (math-verify in a process pool + a
MATH-style string fallback), per-item timeouts that survive hung workers, data loading, splits and params."""

from __future__ import annotations

import json
import os
import time

import pytest

from score_rl.config import ConfigError, EnvConfig, PromptConfig
from score_rl.envs import make_env
from score_rl.envs.math import (
    SAMPLE_PATH, MathEnv, VerifierPool, extract_answer, extract_answer_with_source, gsm8k_final_answer, last_boxed,
    load_problems, normalize_answer,
)

# An answer that makes sympy run for minutes without math-verify's SIGALRM timeout: comparing the power tower with 1
# (numeric evaluation of 9^(9^(9^9))). Checked in a subprocess: no verdict after 20 s, CPU-bound at ~80 MB.
HANG_ANSWER = r"9^{9^{9^{9}}}"
FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def env():
    env = MathEnv({"workers": 2, "timeout_s": 10.0}, PromptConfig(), seed=0)
    yield env
    env.close()


# =================================================================================================================
# answer equivalence: (reference, predicted answer, mathematically equal?)
# =================================================================================================================
EQUIVALENCE = [
    # fractions and decimals
    (r"\frac{1}{2}", "0.5", True),
    (r"\frac{1}{2}", "1/2", True),
    ("0.5", r"\frac{1}{2}", True),
    (r"\frac12", r"\dfrac{1}{2}", True),
    ("0.5", ".5", True),
    ("0.06", r"\frac{3}{50}", True),
    ("0.06", "0.6", False),
    (r"\frac{5}{6}", r"\frac{6}{5}", False),
    (r"-\frac{1}{2}", r"\frac{-1}{2}", True),
    (r"-\frac{1}{2}", r"\frac{1}{2}", False),
    (r"\frac{1}{3}", "0.33", False),
    ("2.5", r"\frac{5}{2}", True),
    ("10", "10.0", True),
    ("10", "10.", True),  # a sentence's full stop
    ("5", r"\dfrac{10}{2}", True),
    ("4", "4.0001", False),
    ("1250", "1,250", True),
    ("100000000", "100000001", False),
    (r"10^{20}", r"10^{20}+1", False),
    # units and degrees
    (r"30^\circ", "30", True),
    ("30", r"30^{\circ}", True),
    (r"5 \text{ cm}", "5", True),
    ("5", r"5\text{ cm}", True),
    ("40", r"40 \text{ cm}^2", True),
    ("12", r"12 \text{ students}", True),
    ("5", r"6 \text{ cm}", False),
    # percent
    (r"50\%", "50", True),
    ("50", r"50\%", True),
    (r"50\%", "0.5", True),
    (r"25\%", r"25 \text{ percent}", True),
    (r"50\%", "40", False),
    # money
    (r"\$4.50", "4.5", True),
    (r"\$4.50", r"4.50 \text{ dollars}", True),
    # sets and lists
    (r"\{1,2\}", r"\{2,1\}", True),
    ("-3, 3", "3, -3", True),
    ("-3, 3", r"\pm 3", True),
    (r"\{1,2\}", r"\{1,3\}", False),
    ("1, 2", "1, 2, 3", False),
    (r"\emptyset", r"\varnothing", True),
    # intervals
    ("[0,1)", "[0,1]", False),
    ("[0,1]", "[0,1)", False),
    (r"(-\infty, 2]", r"(-\infty,2]", True),
    (r"(-\infty, 2]", r"x \le 2", True),
    (r"(-\infty, 2]", r"(-\infty, 2)", False),
    (r"(-\infty, -1) \cup (1, \infty)", r"(1,\infty) \cup (-\infty,-1)", True),
    (r"(4, \infty)", r"[4, \infty)", False),
    # matrices and ordered pairs
    (r"\begin{pmatrix} 3 \\ 7 \end{pmatrix}", r"\begin{pmatrix}3\\7\end{pmatrix}", True),
    (r"\begin{pmatrix} 3 \\ 7 \end{pmatrix}", r"\begin{pmatrix}7\\3\end{pmatrix}", False),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}", True),
    ("(2, 5)", "(2,5)", True),
    ("(2, 5)", "(5, 2)", False),
    # equations and signs
    ("3", "x = 3", True),
    ("x = 3", "3", True),
    ("3", "x = 4", False),
    ("-3", "3", False),
    ("3", "-3", False),
    ("-6", "-(6)", True),
    # radicals
    (r"2\sqrt{2}", r"\sqrt{8}", True),
    (r"\sqrt{8}", r"2\sqrt{2}", True),
    (r"2\sqrt{2}", r"\sqrt{2}", False),
    (r"6\sqrt{2}", r"\sqrt{72}", True),
    (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}", True),
    # text answers
    (r"\text{Monday}", "Monday", True),
    ("Monday", r"\text{Monday}", True),
    (r"\text{Monday}", r"\text{Tuesday}", False),
    (r"\text{no}", r"\text{yes}", False),
    (r"\text{(C)}", "C", True),
    ("(C)", "(D)", False),
    # expressions, pi, complex numbers, factorials
    ("x^2 - x - 6", "(x+2)(x-3)", True),
    ("x^2 - x - 6", "x^2+x-6", False),
    (r"9\pi", r"9 \pi", True),
    (r"9\pi", "28.27", False),
    ("2i", "2 i", True),
    ("1+i", "i+1", True),
    ("2i", "-2i", False),
    ("120", "5!", True),
    (r"\infty", r"\infty", True),
    ("1", r"\infty", False),
    # hedges: two answers are never one right answer
    ("4", r"4 \text{ or } 3", False),
    ("4", r"4\text{ or 3}", False),
    ("4", r"4 \text{ is wrong}", False),
    ("4", "3, 4", False),
    ("4", r"4 \pm 1", False),
]

# Mathematically wrong verdicts we know of (strict: if one starts to pass, the xfail fails and must be moved above)
KNOWN_LIMITATIONS = [
    pytest.param("0.5", r"0.5\%", False, marks=pytest.mark.xfail(
        strict=True, reason="a percent sign is optional (MATH convention), so X% matches X even where X% != X")),
    pytest.param(r"5 \text{ m}", r"5 \text{ cm}", False, marks=pytest.mark.xfail(
        strict=True, reason="units are removed, not compared")),
    pytest.param("(1, 2)", r"\{1, 2\}", False, marks=pytest.mark.xfail(
        strict=True, reason="math-verify reads (1, 2) as an open interval and compares a 2-element set with its ends")),
    pytest.param(r"\frac{1}{3}", "0.333333", False, marks=pytest.mark.xfail(
        strict=True, reason="math-verify compares floats rounded to 6 decimals")),
    pytest.param(r"\frac{\pi}{2}", r"90^\circ", True, marks=pytest.mark.xfail(
        strict=True, reason="degrees are dropped, not converted to radians")),
    pytest.param("3", "4 = 3", False, marks=pytest.mark.xfail(
        strict=True, reason="math-verify takes an equation's right-hand side as the answer, true or not")),
]


def _response(i: int, answer: str) -> str:
    """Half the cases in the paper's format, half boxed at the end of a solution."""
    if i % 2:
        return f"Some work.\nFinal Answer: The final answer is ${answer}$. I hope it is correct."
    return f"Some work, then the result: $\\boxed{{{answer}}}$."


@pytest.fixture(scope="module")
def equivalence_verdicts(env):
    cases = [(g, p) for g, p, _ in EQUIVALENCE] + [tuple(c.values[:2]) for c in KNOWN_LIMITATIONS]
    verdicts = env.verify_batch([_response(i, p) for i, (_, p) in enumerate(cases)], [g for g, _ in cases])
    return {case: v for case, v in zip(cases, verdicts)}


def test_there_are_at_least_40_equivalence_cases_both_ways():
    assert len(EQUIVALENCE) >= 40
    assert sum(expected for *_, expected in EQUIVALENCE) >= 20
    assert sum(not expected for *_, expected in EQUIVALENCE) >= 20


@pytest.mark.parametrize("reference,answer,equal", EQUIVALENCE + KNOWN_LIMITATIONS)
def test_answer_equivalence(equivalence_verdicts, reference, answer, equal):
    verdict = equivalence_verdicts[(reference, answer)]
    assert verdict.info["extracted"] == answer, "extraction must hand the verifier the answer as written"
    assert verdict.reason != "timeout" and verdict.reason != "verifier error", verdict
    assert verdict.reward == (1.0 if equal else 0.0), f"{answer!r} vs reference {reference!r}: {verdict}"
    assert verdict.reason == ("correct" if equal else "wrong answer")


def test_normalize_answer_never_equates_empty_strings(env):
    assert normalize_answer(r"\text{ }") == ""
    assert env.verify(r"\boxed{\text{ }}", r"\text{ }").reward == 0.0


# =================================================================================================================
# extraction
# =================================================================================================================
@pytest.mark.parametrize("text,answer,source", [
    ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", r"\frac{1}{2}", "final_answer"),
    ("so x = 2.\nFinal Answer: The final answer is $x = 2$. I hope it is correct.", "x = 2", "final_answer"),
    ("The final answer is $$\\sqrt{2}$$.", r"\sqrt{2}", "final_answer"),
    ("The final answer is 42. I hope it is correct.", "42", "final_answer"),
    ("the FINAL ANSWER IS $7$", "7", "final_answer"),
    ("Final Answer: The final answer is $\\$18.90$. I hope it is correct.", r"\$18.90", "final_answer"),
    ("Final Answer: The final answer is $\\boxed{3}$. I hope it is correct.", "3", "final_answer"),
    ("first The final answer is $4$. then The final answer is $5$. I hope it is correct.", "5", "final_answer"),
    ("\\boxed{1} ... Final Answer: The final answer is $2$. I hope it is correct.", "2", "final_answer"),
    ("Thus $x = \\boxed{\\frac{5}{6}}$.", r"\frac{5}{6}", "boxed"),
    ("first \\boxed{1}, finally \\boxed{\\{1, 2\\}}.", r"\{1, 2\}", "boxed"),
    ("nested \\boxed{\\frac{\\sqrt{3}}{2}} done", r"\frac{\sqrt{3}}{2}", "boxed"),
    ("\\fbox{5}", "5", "boxed"),
    ("$\\boxed 5$", "5", "boxed"),
    ("The final answer is $3 (unclosed, so the boxed one counts: \\boxed{4}", "4", "boxed"),
    # as real small instruct models write it, outside the paper's format
    ("So, the answer is $4$.", "4", "answer_is"),
    ("The answer is 8.", "8", "answer_is"),
    ("The answer is 5", "5", "answer_is"),
    ("\\boxed{3} ... so the answer is 4.", "3", "boxed"),
    ("The final answer is 10.\n\nThe final answer is correct.", "10", "final_answer"),  # a verdict is not an answer
    ("The answer is 6. The answer is wrong.", "6", "answer_is"),
    # an answer on the line after the phrase: a formula counts; an earlier phrase does not stand in for it
    ("I first thought the final answer is 5. Checking again, the final answer is:\n\n$$7$$", "7", "final_answer"),
    ("At first the answer is 5, no. So the answer is:\n$7$", "7", "answer_is"),
])
def test_extraction(text, answer, source):
    assert extract_answer_with_source(text) == (answer, source)


@pytest.mark.parametrize("text", ["", "I am not sure.", "The answer is", "\\boxed{3", "\\boxed{}",
                                  "The final answer is $$", "The final answer is correct.",
                                  "...\n\nThe final answer is",
                                  "The final answer is 5. No: the final answer is:\nseven"])
def test_no_answer_extracted(env, text):
    assert extract_answer(text) is None
    verdict = env.verify(text, "5")
    assert (verdict.reward, verdict.reason) == (0.0, "no answer extracted")
    assert verdict.info["extracted"] is None


def test_last_boxed_balances_braces_and_ignores_escaped_ones():
    assert last_boxed(r"\boxed{\{1, \frac{2}{3}\}} tail") == r"\{1, \frac{2}{3}\}"
    assert last_boxed(r"\boxed{a} \boxed{b") == "a", "an unclosed last box falls back to the previous one"


def test_paper_format_and_boxed_both_verify(env):
    verdicts = env.verify_batch(
        ["Final Answer: The final answer is $\\frac{5}{6}$. I hope it is correct.", "... = \\boxed{\\frac{5}{6}}",
         "Final Answer: The final answer is $\\frac{6}{5}$. I hope it is correct."],
        [r"\frac{5}{6}"] * 3)
    assert [(v.reward, v.reason, v.info["source"]) for v in verdicts] == [
        (1.0, "correct", "final_answer"), (1.0, "correct", "boxed"), (0.0, "wrong answer", "final_answer")]


def test_malformed_answers_never_reach_sympy(env):
    # an unescaped $ inside the answer (two inline answers) and unbalanced braces: string comparison only
    verdicts = env.verify_batch([r"The final answer is 3$ or $4. I hope it is correct.", r"The final answer is 4}. ok"],
                                ["4", "4"])
    assert [v.info["extracted"] for v in verdicts] == ["3$ or $4", "4}"]
    assert [v.reward for v in verdicts] == [0.0, 0.0]
    assert all(v.info["method"] == "string" for v in verdicts)
    # "$X$" takes the first dollar group after "final answer is"
    assert extract_answer("The final answer is $3$ or $4$. I hope it is correct.") == "3"


# =================================================================================================================
# answer equivalence between attempts (same_answer: majority vote pools these)
# =================================================================================================================
def test_same_answer_is_the_verifiers_equivalence(env):
    assert env.same_answer(r"\frac{1}{2}", "0.5") and env.same_answer("0.5", "1/2"), "math-verify"
    assert env.same_answer(r"\frac{1}{2}", "1/2") and env.same_answer("1,250", "1250"), "string normalisation"
    assert env.same_answer(r"\sqrt{8}", r"2\sqrt{2}") and env.same_answer(r"\text{ }", r"\text{ }"), "reflexive"
    assert not env.same_answer(r"\frac{1}{2}", "3") and not env.same_answer("0.06", "0.6")
    assert not env.same_answer("4", r"4 \text{ or 3}"), "hedges are no more the same answer than they are correct"
    assert env.first_same_answer("0.5", ["3", r"\frac{1}{2}", "1/2"]) == 1
    assert env.first_same_answer("0.25", ["3", r"\frac{1}{2}"]) is None


def test_same_answer_decides_cheap_pairs_without_the_pool():
    env = MathEnv({"workers": 1, "timeout_s": 5.0})
    try:
        assert env.same_answer(HANG_ANSWER, HANG_ANSWER), "identical strings need no check"
        assert env.first_same_answer(r"\frac12", ["1/2", HANG_ANSWER]) == 0, "a string match ends the search"
        assert not env.same_answer("3$ or $4", "3") and not env.same_answer("4", "4}"), "malformed: strings only"
        assert env._pool is None, "none of these reached math-verify"
    finally:
        env.close()


# =================================================================================================================
# timeouts and crashes: a hung item never blocks the others, and the env keeps working
# =================================================================================================================
@pytest.fixture(scope="module")
def fast_env():
    env = MathEnv({"workers": 2, "timeout_s": 1.0}, PromptConfig(), seed=0)
    assert env.verify(r"\boxed{0.5}", r"\frac{1}{2}").reward == 1.0  # starts the pool (not part of any deadline)
    yield env
    env.close()


def test_hang_input_times_out_and_the_env_recovers(fast_env):
    pool = fast_env._verifier()
    old_pids = pool.worker_pids()
    assert len(old_pids) == 2
    start = time.monotonic()
    verdict = fast_env.verify(f"\\boxed{{{HANG_ANSWER}}}", "1")
    elapsed = time.monotonic() - start
    assert (verdict.reward, verdict.reason) == (0.0, "timeout"), verdict
    assert elapsed < 1.0 + 2.0, f"a hung item must be cut at timeout_s (took {elapsed:.1f} s)"
    for pid in old_pids:  # the hung worker (and its sibling) were killed, not left spinning
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    after = fast_env.verify_batch([r"\boxed{\sqrt{8}}", r"\boxed{3}"], [r"2\sqrt{2}", "4"])
    assert [(v.reward, v.reason) for v in after] == [(1.0, "correct"), (0.0, "wrong answer")]
    assert not set(pool.worker_pids()) & set(old_pids), "a fresh pool"


def test_a_hung_item_does_not_block_the_others(fast_env):
    good = [(r"\sqrt{8}", r"2\sqrt{2}"), ("(x+1)^2", "x^2+2x+1"), (r"\{2,1\}", r"\{1,2\}"), ("0.25", r"\frac14"),
            (r"\frac{6}{5}", r"\frac{5}{6}")]
    responses = [f"\\boxed{{{HANG_ANSWER}}}"] + [f"\\boxed{{{p}}}" for p, _ in good] + [f"\\boxed{{{HANG_ANSWER}}}"]
    references = ["1"] + [g for _, g in good] + ["2"]
    start = time.monotonic()
    verdicts = fast_env.verify_batch(responses, references)
    elapsed = time.monotonic() - start
    assert [v.reason for v in verdicts] == ["timeout", "correct", "correct", "correct", "correct", "wrong answer",
                                            "timeout"]
    assert elapsed < 8.0, f"two hung items (timeout 1 s) took {elapsed:.1f} s"


def test_same_answer_times_out_as_not_the_same(fast_env):
    # after the fast_env tests above that count its workers: a timeout kills the pool, and the pair after the hung one
    # starts a fresh pool (its workers import math-verify and sympy), which no deadline covers: that start is measured
    # here on this machine (a fresh pool's first verdict) and allowed for
    fast_env.close()
    start = time.monotonic()
    assert fast_env.verify(r"\boxed{0.5}", r"\frac{1}{2}").reward == 1.0  # math-verify's verdict: a pool starts
    pool_start = time.monotonic() - start
    start = time.monotonic()
    assert fast_env.first_same_answer("1", [HANG_ANSWER, "1.0"]) == 1, "a hung pair is not the same answer"
    elapsed = time.monotonic() - start
    assert elapsed < 1.0 + 2.0 + pool_start, f"timeout 1 s, pool start {pool_start:.1f} s: took {elapsed:.1f} s"


def _die_on_crash(pred: str, gold: str):
    """Stand-in verifier function for the pool: kills its own process on 'crash' (like a native abort)."""
    if pred == "crash":
        os._exit(3)
    return ("equal" if pred == gold else "unequal"), ""


def test_a_crashing_item_is_a_verifier_error_and_only_that_item():
    pool = VerifierPool(workers=2, timeout_s=5.0, func=_die_on_crash)
    try:
        results = pool.run([("1", "1"), ("crash", "1"), ("2", "3"), ("4", "4")])
        assert [status for status, _ in results] == ["equal", "error", "unequal", "equal"]
        assert pool.run([("5", "5")]) == [("equal", "")], "the pool is rebuilt after a crash"
    finally:
        pool.close()
    assert pool.worker_pids() == []


def test_close_stops_the_workers():
    env = MathEnv({"workers": 1, "timeout_s": 5.0})
    assert env.verify(r"\boxed{1/2}", "0.5").reward == 1.0
    pids = env._verifier().worker_pids()
    env.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert env.verify(r"\boxed{3}", "3").reward == 1.0, "string-equal answers need no pool"


# =================================================================================================================
# data: the shipped sample, user files (MATH and GSM8K style), splits, ids
# =================================================================================================================
def test_sample_set_splits_are_disjoint_seeded_and_cover_the_file(env):
    train, test = env.problems("train"), env.problems("test")
    all_ids = {p.id for p, _ in load_problems(SAMPLE_PATH, "train")}
    assert len(all_ids) >= 30
    assert len(test) == len(all_ids) // 4 and len(train) == len(all_ids) - len(test)
    assert not {p.id for p in train} & {p.id for p in test}
    assert {p.id for p in train} | {p.id for p in test} == all_ids
    again, other = MathEnv({}, seed=0), MathEnv({}, seed=1)
    assert [p.id for p in again.problems("test")] == [p.id for p in test]
    assert {p.id for p in other.problems("test")} != {p.id for p in test}
    assert env.get_problem(test[0].id) == test[0]
    assert env.metadata[test[0].id]["level"].startswith("Level ")


def test_every_sample_solution_verifies_against_its_reference(env):
    records = [json.loads(line) for line in SAMPLE_PATH.read_text().splitlines() if line.strip()]
    problems = {p.id: p for p in env.problems("train") + env.problems("test")}
    verdicts = env.verify_batch([r["solution"] for r in records], [problems[r["unique_id"]].reference for r in records])
    assert all(v.reward == 1.0 for v in verdicts), [(r["unique_id"], v) for r, v in zip(records, verdicts)
                                                    if not v.reward]
    assert len({r["type"] for r in records}) >= 5, "the sample covers several MATH subjects"


def test_first_attempt_prompt_inserts_the_problem():
    env = MathEnv({}, PromptConfig(first_attempt="Solve: {problem}\nAnswer:", correction="\nFix it.\n"))
    problem = env.problems("test")[0]
    assert env.first_attempt_prompt(problem) == f"Solve: {problem.text}\nAnswer:"
    assert env.correction_instruction() == "\nFix it.\n"
    assert "\\boxed" not in problem.text and problem.reference not in ("", None)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_user_file_in_math_style(tmp_path, env):
    train = _write_jsonl(tmp_path / "train.jsonl", [
        {"problem": "What is 1+1?", "solution": "Clearly $1+1=\\boxed{2}$.", "level": "Level 1", "type": "Algebra",
         "unique_id": "train/algebra/1.json"},
        {"problem": "Simplify $\\sqrt{8}$.", "solution": "$\\boxed{2\\sqrt{2}}$", "answer": "2\\sqrt{2}",
         "unique_id": "train/algebra/2.json"},
        {"problem": "No id here.", "solution": "first \\boxed{1}, then \\boxed{\\frac{1}{2}}"},
    ])
    test = _write_jsonl(tmp_path / "test.jsonl", [
        {"problem": "What is 2+2?", "solution": "It is 4.", "answer": "4"},
    ])
    math_env = MathEnv({"train_path": train, "test_path": test})
    train_problems = math_env.problems("train")
    assert [(p.id, p.reference) for p in train_problems] == [
        ("train/algebra/1.json", "2"), ("train/algebra/2.json", r"2\sqrt{2}"), ("train/2", r"\frac{1}{2}")]
    assert train_problems[0].text == "What is 1+1?"
    assert math_env.metadata["train/algebra/1.json"] == {"level": "Level 1", "type": "Algebra"}
    assert [(p.id, p.reference) for p in math_env.problems("test")] == [("test/0", "4")]
    assert math_env.verify("Final Answer: The final answer is $\\sqrt{8}$. I hope it is correct.",
                           train_problems[1].reference).reward == 1.0


def test_user_file_in_gsm8k_style(tmp_path, env):
    path = _write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": f"Question {i}?", "answer": f"Work <<{i}*1={i}>>.\n#### {i}"} for i in range(8)
    ] + [{"question": "Big one?", "answer": "Lots of work.\n#### 1,250"}])
    math_env = MathEnv({"train_path": path, "num_test": 2}, seed=0)
    train, test = math_env.problems("train"), math_env.problems("test")
    assert len(test) == 2 and len(train) == 7, "test carved out of the train file (num_test, at most a quarter)"
    by_id = {p.id: p for p in train + test}
    assert by_id["train/8"].reference == "1250" and by_id["train/8"].text == "Big one?"
    assert by_id["train/3"].reference == "3"
    verdicts = env.verify_batch(["The final answer is $1,250$. I hope it is correct.", "\\boxed{1250}", "\\boxed{125}"],
                                [by_id["train/8"].reference] * 3)
    assert [v.reward for v in verdicts] == [1.0, 1.0, 0.0]


def test_gsm8k_final_answer():
    assert gsm8k_final_answer("a #### b #### 1,000,000") == "1000000"
    assert gsm8k_final_answer("#### -3.5") == "-3.5"
    assert gsm8k_final_answer("72") == "72"


def test_user_file_in_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path = tmp_path / "test.parquet"
    pd.DataFrame({"problem": ["P1", "P2"], "solution": ["\\boxed{1}", "\\boxed{x^2}"],
                  "id": ["a", "b"]}).to_parquet(path)
    math_env = MathEnv({"test_path": str(path)})
    assert [(p.id, p.reference) for p in math_env.problems("test")] == [("a", "1"), ("b", "x^2")]
    with pytest.raises(ConfigError, match="train_path"):
        math_env.problems("train")


@pytest.mark.parametrize("records,match", [
    ([{"problem": "P", "solution": "no box"}], "boxed"),
    ([{"question": "Q"}], "answer"),
    ([{"text": "T"}], "'problem'.*'question'"),
    ([{"problem": "P", "answer": "1", "id": "x"}, {"problem": "Q", "answer": "2", "id": "x"}], "twice"),
])
def test_bad_user_files_are_config_errors(tmp_path, records, match):
    path = _write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(ConfigError, match=match):
        MathEnv({"train_path": path, "test_path": path} if match == "twice" else {"train_path": path})


def test_missing_file_and_bad_lines_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        MathEnv({"train_path": str(tmp_path / "nope.jsonl")})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "P", "answer": "1"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:2"):
        MathEnv({"train_path": str(bad)})


@pytest.mark.parametrize("key", ["train_path", "test_path"])
@pytest.mark.parametrize("content, message", [
    (b"", "holds no records (it is empty)"),
    (b"\n \n", "holds no records"),
    (b'{"problem": "P", "answer": "1"}\n{"problem": "Caf\xe9", "answer": "2"}\n',
     ":2: not UTF-8 text (byte 0xe9 at byte offset 48 of the file)"),
])
def test_empty_and_non_utf8_data_files_are_one_line_errors(tmp_path, key, content, message):
    """Issue 14, item 9: a UnicodeDecodeError traceback, or an empty train split that failed later."""
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        MathEnv({key: str(path)})
    assert str(info.value) == f"math data file {path}{'' if message.startswith(':') else ' '}{message}"


def test_a_file_that_is_not_parquet_is_a_config_error(tmp_path):
    pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path = tmp_path / "test.parquet"
    path.write_text("not parquet")
    with pytest.raises(ConfigError, match=r"math data file .*test\.parquet: cannot be read as parquet"):
        MathEnv({"test_path": str(path)})


# =================================================================================================================
# params and registry
# =================================================================================================================
@pytest.mark.parametrize("params,match", [
    ({"workers": 0}, "workers"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"timeout_s": "soon"}, "timeout_s"),
    ({"train_path": 5}, "train_path"),
    ({"num_test": -1}, "num_test"),
    ({"time_out": 5}, r"env\.params\.time_out"),
])
def test_bad_params_are_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        make_env(EnvConfig(name="math", params=params), PromptConfig())


def test_make_env_builds_the_math_env():
    env = make_env(EnvConfig(name="math", params={"timeout_s": 3, "workers": 1}, seed=2), PromptConfig())
    assert isinstance(env, MathEnv) and env.params.timeout_s == 3.0 and env.seed == 2
    assert env.split_names == ("train", "test")
    with pytest.raises(ConfigError, match="validation"):
        env.problems("validation")
    env.close()


# =================================================================================================================
# CHAMP from the installed champ-dataset package (envs/champ.py)
# =================================================================================================================
@pytest.mark.parametrize("raw,answer,why", [
    ("239", "239", ""),
    ("@@-3@@", "-3", ""),
    ("@@C(10, 5)@@, or equivalently @@252@@", "252", ""),
    ("100 (i.e., all values)", "100", ""),
    ("0 roots", "0", ""),
    ("0 is the only possible value", "0", ""),
    ("The limit exists and is equal to @@2/3@@", "2/3", ""),
    ("@@4^n@@", "4^n", ""),
    ("@@(x^2+x+1)(x^2-x+1)@@", "(x^2+x+1)(x^2-x+1)", ""),
    ("@@2^floor(n/2)*floor(n/2)!@@", "", "notation math-verify would misread"),
    ("@@x(x-1)(x-2)...(x-2022)@@", "", "notation math-verify would misread"),
    ("@@C(n+1, 2m+1)@@", "", "notation math-verify would misread"),
    ("Yes", "", "a prose or yes/no answer"),
    ("No integer solutions", "", "a prose or yes/no answer"),
    ("9642 and 87531", "", "several values"),
    ("@@(x=1, y=2)@@ and @@(x=2, y=1)@@", "", "several values"),
    ("@@a=3, b=-4@@", "", "several values"),
])
def test_champ_answers_are_kept_only_where_math_verify_can_check_them(raw, answer, why):
    from score_rl.envs.champ import final_answer

    assert final_answer(raw) == (answer, why)


def test_the_champ_dataset_loads_from_the_package_with_what_was_left_out_counted():
    from score_rl.envs.champ import load_champ
    from score_rl.envs.math_verifier import _mv_parse

    records, left_out = load_champ()
    assert len(records) + sum(left_out.values()) == 270  # champ-dataset 1.0.0, v0.json
    assert len(records) == 165 and dict(left_out) == {"a prose or yes/no answer": 66, "several values": 22,
                                                       "notation math-verify would misread": 17}
    assert len({r["unique_id"] for r in records}) == 165
    assert all("@@" not in r["problem"] and r["answer"] for r in records)
    assert [r["answer"] for r in records if not _mv_parse(r["answer"])] == []  # math-verify reads every kept one
    env = MathEnv({"dataset": "champ", "workers": 1}, PromptConfig(), seed=0)
    try:
        train, test = env.problems("train"), env.problems("test")
        assert (len(train), len(test)) == (124, 41)  # a quarter held out (num_test defaults to 500)
        assert env.left_out == dict(left_out) and env.metadata[test[0].id]["type"] in {
            "Combinatorics", "Number-Theory", "Inequality", "Polynomial", "Sequence"}
        # every kept gold answer, boxed, is judged right against itself, and a wrong number is not
        golds = [p.reference for p in test]
        assert [v.reward for v in env.verify_batch([f"\\boxed{{{g}}}" for g in golds], golds)] == [1.0] * len(golds)
        assert [v.reward for v in env.verify_batch(["\\boxed{123457}"] * 3, golds[:3])] == [0.0] * 3
        # CHAMP's plain-text notation against the LaTeX a model writes
        pairs = [(r"\left(\frac{n(n+1)}{2}\right)^2", "(n(n+1)/2)^2", 1.0), (r"2^{n-1}", "2^(n-1)", 1.0),
                 (r"1-\frac{1}{\sqrt[n]{2}}", "1-1/2^(1/n)", 1.0),
                 (r"x^3+y^3+z^3-3xyz", "(x+y+z)(x^2+y^2+z^2-xy-yz-xz)", 1.0),
                 (r"\frac{n}{n+1}", "n/(n-1)", 0.0), (r"2^{996}", "2^997", 0.0)]
        verdicts = env.verify_batch([f"\\boxed{{{pred}}}" for pred, _, _ in pairs], [gold for _, gold, _ in pairs])
        assert [v.reward for v in verdicts] == [want for _, _, want in pairs]
    finally:
        env.close()


@pytest.mark.parametrize("params,match", [
    ({"dataset": "gsm8k"}, "must be null .data files. or 'champ'"),
    ({"dataset": "champ", "train_path": "x.jsonl"}, "exclude each other"),
])
def test_a_wrong_dataset_setting_is_one_config_error(params, match):
    with pytest.raises(ConfigError, match=match):
        MathEnv(params)


def test_real_smollm2_answers_are_read_as_the_model_states_them(env):
    """Greedy two-turn episodes of SmolLM2-135M-Instruct under configs/score_math.yaml's prompts (the paper's
    "Final Answer: The final answer is $X$" instruction), captured with `score-rl eval` on the shipped sample, CHAMP and
    ten easy LaTeX problems; each row's answer and reward checked by hand. They hold what a real small model writes:
    "So, the answer is $4$.", "$3^2 = 9$" (right: an equation's right-hand side), "$x + 5 = 12$" (restating the
    problem: wrong), the prompt's "$answer$" copied literally, "The final answer is correct." after the answer, and
    responses cut off at "The final answer is"."""
    rows = [json.loads(line) for line in (FIXTURES / "smollm2_math.jsonl").read_text().splitlines()]
    assert len(rows) == 52 and {r["source"] for r in rows} == {"math_sample", "champ", "easy"}
    verdicts = env.verify_batch([r["response"] for r in rows], [r["reference"] for r in rows])
    for row, verdict in zip(rows, verdicts):
        assert verdict.info["extracted"] == row["answer"], row
        assert verdict.reward == row["reward"], row
    assert sum(r["answer"] is not None for r in rows) == 31 and sum(r["reward"] for r in rows) == 1
    # without the "answer is" rule these 4 would be "no answer extracted"
    assert sum(verdict.info["source"] == "answer_is" for verdict in verdicts) == 4


@pytest.mark.parametrize("text", [
    "The answer is 5" + " " * 100_000 + "x", "The final answer is 5" + "\t" * 100_000 + "x",
    "final answer is\n" * 20_000, "answer is\n" * 50_000, "The answer is correct. " * 50_000,
    "The final answer is " + "$correct$ " * 30_000,
])
def test_answer_extraction_is_linear_on_hostile_text(text):
    """It runs in the calling process, outside the verifier pool's time limit: no input may make it slow."""
    start = time.monotonic()
    extract_answer_with_source(text)
    assert time.monotonic() - start < 1.0
