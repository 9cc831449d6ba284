"""Untrained turns are context only (single-turn RL, STaR, Pair-SFT): no gradient, not in the denominator; and the
learner's loss with advantage 1 and no KL is exactly the supervised NLL (how the SFT baselines train)."""

from __future__ import annotations

import copy

import pytest
import torch

import _dp_updates as dp
from score_rl.learner.learner import Learner
from score_rl.learner.stats import loss_denominator


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_path):
    from score_rl.utils import load_tokenizer
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path_factory.mktemp("mask"), [f"model.path={tiny_model_path}", "learner.optimizer=sgd",
                                                         "learner.lr=1.0", "learner.grad_clip=0",
                                                         "algo.kl_estimator=k1"])
    episodes = dp.make_episodes(len(load_tokenizer(tiny_model_path)), 8, seed=3)
    return cfg, tiny_model_path, episodes


def _update(cfg, model_path, episodes):
    learner = Learner(cfg, model_path, 0, 1, len(episodes))
    learner.setup("127.0.0.1", dp_port())
    before = torch.cat([p.detach().flatten().clone() for p in learner.engine.module.parameters()])
    learner.train_step(episodes, loss_denominator(episodes, cfg.algo.loss_agg))
    after = torch.cat([p.detach().flatten() for p in learner.engine.module.parameters()])
    return after - before, learner


def dp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_turn2(episodes, trained: bool, advantage: float):
    out = copy.deepcopy(episodes)
    for ep in out:
        ep.turns[1].trained, ep.turns[1].advantage = trained, advantage
    return out


def test_an_untrained_turn_has_no_gradient_and_is_not_in_the_denominator(setup):
    cfg, path, episodes = setup
    a, _ = _update(cfg, path, _with_turn2(episodes, False, 5.0))
    b, _ = _update(cfg, path, _with_turn2(episodes, False, -7.0))
    assert torch.equal(a, b), "the advantage of an untrained turn must not matter"
    one_turn = copy.deepcopy(episodes)
    for ep in one_turn:
        ep.turns = ep.turns[:1]
    c, _ = _update(cfg, path, one_turn)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7, msg="untrained turn 2 == no turn 2 at all")
    d, _ = _update(cfg, path, _with_turn2(episodes, True, 5.0))
    assert (a - d).abs().max() > 1e-3, "a trained turn 2 changes the update"


def test_loss_weight_scales_a_turns_share_of_loss_and_denominator(setup):
    cfg, path, episodes = setup
    zero = _with_turn2(episodes, True, 5.0)
    for ep in zero:
        ep.turns[1].loss_weight = 0.0
    a, _ = _update(cfg, path, zero)
    b, _ = _update(cfg, path, _with_turn2(episodes, False, 5.0))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8, msg="weight 0 == untrained")
    # halving turn 2's weight == halving its advantage with the denominator counting its tokens half
    half = _with_turn2(episodes, True, 5.0)
    for ep in half:
        ep.turns[1].loss_weight = 0.5
    c, _ = _update(cfg, path, half)
    assert loss_denominator(half, "token-mean") == pytest.approx(
        sum(len(ep.turns[0].response_ids) + 0.5 * len(ep.turns[1].response_ids) for ep in half))
    d = _update(cfg, path, _with_turn2(episodes, True, 5.0))[0]
    assert (c - a).abs().max() > 1e-4 and (c - d).abs().max() > 1e-4


def test_advantage_one_without_kl_is_the_nll_of_the_trained_tokens(setup):
    cfg, path, episodes = setup
    sft = copy.deepcopy(episodes)
    for ep in sft:
        ep.turns[0].trained, ep.turns[0].advantage, ep.turns[0].kl_coef = False, 0.0, 0.0
        ep.turns[1].advantage, ep.turns[1].kl_coef = 1.0, 0.0
    update, learner = _update(cfg, path, sft)
    # the same NLL with Hugging Face's own loss (labels: attempt-2 tokens only, mean over them), plain autograd
    from score_rl.utils import load_model

    model = load_model(path, "float32")
    width = max(len(ep.full_ids()) for ep in sft)
    ids = torch.zeros((len(sft), width), dtype=torch.long)
    labels = torch.full((len(sft), width), -100)
    mask = torch.zeros((len(sft), width), dtype=torch.long)
    for i, ep in enumerate(sft):
        full = ep.full_ids()
        ids[i, :len(full)], mask[i, :len(full)] = torch.tensor(full), 1
        start, end = ep.response_spans()[1]
        labels[i, start:end] = torch.tensor(full[start:end])
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    expected = -torch.cat([p.grad.flatten() for p in model.parameters()])  # SGD, lr 1
    torch.testing.assert_close(update, expected, rtol=1e-4, atol=1e-6)
