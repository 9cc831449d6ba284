"""The test-time compute study's estimators (score_rl/eval/compute_optimal.py): unbiased reuse of sampled chains,
no selection on the scored half, the coverage law's fit, weighted vs plain votes, FLOPs. Plain data: milliseconds."""

import itertools
import math
import random

import pytest

from score_rl.eval.compute_optimal import (ProblemChains, bootstrap_ci, cell_tokens, cell_value, compute_optimal,
                                           difficulty_bins, fit_coverage_law, flops, halves, sequential_coverage,
                                           splits)

# a chain "type": the answer class of each of its 3 turns; class 0 is the correct answer
TYPES = [(1, 0, 0), (2, 2, 1), (1, 1, 1), (0, 0, 2)]
PROBS = [0.4, 0.3, 0.2, 0.1]
CLASS_REWARD = {0: 1.0, 1: 0.0, 2: 0.0}


def problem_of(types, pid="p", weights=None):
    return ProblemChains(pid, labels=[list(TYPES[t]) for t in types],
                         reward=[[CLASS_REWARD[label] for label in TYPES[t]] for t in types],
                         settled=[[True] * 3 for _ in types],
                         correct=[[label == 0 for label in TYPES[t]] for t in types],
                         weights=weights or [[1.0] * 3 for _ in types])


def true_cell_value(cell, selection):
    """E over `chains` i.i.d. draws of the chain type: by enumeration of every tuple of types."""
    chains, turns = cell
    total = 0.0
    for combo in itertools.product(range(len(TYPES)), repeat=chains):
        p = math.prod(PROBS[t] for t in combo)
        total += p * cell_value(problem_of(list(combo)), (chains, turns), selection)
    return total


@pytest.mark.parametrize("selection", ["majority", "oracle"])
@pytest.mark.parametrize("cell", [(1, 1), (2, 1), (2, 3), (3, 2), (1, 3)])
def test_reusing_a_pool_of_chains_is_unbiased(cell, selection):
    """E over pools of m = 4 i.i.d. chains of the estimate (every c-subset of the pool) == the cell's true value."""
    pool = 4
    expected = 0.0
    for combo in itertools.product(range(len(TYPES)), repeat=pool):
        p = math.prod(PROBS[t] for t in combo)
        expected += p * cell_value(problem_of(list(combo)), cell, selection)
    assert expected == pytest.approx(true_cell_value(cell, selection), abs=1e-12)


def test_random_subsets_average_to_the_exact_value():
    rng = random.Random(1)
    prob = problem_of([rng.randrange(len(TYPES)) for _ in range(10)])
    exact = cell_value(prob, (4, 2), "majority", max_subsets=10 ** 6)
    sampled = [cell_value(prob, (4, 2), "majority", max_subsets=20, rng=random.Random(s)) for s in range(400)]
    assert sum(sampled) / len(sampled) == pytest.approx(exact, abs=0.02)
    assert len({round(v, 9) for v in sampled}) > 1, "past max_subsets the subsets are random"


def test_a_tie_is_split_evenly_whatever_the_sampling_order():
    prob = problem_of([0, 1])  # turn 1: classes 1 and 2, one vote each; turn 3: classes 0 and 1
    assert cell_value(prob, (2, 3), "majority") == 0.5
    assert cell_value(problem_of([1, 0]), (2, 3), "majority") == 0.5


def test_the_oracle_is_coverage_over_every_generation_of_the_cell():
    prob = problem_of([0, 2])  # type 0 correct from turn 2, type 2 never
    assert cell_value(prob, (1, 1), "oracle") == 0.0
    assert cell_value(prob, (1, 2), "oracle") == 0.5  # one of two chains, correct within 2 turns
    assert cell_value(prob, (2, 2), "oracle") == 1.0


def test_a_constant_weight_vote_is_the_plain_vote():
    rng = random.Random(2)
    for _ in range(50):
        types = [rng.randrange(len(TYPES)) for _ in range(6)]
        weighted = problem_of(types, weights=[[3.7] * 3 for _ in types])
        for cell in [(1, 1), (3, 2), (6, 1), (2, 3)]:
            assert cell_value(weighted, cell, "weighted") == cell_value(weighted, cell, "majority")


