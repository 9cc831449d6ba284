"""PPO at the learner: the pre-update pass gives log π_old such that the first update's ratio is exactly 1; with one
epoch, one minibatch and λ = 1 the PPO update is the REINFORCE update with the critic as a per-token baseline; the
critic moves its values towards the returns; the critic checkpoint round-trips."""

from __future__ import annotations

import copy

import pytest
import torch

import _dp_updates as dp
from score_rl.algos.advantages import turn_returns
from score_rl.launch.distributed import ActorGroup
from score_rl.learner.critic import load_critic
from score_rl.learner.learner import Learner
from score_rl.learner.stats import loss_denominator
from score_rl.train.algorithms import PPO
from test_loss_mask import dp_port

N = 8


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model_path):
    from score_rl.utils import load_tokenizer
    from tests.conftest import tiny_config

    critic = dp.save_critic_with_a_head(tiny_model_path, str(tmp_path_factory.mktemp("critic")))
    cfg = tiny_config(tmp_path_factory.mktemp("ppo"), [f"algo.critic.path={critic}",
        f"model.path={tiny_model_path}", "ray.enabled=false", "learner.optimizer=sgd", "learner.lr=1.0",
        "learner.grad_clip=0", "algo.kl_estimator=k2", "algo.name=ppo", "algo.ppo.lam=1.0", "shaping.gamma=0.5",
        "algo.critic.lr=0.1", "learner.micro_batch_size=4", "algo.ppo.minibatches=1"])
    episodes = dp.make_episodes(len(load_tokenizer(tiny_model_path)), N, seed=5)
    for i, ep in enumerate(episodes):
        ep.turns[0].shaped_reward, ep.turns[1].shaped_reward = float(i % 2), 2.0 * ((i // 2) % 2) - 0.5
    return cfg, tiny_model_path, episodes


def _group(cfg, model_path, per_update=N):
    group = ActorGroup(Learner, [(cfg, model_path, 0, 1, per_update)], use_ray=False)
    group.call("setup", None, "127.0.0.1", dp_port())
    learner = group.members[0]
    dp.perturb(learner.reference)
    return group, learner


def test_one_epoch_unclipped_ppo_is_reinforce_with_the_critic_as_baseline(base):
    cfg, model_path, episodes = base
    group, learner = _group(cfg, model_path)
    before = dp._flat(learner.engine.module)
    ppo_episodes = copy.deepcopy(episodes)
    stats = PPO(cfg).update(group, ppo_episodes, step=0)
    ppo_update = dp._flat(learner.engine.module) - before
    assert stats["updates"] == 1 and stats["ratio_dev_first_update"] == 0.0 and stats["clip_frac"] == 0.0

    # REINFORCE on the same episodes, advantage of every token = G_t − V(s_token), G_t REINFORCE's per-turn return
    rf_cfg = copy.deepcopy(cfg)
    rf_cfg.algo.name = "reinforce"
    rf_group, rf_learner = _group(rf_cfg, model_path)
    rf_episodes = copy.deepcopy(episodes)
    for ep, ppo_ep in zip(rf_episodes, ppo_episodes):
        returns = turn_returns([t.shaped_reward for t in ep.turns], cfg.shaping.gamma)
        for turn, ppo_turn, g in zip(ep.turns, ppo_ep.turns, returns):
            turn.token_advantages = [g - v for v in ppo_turn.values]
            assert ppo_turn.token_advantages == pytest.approx(turn.token_advantages, abs=1e-6)
    rf_before = dp._flat(rf_learner.engine.module)
    rf_learner.train_step(rf_episodes, loss_denominator(rf_episodes, cfg.algo.loss_agg))
    rf_update = dp._flat(rf_learner.engine.module) - rf_before
    assert float(ppo_update.norm()) > 0
    assert float((ppo_update - rf_update).norm() / rf_update.norm()) < 1e-5


def test_the_ratio_is_exactly_one_on_the_first_minibatch_only(base):
    cfg = copy.deepcopy(base[0])
    cfg.algo.ppo.epochs, cfg.algo.ppo.minibatches, cfg.algo.ppo.clip_eps = 2, 2, 0.2
    cfg.learner.lr, cfg.learner.micro_batch_size = 0.05, 2  # 2 micro-batches per minibatch on this rank
    group, learner = _group(cfg, base[1], per_update=N // 2)
    updates = []
    call = group.call
    group.call = lambda method, *a: (updates.append(r := call(method, *a)) if method == "ppo_update" else None) \
        or (r if method == "ppo_update" else call(method, *a))
    stats = PPO(cfg).update(group, copy.deepcopy(base[2]), step=0)
    assert stats["updates"] == 4 == len(updates)
    devs = [u[0]["ratio_dev_sum"] for u in updates]
    assert devs[0] == 0.0 and updates[0][0]["approx_kl_sum"] == 0.0, "π_old is exactly the first update's policy"
    assert all(d > 0 for d in devs[1:]), "later minibatches see the policy the earlier ones moved"


def test_the_critic_moves_towards_the_returns(base):
    cfg, model_path, episodes = copy.deepcopy(base)
    cfg.algo.critic.lr, cfg.algo.ppo.value_clip, cfg.algo.ppo.epochs = 0.002, 0.0, 3
    group, learner = _group(cfg, model_path)
    algo = PPO(cfg)
    eps = copy.deepcopy(episodes)
    assert algo.update(group, eps, step=0)["updates"] == 3

    def error(batch):
        fresh = learner.ppo_forward([batch])["rows"][0]
        return sum((v - r) ** 2 for ep, row in zip(batch, fresh) for turn, (_, values, _) in zip(ep.turns, row)
                   for v, r in zip(values, turn.returns))

    before = sum((v - r) ** 2 for ep in eps for t in ep.turns for v, r in zip(t.values, t.returns))
    assert error(eps) < 0.8 * before


def test_the_critic_is_checkpointed_and_saved_beside_the_policy(base, tmp_path):
    cfg, model_path, episodes = base
    group, learner = _group(cfg, model_path)
    PPO(cfg).update(group, copy.deepcopy(episodes), step=0)
    learner.save_checkpoint(str(tmp_path / "ckpt"), "learner")
    learner.save_pretrained(str(tmp_path / "final"), str(tmp_path / "final_critic"))
    trained = dp._flat(learner.critic.module)
    _, fresh = _group(cfg, model_path)
    assert not torch.equal(dp._flat(fresh.critic.module), trained)
    fresh.load_checkpoint(str(tmp_path / "ckpt"), "learner")
    assert torch.equal(dp._flat(fresh.critic.module), trained)
    assert torch.equal(dp._flat(load_critic(str(tmp_path / "final_critic"))), trained), "algo.critic.path loads it"


def test_a_critic_from_a_causal_lm_starts_at_zero(tiny_model_path):
    critic = load_critic(tiny_model_path)
    assert critic.score.weight.abs().sum() == 0 and critic.dropout.p == 0.0
    out = critic(input_ids=torch.tensor([[3, 4, 5]])).logits
    assert out.shape == (1, 3, 1) and out.abs().sum() == 0


def test_each_value_is_that_of_the_state_before_its_token(base):
    """V at a response token's target position is the critic's output on the prefix *before* that token (a baseline
    must not see the action it judges): the critic run on input_ids[:p] gives, at its last position, the value of the
    state in which token p was sampled."""
    from score_rl.learner.batch import collate

    cfg, model_path, episodes = base
    _, learner = _group(cfg, model_path)
    ep = episodes[0]
    b = collate([ep], learner.tokenizer.pad_token_id)
    with torch.no_grad():
        values = learner._values(b)[0]
    ids = b["input_ids"]
    critic = learner.critic.module
    with torch.no_grad():
        for p in range(1, ids.shape[1]):
            prefix_value = critic(input_ids=ids[:, :p]).logits[0, -1, 0]
            assert float(prefix_value) == pytest.approx(float(values[p - 1]), abs=1e-5), p
    row = learner.ppo_forward([[ep]])["rows"][0][0]
    for (start, end), (_, turn_values, _) in zip(ep.response_spans(), row):
        assert turn_values == pytest.approx(values[start - 1:end - 1].tolist(), abs=1e-6)
    assert float(values.std()) > 0, "a nonzero head: the check can tell positions apart"


@pytest.mark.parametrize("estimator", ["k2", "full"])
def test_the_first_ratio_is_exactly_one_with_shared_prompts(tmp_path, deeper_model_path, estimator):
    """π_old (the pre-update pass) and π (the update) must come from the same computation, prompts shared or not
    (the full-KL estimator shares none in any pass): on a 3-layer model, where a shared prompt and a whole row differ
    in the last bits, the first update's ratio is still exactly 1."""
    from score_rl.utils import load_tokenizer
    from tests.conftest import tiny_config

    critic = dp.save_critic_with_a_head(deeper_model_path, str(tmp_path / "critic"))
    cfg = tiny_config(tmp_path, [f"algo.critic.path={critic}", f"model.path={deeper_model_path}", "ray.enabled=false",
                                 "learner.optimizer=sgd", "learner.lr=0.1", "learner.grad_clip=0",
                                 f"algo.kl_estimator={estimator}", "algo.name=ppo", "learner.micro_batch_size=4",
                                 "algo.ppo.minibatches=1"])
    episodes = dp.make_episodes(len(load_tokenizer(deeper_model_path)), N, seed=6, shared_prompts=True)
    for i, ep in enumerate(episodes):
        ep.turns[0].shaped_reward, ep.turns[1].shaped_reward = float(i % 2), 1.0
    group, _ = _group(cfg, deeper_model_path)
    stats = PPO(cfg).update(group, episodes, step=0)
    assert stats["updates"] == 1 and stats["ratio_dev_first_update"] == 0.0
