"""Inference-time scaling: pass@k against brute force, majority vote ties, parallel vs sequential budgets."""

from __future__ import annotations

import itertools
import random

import pytest

from score_rl.config import EnvConfig, PromptConfig
from score_rl.envs import Env, make_env
from score_rl.episode import Episode, Turn
from score_rl.eval.scaling import (
    answer_classes, majority_vote, majority_vote_correct, majority_vote_curves, pass_at_k, pass_at_k_curve,
    scaling_tables, settled, vote_key,
)


def brute_force_pass_at_k(outcomes, k):
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_pass_at_k_equals_enumeration_over_all_subsets(n):
    rng = random.Random(n)
    for _ in range(5):
        outcomes = [rng.random() < 0.4 for _ in range(n)]
        for k in range(1, n + 1):
            assert pass_at_k(n, sum(outcomes), k) == pytest.approx(brute_force_pass_at_k(outcomes, k))


def test_pass_at_k_edges_and_errors():
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    assert pass_at_k_curve([0, 4], 4) == [0.5, 0.5, 0.5, 0.5]


def test_majority_vote_breaks_ties_by_first_occurrence():
    assert majority_vote(["a", "b", "b", "a"]) == "a"
    assert majority_vote(["b", "a", "a", "b"]) == "b"
    assert majority_vote(["c", "a", "b", "a"]) == "a"
    assert majority_vote(["x"]) == "x"


def _ep(pid, idx, answers, truth):
    turns = [Turn([], [], [], str(a), float(a == truth), info={"extracted": a}) for a in answers]
    return Episode(problem_id=pid, sample_index=idx, turns=turns, reference=truth)


def test_parallel_uses_2k_first_attempts_and_sequential_k_second_attempts():
    # one problem, 4 episodes: first attempts mostly wrong (7), second attempts right (5) in episodes 0 and 1
    eps = [_ep("p", 0, [7, 5], 5), _ep("p", 1, [7, 5], 5), _ep("p", 2, [5, 7], 5), _ep("p", 3, [5, 7], 5)]
    rows = majority_vote_curves({"p": eps})
    # K=1: parallel = vote over first attempts of eps 0,1 (7,7) → wrong; sequential = second attempt of ep 0 → right
    # K=2: parallel = vote over 7,7,5,5 → tie → 7 (seen first) → wrong; sequential = 5,5 → right
    assert rows == [(2, 0.0, 1.0), (4, 0.0, 1.0)]


def test_scaling_tables_shapes():
    eps = [_ep(f"p{p}", i, [i % 2, 1], 1) for p in range(3) for i in range(4)]
    tables = scaling_tables(eps)
    assert len(tables["pass_at_k"]) == 4
    assert [b for b, _, _ in tables["majority"]] == [2, 4]


# =================================================================================================================
# answers pooled by the environment's equivalence (Env.same_answer)
# =================================================================================================================
def _turns(answers, rewards):
    return [Turn([], [], [], f"... \\boxed{{{a}}}", float(r), info={"extracted": a}) for a, r in zip(answers, rewards)]


@pytest.fixture(scope="module")
def math_env():
    env = make_env(EnvConfig(name="math", params={"workers": 1, "timeout_s": 10.0}), PromptConfig())
    yield env
    env.close()


def test_default_equivalence_pools_identical_strings_and_keeps_different_ones_apart():
    env = Env()
    assert env.same_answer("42", "42") and env.same_answer(" 4  2\n", "4 2"), "whitespace-normalised equality"
    assert not env.same_answer("42", "43") and not env.same_answer("1/2", "0.5")
    assert env.first_same_answer("7", ["5", "7", "7"]) == 1 and env.first_same_answer("8", ["5", "7"]) is None
    answers = ["b", "a", "a", "c", "b", "b"]
    assert answer_classes(answers, env) == answer_classes(answers) == [0, 1, 1, 2, 0, 0]
    assert majority_vote(answers, env) == "b"
    assert majority_vote(["x", "y", "y", "x"], env) == "x", "ties still go to the class seen first"


def test_math_answers_equal_by_the_verifier_are_one_vote(math_env):
    # \frac{1}{2}, 0.5 and 1/2 are each verified correct; 3 (wrong) appears twice
    answers = [r"\frac{1}{2}", "3", "0.5", "3", "1/2"]
    rewards = [1.0, 0.0, 1.0, 0.0, 1.0]
    assert [v.reward for v in math_env.verify_batch([f"\\boxed{{{a}}}" for a in answers], ["1/2"] * 5)] == rewards
    assert majority_vote(answers) == "3", "keyed on raw strings, the wrong answer wins (the bug)"
    assert answer_classes(answers, math_env) == [0, 1, 0, 1, 0]
    assert majority_vote(answers, math_env) == r"\frac{1}{2}", "the 1/2 class wins 3 votes to 2"
    turns = _turns(answers, rewards)
    assert majority_vote_correct(turns) == 0.0
    assert majority_vote_correct(turns, math_env) == 1.0


