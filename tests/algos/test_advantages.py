"""Per-turn advantages (score_rl/algos/advantages.py): credit assignment, baselines and reward-side KL."""

from __future__ import annotations

import copy
import math
from typing import List, Sequence, Tuple

import pytest

from score_rl.algos.advantages import compute_advantages, turn_returns
from score_rl.episode import Episode, Turn

ESTIMATORS = ["rloo", "group_mean", "group_norm", "none"]


def _episode(pid: str, idx: int, shaped: Sequence[float], kl_coef: Sequence[float] = (0.1, 0.01)) -> Episode:
    turns = [
        Turn(prompt_ids=[1], response_ids=[2], sampling_logprobs=[-0.1], response_text="x", reward=float(r > 0),
             shaped_reward=float(r), kl_coef=float(c))
        for r, c in zip(shaped, kl_coef)
    ]
    return Episode(problem_id=pid, sample_index=idx, turns=turns)


def _group(pid: str, rows: Sequence[Tuple[float, float]], **kw) -> List[Episode]:
    return [_episode(pid, i, row, **kw) for i, row in enumerate(rows)]


def _adv(episodes: Sequence[Episode], turn: int) -> List[float]:
    return [ep.turns[turn].advantage for ep in episodes]


# a group of 4 samples of one problem: Stage II-like shaped rewards (alpha = 10)
ROWS = [(1.0, 1.0), (0.0, 11.0), (1.0, -10.0), (0.0, 0.0)]
ROWS_NEW_TURN2 = [(1.0, 0.0), (0.0, 1.0), (1.0, 5.0), (0.0, -3.0)]  # same turn-1 rewards, different turn-2 rewards


# --- per-turn credit (gamma) -----------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gamma0_turn1_advantage_does_not_depend_on_turn2_reward(estimator):
    a, b = _group("p", ROWS), _group("p", ROWS_NEW_TURN2)
    compute_advantages(a, estimator, gamma=0.0)
    compute_advantages(b, estimator, gamma=0.0)
    assert _adv(a, 0) == pytest.approx(_adv(b, 0), abs=1e-9), (
        f"{estimator}: with gamma=0 turn 1 must not be credited with turn 2's reward"
    )
    assert _adv(a, 1) != pytest.approx(_adv(b, 1)), "sanity: turn-2 advantages must follow the turn-2 rewards"


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gamma_positive_turn1_advantage_depends_on_turn2_reward(estimator):
    a, b = _group("p", ROWS), _group("p", ROWS_NEW_TURN2)
    compute_advantages(a, estimator, gamma=0.5)
    compute_advantages(b, estimator, gamma=0.5)
    assert _adv(a, 0) != pytest.approx(_adv(b, 0)), f"{estimator}: with gamma>0 turn 1 must see turn 2's reward"


def test_turn_returns_discount_hand_values():
    assert turn_returns([1.0, 11.0], 0.0) == pytest.approx([1.0, 11.0])
    assert turn_returns([1.0, 11.0], 0.5) == pytest.approx([6.5, 11.0])
    assert turn_returns([1.0, 2.0, 4.0], 0.5) == pytest.approx([3.0, 4.0, 4.0])


def test_none_with_gamma_is_the_discounted_return():
    eps = _group("p", ROWS)
    compute_advantages(eps, "none", gamma=0.5)
    assert _adv(eps, 0) == pytest.approx([r1 + 0.5 * r2 for r1, r2 in ROWS])
    assert _adv(eps, 1) == pytest.approx([r2 for _, r2 in ROWS])


# --- estimators ------------------------------------------------------------------------------------------------
def test_rloo_is_reward_minus_mean_of_the_other_samples():
    eps = _group("p", ROWS)
    compute_advantages(eps, "rloo", gamma=0.0)
    # turn 1 rewards [1, 0, 1, 0]; turn 2 rewards [1, 11, -10, 0]; hand-computed leave-one-out baselines
    assert _adv(eps, 0) == pytest.approx([1 - 1 / 3, 0 - 2 / 3, 1 - 1 / 3, 0 - 2 / 3])
    assert _adv(eps, 1) == pytest.approx([1 - 1 / 3, 11 - (-3), -10 - 4, 0 - 2 / 3])


def test_rloo_two_samples():
    eps = _group("p", [(1.0, 0.0), (0.0, 11.0)])
    compute_advantages(eps, "rloo", gamma=0.0)
    assert _adv(eps, 0) == pytest.approx([1.0, -1.0])
    assert _adv(eps, 1) == pytest.approx([-11.0, 11.0])


def test_rloo_with_one_sample_raises():
    with pytest.raises(ValueError, match="RLOO"):
        compute_advantages(_group("p", [(1.0, 1.0)]), "rloo", gamma=0.0)


