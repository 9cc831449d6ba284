"""Per-turn GAE in the learner's padded layout: a hand computation, γ between turns, λ = 1 is REINFORCE's return
minus the critic's value, and nothing leaks in from the prompt, the correction instruction or the padding."""

from __future__ import annotations

import copy

import pytest
import torch

from score_rl.algos.advantages import turn_returns
from score_rl.algos.gae import explained_variance, gae, token_rewards, whiten
from score_rl.episode import Episode, Turn
from score_rl.learner.batch import collate


def _turn(prompt, response, reward, coef, sampling, ref, values):
    t = Turn(prompt_ids=prompt, response_ids=response, sampling_logprobs=sampling, response_text="", reward=reward)
    t.shaped_reward, t.kl_coef, t.ref_logprobs, t.values = reward, coef, ref, values
    return t


def _episodes():
    """A: prompt 3, attempt 1 of 3 tokens, instruction 2, attempt 2 of 2 tokens; B: 2 / 1 / 1 / 1 (right-padded)."""
    a1 = _turn([5, 6, 7], [10, 11, 12], 1.0, 0.1, [-1.0, -1.0, -1.0], [-1.5, -1.0, -0.5], [0.5, 0.2, -0.1])
    a2 = _turn([5, 6, 7, 10, 11, 12, 8, 9], [13, 14], 2.0, 0.2, [-2.0, -2.0], [-2.0, -3.0], [0.3, 0.7])
    b1 = _turn([5, 6], [10], 0.0, 0.0, [-1.0], [-1.0], [0.4])
    b2 = _turn([5, 6, 10, 8], [13], 1.0, 0.0, [-1.0], [-1.0], [0.9])
    return [Episode("a", 0, [a1, a2]), Episode("a", 1, [b1, b2])]


def _run(episodes, gamma, lam, kl_in_reward=True):
    b = collate(episodes, 0)
    rewards = token_rewards(b, episodes, kl_in_reward)
    adv, ret = gae(rewards, b["values"], b["turn"], gamma, lam)
    return b, rewards, adv, ret


def test_gae_matches_a_hand_computation_with_padding_and_the_instruction_between_turns():
    gamma, lam = 0.5, 0.9
    b, rewards, adv, ret = _run(_episodes(), gamma, lam)
    # episode A: token rewards = −β (log π_old − log π_ref), plus R_t on the turn's last token
    r1 = [-0.1 * 0.5, -0.1 * 0.0, -0.1 * -0.5 + 1.0]
    r2 = [-0.2 * 0.0, -0.2 * 1.0 + 2.0]
    v1, v2 = [0.5, 0.2, -0.1], [0.3, 0.7]
    a2_1 = r2[1] + 0.0 - v2[1]                                  # the episode's last token: nothing after it
    a2_0 = (r2[0] + v2[1] - v2[0]) + lam * a2_1                 # inside turn 2: undiscounted
    a1_2 = (r1[2] + gamma * v2[0] - v1[2]) + gamma * lam * a2_0  # turn 1's last token → turn 2's first: γ
    a1_1 = (r1[1] + v1[2] - v1[1]) + lam * a1_2
    a1_0 = (r1[0] + v1[1] - v1[0]) + lam * a1_1
    # episode B (no KL): one token per turn, and right padding after it
    b2_0 = 1.0 - 0.9
    b1_0 = (0.0 + gamma * 0.9 - 0.4) + gamma * lam * b2_0
    want = torch.zeros_like(adv)
    want[0, 2:5] = torch.tensor([a1_0, a1_1, a1_2], dtype=torch.float64)  # targets of tokens 3..5 (collate: p → p−1)
    want[0, 7:9] = torch.tensor([a2_0, a2_1], dtype=torch.float64)
    want[1, 1], want[1, 3] = b1_0, b2_0
    assert torch.allclose(adv, want, atol=1e-6)
    assert torch.allclose(ret, torch.where(b["turn"] > 0, want + b["values"].double(), 0.0), atol=1e-6)
    assert adv[1, 4:].abs().sum() == 0 and ret[1, 4:].abs().sum() == 0, "padding stays zero"
    assert b["turn"][0, 5:7].tolist() == [0, 0], "the instruction between the turns is not an action"


def test_positions_that_are_not_actions_do_not_matter():
    b, rewards, adv, ret = _run(_episodes(), 0.5, 0.9)
    junk_values = torch.where(b["turn"] > 0, b["values"], torch.full_like(b["values"], 99.0))
    junk_rewards = torch.where(b["turn"] > 0, rewards, torch.full_like(rewards, -7.0))
    adv2, ret2 = gae(junk_rewards, junk_values, b["turn"], 0.5, 0.9)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)