def test_weights_can_overturn_the_majority():
    # turn 1 answers: class 1, 1, 0 -> majority wrong; the correct chain's weight 5 beats 1 + 1
    prob = problem_of([0, 0, 3], weights=[[1.0] * 3, [1.0] * 3, [5.0] * 3])
    assert cell_value(prob, (3, 1), "majority") == 0.0
    assert cell_value(prob, (3, 1), "weighted") == 1.0


def test_a_cell_needs_enough_long_chains():
    prob = problem_of([0, 1])
    prob.labels[1] = prob.labels[1][:1]
    with pytest.raises(ValueError, match=r"needs 2 chains of >= 2 turns"):
        cell_value(prob, (2, 2), "majority")
    assert splits(16, 16, 16) == [(16, 1), (8, 2), (4, 4), (2, 8), (1, 16)]
    assert splits(16, 4, 8) == [(8, 2), (4, 4)]


def test_tokens_and_flops_against_a_hand_computation():
    prob = problem_of([0, 1])
    prob.labels[1] = prob.labels[1][:1]
    prob.generated, prob.prompt = [[5, 7], [4]], [[10, 30], [10]]
    # one chain of 2 turns: only chain 0 is long enough
    assert cell_tokens(prob, (1, 2)) == {"generated": 12, "prefill": 40, "prefill_reused": 10 + (30 - 10 - 5)}
    # two chains of 1 turn: the prompt once with reuse
    assert cell_tokens(prob, (2, 1)) == {"generated": 9, "prefill": 20, "prefill_reused": 10}
    assert flops(1000, cell_tokens(prob, (1, 2))) == {"flops": 2 * 1000 * 52, "flops_reused": 2 * 1000 * 37}


def test_the_compute_optimal_choice_never_uses_the_half_it_is_scored_on():
    pids = [f"p{i}" for i in range(40)]
    half = halves(pids, seed=3)
    bins = {p: i % 2 for i, p in enumerate(pids)}
    cells = [(4, 1), (2, 2), (1, 4)]
    # half 0 does best with (4, 1), half 1 with (1, 4)
    values = {p: {(4, 1): 1.0 - half[p], (2, 2): 0.5, (1, 4): float(half[p])} for p in pids}
    scored, choices = compute_optimal(values, cells, bins, half)
    for b in (0, 1):
        assert choices[(b, 0)] == (1, 4) and choices[(b, 1)] == (4, 1), "chosen on the other half"
    assert all(v == 0.0 for v in scored.values()), "the other half's best is this half's worst"
    # whatever the scored half's own values, its choice stays the same
    changed = {p: ({c: random.Random(p).random() for c in cells} if half[p] == 0 else values[p]) for p in pids}
    assert compute_optimal(changed, cells, bins, half)[1][(0, 0)] == (1, 4)
    assert sorted(set(half.values())) == [0, 1] and abs(sum(half.values()) - 20) <= 1


def test_difficulty_bins_are_equal_sized_easiest_first():
    scores = {f"p{i}": (i % 7) / 6 for i in range(50)}
    bins = difficulty_bins(scores, 5, seed=0)
    sizes = [sum(b == k for b in bins.values()) for k in range(5)]
    assert sizes == [10] * 5
    assert min(scores[p] for p in scores if bins[p] == 0) >= max(scores[p] for p in scores if bins[p] == 1)
    assert difficulty_bins(scores, 5, seed=0) == bins


@pytest.mark.parametrize("a,b", [(2.0, 0.4), (0.5, 1.0), (5.0, 0.2)])
def test_the_coverage_fit_recovers_a_and_b(a, b):
    ks = list(range(1, 65))
    curve = [math.exp(-a * k ** -b) for k in ks]
    fit = fit_coverage_law(ks, curve)
    assert fit.a == pytest.approx(a, rel=1e-9) and fit.b == pytest.approx(b, rel=1e-9) and fit.rmse < 1e-12
    assert fit.k_for(fit.coverage(100)) == pytest.approx(100, rel=1e-9)
    noisy = [c ** (1 + random.Random(k).uniform(-0.05, 0.05)) for k, c in zip(ks, curve)]  # -log c off by 5%
    rough = fit_coverage_law(ks, noisy)
    assert rough.a == pytest.approx(a, rel=0.15) and rough.b == pytest.approx(b, rel=0.15)