def test_group_mean_is_reward_minus_group_mean_and_sums_to_zero_per_turn():
    eps = _group("p", ROWS)
    compute_advantages(eps, "group_mean", gamma=0.0)
    assert _adv(eps, 0) == pytest.approx([0.5, -0.5, 0.5, -0.5])
    assert _adv(eps, 1) == pytest.approx([1 - 0.5, 11 - 0.5, -10 - 0.5, 0 - 0.5])
    for t in (0, 1):
        assert sum(_adv(eps, t)) == pytest.approx(0.0, abs=1e-9), f"group_mean advantages of turn {t + 1} must sum to 0"


def test_group_norm_standardises_each_turn():
    eps = _group("p", ROWS)
    compute_advantages(eps, "group_norm", gamma=0.0)
    for t in (0, 1):
        a = _adv(eps, t)
        mean = sum(a) / len(a)
        std = math.sqrt(sum((x - mean) ** 2 for x in a) / len(a))
        assert mean == pytest.approx(0.0, abs=1e-9), f"group_norm turn {t + 1}: mean must be 0"
        assert std == pytest.approx(1.0, abs=1e-4), f"group_norm turn {t + 1}: (population) std must be 1"
    assert _adv(eps, 0) == pytest.approx([1.0, -1.0, 1.0, -1.0], abs=1e-4)


def test_group_norm_all_equal_rewards_give_zero_not_nan():
    eps = _group("p", [(1.0, 1.0)] * 4)
    compute_advantages(eps, "group_norm", gamma=0.0)
    for t in (0, 1):
        assert _adv(eps, t) == pytest.approx([0.0] * 4, abs=1e-9), "a constant group must give zero advantages"


def test_none_is_the_raw_shaped_reward():
    eps = _group("p", ROWS)
    compute_advantages(eps, "none", gamma=0.0)
    assert _adv(eps, 0) == pytest.approx([r1 for r1, _ in ROWS])
    assert _adv(eps, 1) == pytest.approx([r2 for _, r2 in ROWS])


# --- groups are per problem ------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["rloo", "group_mean", "group_norm"])
def test_baselines_are_per_problem_and_problems_do_not_mix(estimator):
    other = [(5.0, 7.0), (3.0, -2.0), (9.0, 9.0)]
    alone_a, alone_b = _group("a", ROWS), _group("b", other)
    compute_advantages(alone_a, estimator, gamma=0.0)
    compute_advantages(alone_b, estimator, gamma=0.0)
    # interleave both problems in one batch
    mixed_a, mixed_b = _group("a", ROWS), _group("b", other)
    batch = [mixed_a[0], mixed_b[0], mixed_a[1], mixed_b[1], mixed_a[2], mixed_b[2], mixed_a[3]]
    compute_advantages(batch, estimator, gamma=0.0)
    for t in (0, 1):
        assert _adv(mixed_a, t) == pytest.approx(_adv(alone_a, t)), f"{estimator}: problem b leaked into a's baseline"
        assert _adv(mixed_b, t) == pytest.approx(_adv(alone_b, t)), f"{estimator}: problem a leaked into b's baseline"


def test_compute_advantages_fills_every_turn_as_float():
    eps = _group("a", ROWS) + _group("b", ROWS)
    compute_advantages(eps, "rloo", gamma=0.0)
    assert all(isinstance(t.advantage, float) for ep in eps for t in ep.turns)


# --- reward-side KL penalties ----------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["rloo", "group_mean", "group_norm", "none"])
def test_reward_side_kl_penalty_lowers_the_high_kl_sample(estimator):
    eps = _group("p", [(1.0, 1.0), (1.0, 1.0), (0.0, 0.0), (0.0, 0.0)])
    penalties = [[0.0, 0.0], [5.0, 5.0], [0.0, 0.0], [5.0, 5.0]]  # samples 1 and 3 drifted far from the reference
    compute_advantages(eps, estimator, gamma=0.0, kl_penalties=penalties)
    for t in (0, 1):
        a = _adv(eps, t)
        assert a[1] < a[0] and a[3] < a[2], f"{estimator}: high-KL samples must get lower turn-{t + 1} advantages"


def test_reward_side_kl_uses_each_turns_kl_coef():
    # Stage I coefs: beta2 = 0.1 on turn 1, beta1 = 0.01 on turn 2
    eps = _group("p", [(0.0, 1.0), (0.0, 1.0)], kl_coef=(0.1, 0.01))
    compute_advantages(eps, "none", gamma=0.0, kl_penalties=[[2.0, 3.0], [0.0, 0.0]])
    assert _adv(eps, 0) == pytest.approx([0.0 - 0.1 * 2.0, 0.0]), "turn 1 penalty must be kl_coef_1 * KL_1"
    assert _adv(eps, 1) == pytest.approx([1.0 - 0.01 * 3.0, 1.0]), "turn 2 penalty must be kl_coef_2 * KL_2"


