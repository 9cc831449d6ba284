"""SCoRe reward shaping (score_rl/shaping.py): Stage I (Eq. 3) and Stage II (Eq. 4), per turn."""

from __future__ import annotations

import pytest

from score_rl.config import ShapingConfig
from score_rl.episode import Episode, Turn
from score_rl.shaping import STAGE_I, STAGE_II, shape_episodes, shaped_turn_rewards, shaping_bonus, stage_at

# distinct values so that a swapped beta1/beta2 or a missing alpha cannot pass by coincidence
CFG = ShapingConfig(alpha=10.0, beta1=0.01, beta2=0.25, gamma=0.0, stage1_steps=5)

# (r1, r2) -> expected Stage II turn rewards with alpha = 10, computed by hand
STAGE_II_TABLE_ALPHA10 = {
    (0.0, 0.0): [0.0, 0.0],  # wrong -> wrong: no bonus
    (0.0, 1.0): [0.0, 11.0],  # wrong -> right: 1 + 10 * (1 - 0)
    (1.0, 0.0): [1.0, -10.0],  # right -> wrong: 0 + 10 * (0 - 1)
    (1.0, 1.0): [1.0, 1.0],  # right -> right: no bonus
}
OUTCOMES = sorted(STAGE_II_TABLE_ALPHA10)


def _turn(reward: float, text: str = "x") -> Turn:
    return Turn(prompt_ids=[1], response_ids=[2], sampling_logprobs=[-0.1], response_text=text, reward=reward)


def _episode(*rewards: float, pid: str = "p0", idx: int = 0) -> Episode:
    return Episode(problem_id=pid, sample_index=idx, turns=[_turn(r) for r in rewards])


# --- Stage I ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("r1,r2", OUTCOMES)
def test_stage1_rewards_only_attempt2_whatever_attempt1_did(r1, r2):
    rewards, _ = shaped_turn_rewards(r1, r2, STAGE_I, CFG)
    assert rewards == [0.0, r2], f"Stage I turn rewards for (r1={r1}, r2={r2}) must be (0, r2), got {rewards}"


@pytest.mark.parametrize("r1,r2", OUTCOMES)
def test_stage1_pins_attempt1_with_beta2_and_attempt2_with_beta1(r1, r2):
    _, coefs = shaped_turn_rewards(r1, r2, STAGE_I, CFG)
    assert coefs == [CFG.beta2, CFG.beta1], f"Stage I KL coefs must be (beta2, beta1), got {coefs}"


def test_stage1_has_no_alpha_bonus():
    rewards, _ = shaped_turn_rewards(0.0, 1.0, STAGE_I, ShapingConfig(alpha=100.0))
    assert rewards == [0.0, 1.0], "Stage I must not add the Stage II correction bonus"


# --- Stage II --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("r1,r2", OUTCOMES)
def test_stage2_rewards_both_attempts_with_unclipped_alpha10_bonus(r1, r2):
    rewards, _ = shaped_turn_rewards(r1, r2, STAGE_II, CFG)
    assert rewards == pytest.approx(STAGE_II_TABLE_ALPHA10[(r1, r2)]), (
        f"Stage II turn rewards for (r1={r1}, r2={r2}) with alpha=10 must be "
        f"{STAGE_II_TABLE_ALPHA10[(r1, r2)]}, got {rewards}"
    )


@pytest.mark.parametrize("r1,r2", OUTCOMES)
def test_stage2_uses_beta1_on_both_turns(r1, r2):
    _, coefs = shaped_turn_rewards(r1, r2, STAGE_II, CFG)
    assert coefs == [CFG.beta1, CFG.beta1], f"Stage II KL coefs must be (beta1, beta1), got {coefs}"


@pytest.mark.parametrize("r1,r2", OUTCOMES)
@pytest.mark.parametrize("alpha", [0.0, 1.5, 3.0, 100.0])
def test_stage2_turn2_reward_is_r2_plus_alpha_times_progress(r1, r2, alpha):
    rewards, _ = shaped_turn_rewards(r1, r2, STAGE_II, ShapingConfig(alpha=alpha))
    assert rewards[0] == pytest.approx(r1), "Stage II turn 1 must be credited with its own reward r1"
    assert rewards[1] == pytest.approx(r2 + alpha * (r2 - r1)), "Stage II turn 2 must be r2 + alpha*(r2 - r1)"


