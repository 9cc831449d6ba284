"""Inference-time scaling: pass@k against brute force, majority vote ties, parallel vs sequential budgets."""

from __future__ import annotations

import itertools
import random

import pytest

from score_rl.episode import Episode, Turn
from score_rl.eval.scaling import majority_vote, majority_vote_curves, pass_at_k, pass_at_k_curve, scaling_tables


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