def test_lambda_one_is_the_turn_return_minus_the_value_of_each_token():
    """REINFORCE's per-turn return G_t (with the same per-turn KL penalty) minus V: the critic as a baseline."""
    episodes = _episodes()
    gamma = 0.5
    b, _, adv, _ = _run(episodes, gamma, 1.0)
    for i, ep in enumerate(episodes):
        penalised = [t.shaped_reward - t.kl_coef * (sum(t.sampling_logprobs) - sum(t.ref_logprobs)) for t in ep.turns]
        returns = turn_returns(penalised, gamma)
        for t, turn in enumerate(ep.turns):
            got = adv[i][b["turn"][i] == t + 1]
            want = torch.tensor([returns[t] - v for v in turn.values], dtype=torch.float64)
            # within a turn the KL rewards of the tokens before this one are not in its return (causality):
            before = torch.tensor([-turn.kl_coef * (s - r) for s, r in zip(turn.sampling_logprobs, turn.ref_logprobs)],
                                  dtype=torch.float64).cumsum(0) - torch.tensor(
                [-turn.kl_coef * (s - r) for s, r in zip(turn.sampling_logprobs, turn.ref_logprobs)],
                dtype=torch.float64)
            assert torch.allclose(got, want - before, atol=1e-9)
            assert float(got[0]) == pytest.approx(returns[t] - turn.values[0])  # the first token: exactly G_t − V


@pytest.mark.parametrize("lam", [0.0, 0.9, 1.0])
def test_gamma_zero_turn_one_ignores_turn_two(lam):
    episodes = _episodes()
    flipped = copy.deepcopy(episodes)
    for ep in flipped:
        ep.turns[1].shaped_reward = 1.0 - ep.turns[1].shaped_reward * 3  # every r2 changes
    b, _, adv, _ = _run(episodes, 0.0, lam)
    _, _, adv_flipped, _ = _run(flipped, 0.0, lam)
    turn1, turn2 = b["turn"] == 1, b["turn"] == 2
    assert torch.equal(adv[turn1], adv_flipped[turn1])
    assert not torch.equal(adv[turn2], adv_flipped[turn2])
    if lam > 0:  # ... and the test can fail: with γ > 0 turn 1 does see turn 2's rewards (λ = 0: only its value)
        _, _, adv_g, _ = _run(episodes, 0.5, lam)
        _, _, adv_g_flipped, _ = _run(flipped, 0.5, lam)
        assert not torch.equal(adv_g[turn1], adv_g_flipped[turn1])


def test_token_rewards_sum_to_reinforce_per_turn_rewards():
    episodes = _episodes()
    b = collate(episodes, 0)
    rewards = token_rewards(b, episodes, kl_in_reward=True)
    for i, ep in enumerate(episodes):
        for t, turn in enumerate(ep.turns, start=1):
            k1 = sum(turn.sampling_logprobs) - sum(turn.ref_logprobs)
            assert float(rewards[i][b["turn"][i] == t].sum()) == pytest.approx(turn.shaped_reward - turn.kl_coef * k1)
    no_kl = token_rewards(b, episodes, kl_in_reward=False)
    assert float(no_kl.sum()) == pytest.approx(sum(t.shaped_reward for ep in episodes for t in ep.turns))


def test_a_turn_without_tokens_is_an_error():
    episodes = _episodes()
    episodes[1].turns[1].response_ids, episodes[1].turns[1].sampling_logprobs = [], []
    episodes[1].turns[1].ref_logprobs, episodes[1].turns[1].values = [], []
    with pytest.raises(ValueError, match="no response token"):
        token_rewards(collate(episodes, 0), episodes, True)


def test_explained_variance_and_whitening():
    returns = torch.tensor([[1.0, 2.0, 3.0, 5.0]])
    values = torch.tensor([[1.5, 2.0, 2.0, 4.0]])
    mask = torch.tensor([[True, True, True, False]])
    r, v = returns[mask].double(), values[mask].double()
    assert explained_variance(returns, values, mask) == pytest.approx(float(1 - (r - v).var() / r.var()))
    assert explained_variance(returns, returns, mask) == 1.0
    assert explained_variance(torch.ones(1, 4), values, mask) != explained_variance(torch.ones(1, 4), values, mask)
    w = whiten(returns, mask)
    assert float(w[mask].mean()) == pytest.approx(0.0, abs=1e-7) and float(w[mask].std()) == pytest.approx(1.0)
    assert float(w[0, 3]) == 0.0