def test_sequential_coverage_and_bootstrap():
    probs = [problem_of([0, 2]), problem_of([1, 3])]
    # turn 1: p0 none of 2, p1 type 3 correct (1 of 2); turn 2: p0 1 of 2, p1 1 of 2
    assert sequential_coverage(probs, 2) == [0.25, 0.5]
    mean, lo, hi = bootstrap_ci([0.0, 1.0] * 50, reps=500)
    assert mean == 0.5 and lo < 0.5 < hi and hi - lo < 0.3


def _chains(labels, rewards, settled=None, weights=None):
    return ProblemChains("p", labels=labels, reward=rewards, settled=settled or [[True] * len(c) for c in labels],
                         correct=[[r >= 0.5 for r in c] for c in rewards],
                         weights=weights or [[1.0] * len(c) for c in labels])


def test_a_vote_is_judged_by_its_own_members_never_by_an_attempt_outside_it():
    """A non-transitive equivalence (math-verify: 10% = 10 and 0.1 = 10%, not 0.1 = 10) pools a right 10% and a wrong
    0.1 into one class: a vote of two wrong 0.1 must not borrow the verdict of the 10% outside it."""
    prob = _chains([[0, 0], [0], [0]], [[1.0, 1.0], [0.0], [0.0]])
    assert cell_value(prob, (2, 1), "majority") == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert cell_value(prob, (2, 1), "majority") <= cell_value(prob, (2, 1), "oracle")


def test_unsettled_verdicts_do_not_decide_a_vote():
    prob = _chains([[0], [0], [1]], [[1.0], [0.0], [0.0]], settled=[[True], [False], [True]])
    # {0, 1}: class 0, only chain 0 settled -> 1; {0, 2}: a tie of 1 and 0 -> 0.5; {1, 2}: unsettled 0 vs 0 -> 0
    assert cell_value(prob, (2, 1), "majority") == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    none = _chains([[0], [0]], [[1.0], [1.0]], settled=[[False], [False]])
    assert cell_value(none, (2, 1), "majority") == 0.0


def test_zero_weights_give_the_plain_vote_and_weights_outrank_size():
    prob = _chains([[0], [0], [1]], [[1.0], [1.0], [0.0]], weights=[[0.0], [0.0], [0.0]])
    assert cell_value(prob, (3, 1), "weighted") == cell_value(prob, (3, 1), "majority") == 1.0
    heavy = _chains([[0], [0], [1]], [[1.0], [1.0], [0.0]], weights=[[0.1], [0.1], [0.5]])
    assert cell_value(heavy, (3, 1), "weighted") == 0.0


def test_an_almost_flat_coverage_law_extrapolates_to_infinity_without_crashing():
    from score_rl.eval.compute_optimal import CoverageFit

    assert CoverageFit(0.6, 0.002, 0.0, 16).k_for(0.95) == math.inf
    assert CoverageFit(0.6, 0.0, 0.0, 16).k_for(0.95) == math.inf
    assert fit_coverage_law([1, 2, 3], [1.0, 1.0, 1.0]) is None


def test_the_whole_procedure_bootstrap_brackets_the_estimate_and_pairs_the_difference():
    from score_rl.eval.compute_optimal import bootstrap_compute_optimal

    rng = random.Random(0)
    pids = [f"p{i}" for i in range(60)]
    values = {p: {(2, 1): float(rng.random() < 0.5), (1, 2): float(rng.random() < 0.8)} for p in pids}
    bins = {p: i % 3 for i, p in enumerate(pids)}
    scored, _ = compute_optimal(values, [(2, 1), (1, 2)], bins, halves(pids))
    estimate = sum(scored.values()) / len(scored)
    spread = bootstrap_compute_optimal(values, [(2, 1), (1, 2)], bins, reps=300, against=(2, 1))
    assert spread["all"][0] <= estimate <= spread["all"][1]
    assert 0 < spread["minus"][0] < spread["minus"][1], "(1, 2) is far better than (2, 1): the paired gap is > 0"
    assert set(spread) == {"all", "minus", 0, 1, 2}
    with pytest.raises(ValueError, match="at least 2 problems"):
        compute_optimal({"p": {(1, 1): 1.0}}, [(1, 1)], {"p": 0}, {"p": 0})