def test_scaling_tables_use_the_env_equivalence(math_env):
    # 8 first attempts: the 1/2 class has 3, "3" and "7" have 2 each; raw strings elect "3" (first of the 2-vote keys)
    first = [("3", 0), (r"\frac{1}{2}", 1), ("3", 0), ("0.5", 1), ("1/2", 1), ("7", 0), ("7", 0), ("9", 0)]
    eps = [Episode("p", i, _turns([a, a], [r, r]), reference="1/2") for i, (a, r) in enumerate(first)]
    assert [row[1] for row in scaling_tables(eps)["majority"]] == [0.0, 0.0, 0.0]
    # budget 2: 3 vs \frac{1}{2} (tie: 3 first); 4: 3,3 vs 1/2-class 2 (tie: 3 first); 8: the 1/2 class, 3 votes
    assert [row[1] for row in scaling_tables(eps, math_env)["majority"]] == [0.0, 0.0, 1.0]


def test_answers_without_an_extracted_answer_are_never_pooled_with_answers(math_env):
    no_answer = Turn([], [], [], "5", 0.0, info={"extracted": None})
    turns = [no_answer, Turn([], [], [], "\\boxed{5}", 1.0, info={"extracted": "5"}), no_answer]
    assert majority_vote_correct(turns, math_env) == 0.0, "the two identical non-answers outvote the answer"


def test_the_elected_answer_is_judged_by_its_own_verdict_not_its_classmates(math_env):
    """The verifier's equivalence is not transitive (10% ≡ 10 and 0.1 ≡ 10%, but 0.1 ≢ 10): 0.1 x3 joins the class
    of 10%, and that class wins; the elected answer is its first member (10%), judged right — but once 0.1 comes
    first, the elected answer is 0.1, judged wrong, however its classmates were judged."""
    answers, gold = [r"10\%", "0.1", "0.1", "0.1", "7", "7", "7", "7"], "10"
    rewards = [v.reward for v in math_env.verify_batch([f"\\boxed{{{a}}}" for a in answers], [gold] * 8)]
    assert rewards == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert answer_classes(answers, math_env) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert majority_vote_correct(_turns(answers, rewards), math_env) == 1.0
    reordered = [1, 2, 3, 0, 4, 5, 6, 7]
    turns = _turns([answers[i] for i in reordered], [rewards[i] for i in reordered])
    assert majority_vote_correct(turns, math_env) == 0.0, "elected 0.1 (wrong); 10% in its class must not rescue it"


def test_a_timed_out_answer_joins_identical_strings_and_is_never_elected_on_its_own_verdict(math_env):
    """A verifier timeout says nothing about the answer: the timed-out 1/2 still pools with the other 1/2 strings (no
    verifier call for it), and its class is judged by the first member with a settled verdict."""
    def turn(answer, reward, reason):
        return Turn([], [], [], answer, reward, reason=reason, info={"extracted": answer})

    votes = [turn("1/2", 0.0, "timeout"), turn("3", 0.0, "wrong answer"), turn("1/2", 0.0, "timeout"),
             turn("3", 0.0, "wrong answer"), turn("1/2", 1.0, "correct")]
    assert answer_classes([vote_key(t) for t in votes], math_env, settled(votes, math_env)) == [0, 1, 0, 1, 0]
    assert majority_vote_correct(votes, math_env) == 1.0, "the 1/2 class wins; its settled member says right"
    # a timed-out answer is not compared by the env (that would cost a timeout per class): 0.5 does not join it ...
    assert answer_classes(["1/2", "0.5"], math_env, [False, True]) == [0, 1]
    # ... nor is it compared against a representative: it founds its own class
    assert answer_classes(["0.5", "1/2"], math_env, [True, False]) == [0, 1]
    # a class with no settled verdict is not correct
    assert majority_vote_correct([turn("1/2", 1.0, "timeout")] * 2, math_env) == 0.0


def test_unsettled_reasons_are_the_envs_own():
    from score_rl.envs.code import CodeEnv
    from score_rl.envs.math import MathEnv

    assert Env.unsettled_reasons == () and "timeout" not in CodeEnv.unsettled_reasons
    assert set(MathEnv.unsettled_reasons) == {"timeout", "verifier error"}
    ran_too_long = Turn([], [], [], "prog", 0.0, reason="timeout")
    assert settled([ran_too_long], CodeEnv) == [True] and settled([ran_too_long], None) == [True]