def test_reward_side_kl_rloo_hand_values():
    eps = _group("p", [(1.0, 1.0), (1.0, 1.0)], kl_coef=(0.1, 0.1))
    compute_advantages(eps, "rloo", gamma=0.0, kl_penalties=[[0.0, 0.0], [5.0, 5.0]])
    for t in (0, 1):
        assert _adv(eps, t) == pytest.approx([0.5, -0.5])


def test_compute_advantages_does_not_change_shaped_rewards():
    eps = _group("p", ROWS)
    before = copy.deepcopy([[t.shaped_reward for t in ep.turns] for ep in eps])
    compute_advantages(eps, "rloo", gamma=0.5, kl_penalties=[[1.0, 1.0]] * 4)
    assert [[t.shaped_reward for t in ep.turns] for ep in eps] == before


# --- conditional turn-2 groups (rollout.corrections_per_attempt) --------------------------------------------------
def _siblings(pid: str, attempts: Sequence[Tuple[float, Sequence[float]]]) -> List[Episode]:
    """Episodes of one problem: for each first attempt (r1, [r2 of each of its corrections]) one episode per
    correction, sharing the first attempt (trained in the first sibling only, as the rollout makes them)."""
    out = []
    for a, (r1, r2s) in enumerate(attempts):
        for j, r2 in enumerate(r2s):
            ep = _episode(pid, a * len(r2s) + j, (r1, r2))
            ep.first_attempt_id, ep.turns[0].trained = a, j == 0
            out.append(ep)
    return out


def _shape_stage2(episodes: Sequence[Episode], alpha: float = 10.0) -> None:
    for ep in episodes:
        r1, r2 = ep.turns[0].reward, ep.turns[1].reward
        ep.turns[0].shaped_reward, ep.turns[1].shaped_reward = r1, r2 + alpha * (r2 - r1)


def test_turn2_baselines_use_only_the_siblings_of_the_same_first_attempt():
    base = [(1.0, [1.0, 0.0]), (0.0, [1.0, 0.0]), (0.0, [0.0, 0.0])]
    episodes = _siblings("p", base)
    _shape_stage2(episodes)
    compute_advantages(episodes, "rloo", gamma=0.0)
    # RLOO among 2 siblings: ± the difference of their shaped turn-2 rewards, (1 + α)·(r2 − r2'); the −α·r1 part of
    # the bonus is shared by the siblings and cancels (an independent-episode baseline would mix attempts' r1)
    assert _adv(episodes, 1) == [pytest.approx(v) for v in (11.0, -11.0, 11.0, -11.0, 0.0, 0.0)]
    # changing the corrections of another first attempt leaves this attempt's turn-2 advantages alone
    other = _siblings("p", [(1.0, [1.0, 0.0]), (0.0, [0.0, 0.0]), (0.0, [1.0, 1.0])])
    _shape_stage2(other)
    compute_advantages(other, "rloo", gamma=0.0)
    assert _adv(other, 1)[:2] == _adv(episodes, 1)[:2]


def test_turn1_baseline_is_over_distinct_first_attempts():
    episodes = _siblings("p", [(1.0, [1.0, 0.0, 1.0]), (0.0, [1.0, 1.0, 1.0]), (0.0, [0.0, 0.0, 0.0])])
    _shape_stage2(episodes)
    compute_advantages(episodes, "rloo", gamma=0.0)
    # γ = 0: RLOO over the three first attempts' r1 = (1, 0, 0), whatever their corrections did
    expected = [1.0, -0.5, -0.5]
    assert _adv(episodes, 0) == [pytest.approx(e) for e in expected for _ in range(3)]
    flipped = _siblings("p", [(1.0, [0.0, 0.0, 0.0]), (0.0, [0.0, 1.0, 0.0]), (0.0, [1.0, 1.0, 1.0])])
    _shape_stage2(flipped)
    compute_advantages(flipped, "rloo", gamma=0.0)
    assert _adv(flipped, 0) == _adv(episodes, 0), "γ = 0: turn 1 never sees turn 2's reward"


def test_turn1_return_with_gamma_uses_the_siblings_mean_continuation():
    episodes = _siblings("p", [(1.0, [1.0, 0.0]), (0.0, [1.0, 1.0])])
    for ep in episodes:
        ep.turns[0].shaped_reward, ep.turns[1].shaped_reward = ep.turns[0].reward, ep.turns[1].reward
    compute_advantages(episodes, "none", gamma=0.5)
    # G1 = r1 + 0.5 * mean(G2 of the siblings): attempt 0 → 1 + 0.5 * 0.5, attempt 1 → 0 + 0.5 * 1
    assert _adv(episodes, 0) == [1.25, 1.25, 0.5, 0.5]
    assert _adv(episodes, 1) == [1.0, 0.0, 1.0, 1.0]
