"""The per-algorithm objectives of a micro-batch (selected by algorithm name) and the per-rank statistics: each
objective gives the loss formula of score_rl/algos/losses.py, and the ranks' sums reduce to the same metrics whether
the driver reduces a whole update (reduce_rank_stats) or the policy before the step (policy_metrics)."""

from __future__ import annotations

import pytest
import torch

from score_rl.algos.losses import ppo_kl_loss, reinforce_kl_loss, value_loss
from score_rl.learner.objectives import PPO, OffPolicyReinforce, Passes, Reinforce, make_objective
from score_rl.learner.stats import POLICY_STATS, policy_metrics, reduce_rank_stats, sum_rank_stats
from tests.conftest import tiny_config


@pytest.fixture
def cfg(tmp_path):
    return tiny_config(tmp_path, ["algo.kl_estimator=k2", "algo.ppo.clip_eps=0.2", "algo.ppo.value_clip=0.5"])


def _passes(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shape = (2, 5)
    b = {"advantage": torch.randn(shape, generator=gen), "kl_coef": torch.full(shape, 0.1),
         "sampling_logprobs": -torch.rand(shape, generator=gen), "old_logprobs": -torch.rand(shape, generator=gen),
         "values": torch.randn(shape, generator=gen), "returns": torch.randn(shape, generator=gen)}
    mask = (torch.rand(shape, generator=gen) > 0.3).float()
    logp = (-torch.rand(shape, generator=gen)).requires_grad_()
    return Passes(b, logp, -torch.rand(shape, generator=gen), mask, denominator=3.0)


def test_the_registry_picks_the_objective_by_algorithm_name(cfg):
    assert type(make_objective("reinforce", cfg)) is Reinforce
    assert type(make_objective("ppo", cfg)) is PPO
    cfg.trainer.off_policy_steps = 1
    assert type(make_objective("reinforce", cfg)) is OffPolicyReinforce
    assert type(make_objective("ppo", cfg)) is PPO, "PPO's own ratio is its importance weight"


def test_each_objective_is_its_loss_formula(cfg):
    p = _passes()
    algo = cfg.algo
    kl = dict(kl_estimator=algo.kl_estimator, kl_in_loss=not algo.uses_reward_kl(), loss_agg=algo.loss_agg,
              denominator=p.denominator, logits=None, ref_logits=None)
    b = p.b
    [got], _ = Reinforce(cfg).losses(p, None)
    want, _ = reinforce_kl_loss(p.logp, p.ref_logp, b["advantage"], b["kl_coef"], p.mask, **kl)
    assert torch.equal(got, want)
    [got], parts = OffPolicyReinforce(cfg).losses(p, None)
    want, _ = reinforce_kl_loss(p.logp, p.ref_logp, b["advantage"], b["kl_coef"], p.mask, **kl,
                                sampling_logp=b["sampling_logprobs"], is_clip=algo.is_clip)
    assert torch.equal(got, want) and {"is_weight", "is_clipped"} <= set(parts)
    values = torch.randn(2, 5)
    (got, got_v), parts = PPO(cfg).losses(p, lambda batch: values)
    want, _ = ppo_kl_loss(p.logp, b["old_logprobs"], p.ref_logp, b["advantage"], b["kl_coef"], p.mask,
                          algo.ppo.clip_eps, **kl)
    want_v, _ = value_loss(values, b["values"], b["returns"], p.mask, algo.ppo.value_clip, algo.loss_agg,
                           p.denominator)
    assert torch.equal(got, want) and torch.equal(got_v, want_v)
    assert {"pg", "value_loss", "clipped", "approx_kl", "ratio_dev"} <= set(parts)


def test_an_objectives_parts_are_summed_into_its_statistics(cfg):
    objective = make_objective("ppo", cfg)
    stats = objective.new_stats()
    assert list(stats) == ["loss", "pg_loss_sum", *POLICY_STATS, "value_loss_sum", "clipped_sum", "approx_kl_sum",
                           "ratio_dev_sum"]
    _, parts = objective.losses(_passes(), lambda batch: torch.zeros(2, 5))
    for _ in range(2):
        objective.add_parts(stats, parts)
    assert stats["pg_loss_sum"] == pytest.approx(2 * float(parts["pg"]))
    assert stats["clipped_sum"] == pytest.approx(2 * float(parts["clipped"]))


def _rank(seed: int):
    gen = torch.Generator().manual_seed(seed)
    stats = {key: float(torch.rand((), generator=gen)) * 10 for key in ("loss", "pg_loss_sum", *POLICY_STATS)}
    return {**stats, "grad_norm": 1.5}


def test_rank_statistics_reduce_to_token_weighted_metrics():
    per_rank = [_rank(0), _rank(1)]
    total = sum_rank_stats(per_rank)
    out = reduce_rank_stats(per_rank, denominator=4.0)
    assert list(out) == ["loss", "pg_loss", "logprob_mismatch", "entropy_proxy", "grad_norm", "tokens",
                         "shared_prompt_rows", "kl_turn1", "kl_turn2"]
    assert out["pg_loss"] == total["pg_loss_sum"] / 4.0
    assert out["logprob_mismatch"] == total["logprob_mismatch_sum"] / total["tokens"]
    assert out["kl_turn2"] == total["kl_turn2_sum"] / total["tokens_turn2"]
    assert {k: out[k] for k in policy_metrics(total)} == policy_metrics(total)


def test_the_learners_historical_names_stay_importable():
    from score_rl.learner import learner

    for name in ("Learner", "check_lora_targets", "loss_denominator", "reduce_rank_stats", "load_critic",
                 "free_port", "node_address", "merged_model", "with_lora", "AdapterDisabled"):
        assert hasattr(learner, name), name