def test_alpha_bonus_is_not_clipped():
    assert shaping_bonus(0.0, 1.0, 10.0) == pytest.approx(10.0), "wrong->right bonus must be alpha, not clipped"
    assert shaping_bonus(1.0, 0.0, 10.0) == pytest.approx(-10.0), "right->wrong penalty must be -alpha, not clipped"
    assert shaping_bonus(1.0, 1.0, 10.0) == 0.0 and shaping_bonus(0.0, 0.0, 10.0) == 0.0, "unchanged: no bonus"
    big, _ = shaped_turn_rewards(0.0, 1.0, STAGE_II, ShapingConfig(alpha=1000.0))
    assert big[1] == pytest.approx(1001.0), "a large alpha must reach the turn-2 reward unclipped"


def test_unknown_stage_is_an_error():
    with pytest.raises(ValueError, match="stage"):
        shaped_turn_rewards(0.0, 1.0, 3, CFG)


# --- stage schedule --------------------------------------------------------------------------------------------
def test_stage_schedule_runs_stage1_for_stage1_steps_then_stage2():
    cfg = ShapingConfig(stage1_steps=5)
    assert [stage_at(s, cfg) for s in range(5)] == [STAGE_I] * 5, "steps 0..stage1_steps-1 must be Stage I"
    assert [stage_at(s, cfg) for s in (5, 6, 100)] == [STAGE_II] * 3, "step >= stage1_steps must be Stage II"


def test_stage1_steps_zero_means_stage2_from_step_zero():
    cfg = ShapingConfig(stage1_steps=0)
    assert stage_at(0, cfg) == STAGE_II, "stage1_steps=0 must skip Stage I entirely"
    assert stage_at(1, cfg) == STAGE_II


# --- shape_episodes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", [STAGE_I, STAGE_II])
def test_shape_episodes_fills_every_turn_in_place(stage):
    episodes = [_episode(r1, r2, idx=i) for i, (r1, r2) in enumerate(OUTCOMES)]
    shape_episodes(episodes, stage, CFG)
    for ep, (r1, r2) in zip(episodes, OUTCOMES):
        rewards, coefs = shaped_turn_rewards(r1, r2, stage, CFG)
        assert [t.shaped_reward for t in ep.turns] == pytest.approx(rewards), f"shaped_reward of ({r1},{r2})"
        assert [t.kl_coef for t in ep.turns] == pytest.approx(coefs), f"kl_coef of ({r1},{r2})"
        assert [t.reward for t in ep.turns] == [r1, r2], "shaping must not overwrite the raw verifier reward"


def test_shape_episodes_stage2_hand_values():
    ep = _episode(0.0, 1.0)
    shape_episodes([ep], STAGE_II, CFG)
    assert (ep.turns[0].shaped_reward, ep.turns[1].shaped_reward) == pytest.approx((0.0, 11.0))
    assert (ep.turns[0].kl_coef, ep.turns[1].kl_coef) == pytest.approx((0.01, 0.01))
    ep = _episode(1.0, 0.0)
    shape_episodes([ep], STAGE_I, CFG)
    assert (ep.turns[0].shaped_reward, ep.turns[1].shaped_reward) == pytest.approx((0.0, 0.0))
    assert (ep.turns[0].kl_coef, ep.turns[1].kl_coef) == pytest.approx((0.25, 0.01))


@pytest.mark.parametrize("rewards", [(1.0,), (0.0, 1.0, 1.0)])
@pytest.mark.parametrize("stage", [STAGE_I, STAGE_II])
def test_shape_episodes_rejects_non_two_turn_episodes(rewards, stage):
    with pytest.raises(ValueError, match="two-turn"):
        shape_episodes([_episode(0.0, 1.0), _episode(*rewards, idx=1)], stage, CFG)
