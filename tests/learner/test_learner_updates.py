"""One training step = exactly one optimizer update, with the same gradient for any micro-batch size, rank count
and ZeRO stage; the loss is normalised over the whole step (all ranks); the logged grad_norm is the pre-clip norm
of the applied gradient.

Plain SGD (update = −lr · gradient) makes the weight change of a step the gradient DeepSpeed applied. The reference is
one rank, ZeRO 0, no accumulation; every other layout must apply the same update on every step (float tolerance).
Episodes have uneven lengths, so the two ranks hold different token counts.
"""

from __future__ import annotations

import multiprocessing as mp
import socket

import pytest
import torch

import _dp_updates as dp

N_EPISODES = 16  # per step; 8 per rank on 2 ranks
ACCUMULATION = (1, 2, 8)
ZERO_STAGES = (0, 1, 2)
LOSS_AGGS = ("token-mean", "seq-mean-token-sum")
KL_LOSS_ESTIMATORS = ("k2", "k3", "full")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _combos(world: int):
    per_rank = N_EPISODES // world
    combos = [{"zero_stage": z, "micro_batch_size": per_rank // k, "loss_agg": agg, "k": k}
              for agg in LOSS_AGGS for z in ZERO_STAGES for k in ACCUMULATION]
    # clipping: the update is clipped, the logged norm is not
    combos += [{"zero_stage": z, "micro_batch_size": per_rank // 2, "grad_clip": 1e-3, "k": 2} for z in (0, 2)]
    # the default KL placement (k1 in the reward) too: no KL term in the loss
    combos += [{"zero_stage": z, "micro_batch_size": per_rank // 2, "kl_estimator": "k1", "k": 2} for z in (0, 2)]
    # ... with the reference log-probs computed once, before the step (as the trainer does): the same update
    combos += [{"zero_stage": 0, "micro_batch_size": per_rank // 2, "kl_estimator": "k1", "k": 2, "cache_ref": True}]
    # uneven per-turn loss weights (Turn.loss_weight): weighted sums and denominators add up across ranks too
    combos += [{"zero_stage": z, "micro_batch_size": per_rank // 2, "k": 2, "weighted": True} for z in (0, 2)]
    # the KL loss terms alone (advantages 0; the reference is perturbed, so they have a gradient from step 1)
    combos += [{"zero_stage": z, "micro_batch_size": per_rank // 8, "kl_estimator": est, "k": 8, "kl_only": True}
               for est in KL_LOSS_ESTIMATORS for z in (0, 2)]
    # PPO: the policy and the critic beside it (its own engine on the same ranks, ZeRO stage and micro-batches)
    combos += [{"zero_stage": z, "micro_batch_size": per_rank // k, "kl_estimator": "k1", "k": k, "ppo": True}
               for z in ZERO_STAGES for k in (1, 2)]
    combos += [{"zero_stage": 2, "micro_batch_size": per_rank // 2, "k": 2, "ppo": True}]  # + the k2 loss term
    # every row run whole (no shared prompt): the same update as running each problem's prompt once
    combos += [{"zero_stage": z, "micro_batch_size": per_rank // 2, "k": 2, "share_prompt_prefix": False}
               for z in (0, 3)]
    combos += [{"zero_stage": 0, "micro_batch_size": per_rank // 2, "kl_estimator": "k1", "k": 2, "ppo": True,
                "share_prompt_prefix": False}]
    # ZeRO 3: parameters, the reference and the critic sharded over the ranks
    combos += [{"zero_stage": 3, "micro_batch_size": per_rank // k, "k": k} for k in (1, 2)]
    combos += [{"zero_stage": 3, "micro_batch_size": per_rank // 8, "kl_estimator": "k3", "k": 8, "kl_only": True},
               {"zero_stage": 3, "micro_batch_size": per_rank // 2, "kl_estimator": "k1", "k": 2, "cache_ref": True},
               {"zero_stage": 3, "micro_batch_size": per_rank // 2, "kl_estimator": "k1", "k": 2, "ppo": True}]
    return combos


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, tiny_model_path):
    from tests.conftest import tiny_config

    critic = dp.save_critic_with_a_head(tiny_model_path, str(tmp_path_factory.mktemp("critic")))
    return tiny_config(tmp_path_factory.mktemp("updates"), [f"model.path={tiny_model_path}",
                                                             f"algo.critic.path={critic}"])


@pytest.fixture(scope="module")
def steps(cfg, tiny_model_path):
    from score_rl.utils import load_tokenizer

    vocab = len(load_tokenizer(tiny_model_path))
    # 3 steps: in step 2 a problem's samples share their prompt, which the learner runs once per micro-batch
    # (learner.share_prompt_prefix); in step 3 only the first half does, so on 2 ranks one rank has repeated prompts
    # and the other none: the ranks must still run the same passes (under ZeRO 2 / 3 a rank that shared alone
    # applied a wrong update, silently). Any micro-batching must apply the same update.
    half = N_EPISODES // 2
    mixed = dp.make_episodes(vocab, half, 3, shared_prompts=True) + dp.make_episodes(vocab, half, 4)
    for i, ep in enumerate(mixed):
        ep.problem_id = f"m{i if i >= half else i // 2}"
    return [dp.make_episodes(vocab, N_EPISODES, 1), dp.make_episodes(vocab, N_EPISODES, 2, shared_prompts=True), mixed]


@pytest.fixture(scope="module")
def ranks_started(cfg, tiny_model_path, steps):
    """The two spawned ranks of two_ranks, started before one_rank's work: each runs one torch thread (as one_rank
    does in this process), so they import and run on the cores one_rank leaves idle. two_ranks collects them."""
    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), _port()
    procs = [ctx.Process(target=dp.spawned, args=(queue, cfg, tiny_model_path, r, 2, port, _combos(2), steps))
             for r in range(2)]
    for p in procs:
        p.start()
    yield queue, procs
    for p in procs:  # two_ranks joined them; if it never ran (a -k selection), they are not left behind
        if p.is_alive():
            p.kill()
            p.join()


@pytest.fixture(scope="module")
def one_rank(cfg, tiny_model_path, steps, ranks_started):
    reference = [{"zero_stage": 0, "micro_batch_size": N_EPISODES, "loss_agg": agg, "k": 1, "reference": True}
                 for agg in LOSS_AGGS]
    reference += [{"zero_stage": 0, "micro_batch_size": N_EPISODES, "kl_estimator": "k1", "k": 1, "reference": True}]
    reference += [{"zero_stage": 0, "micro_batch_size": N_EPISODES, "grad_clip": 1e-3, "k": 1, "reference": True}]
    reference += [{"zero_stage": 0, "micro_batch_size": N_EPISODES, "k": 1, "weighted": True, "reference": True}]
    reference += [{"zero_stage": 0, "micro_batch_size": N_EPISODES, "kl_estimator": est, "k": 1, "kl_only": True,
                   "reference": True} for est in KL_LOSS_ESTIMATORS]
    reference += [{"zero_stage": 0, "micro_batch_size": N_EPISODES, "kl_estimator": est, "k": 1, "ppo": True,
                   "reference": True} for est in ("k1", "k2")]
    return dp.run(cfg, tiny_model_path, 0, 1, _port(), reference + _combos(1), steps)


@pytest.fixture(scope="module")
def two_ranks(ranks_started):
    queue, procs = ranks_started
    results = dict(queue.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for rank, res in results.items():
        assert not isinstance(res, str), f"rank {rank} failed:\n{res}"
    # every rank holds the same full weights after each step (ZeRO 0-2)
    for a, b in zip(results[0], results[1]):
        assert torch.allclose(torch.tensor(a["updates"]), torch.tensor(b["updates"]), atol=1e-7), a["combo"]
        assert torch.allclose(torch.tensor(a["critic_updates"]), torch.tensor(b["critic_updates"]), atol=1e-7)
    return results[0]


def _kind(combo):
    return (combo.get("loss_agg", "token-mean"), combo.get("kl_estimator", "k2"), combo.get("grad_clip", 0.0),
            bool(combo.get("kl_only")), bool(combo.get("weighted")), bool(combo.get("ppo")))


def _reference(one_rank, combo):
    return next(r for r in one_rank if r["combo"].get("reference") and _kind(r["combo"]) == _kind(combo))


def _check(result, reference):
    combo = result["combo"]
    for step, (upd, ref_upd) in enumerate(zip(result["updates"], reference["updates"])):
        upd, ref_upd = torch.tensor(upd, dtype=torch.float64), torch.tensor(ref_upd, dtype=torch.float64)
        assert float(upd.norm()) > 0, f"{combo}: no update at step {step}"
        err = float((upd - ref_upd).norm() / ref_upd.norm())
        assert err < 1e-4, f"{combo}: update differs from the one-rank, no-accumulation update by {err:.3g} " \
                           f"at step {step}"
        assert result["grad_norms"][step] == pytest.approx(reference["grad_norms"][step], rel=1e-4), \
            f"{combo}: logged grad_norm, step {step}"
    for step, (upd, ref_upd) in enumerate(zip(result["critic_updates"], reference["critic_updates"])):
        upd, ref_upd = torch.tensor(upd, dtype=torch.float64), torch.tensor(ref_upd, dtype=torch.float64)
        err = float((upd - ref_upd).norm() / ref_upd.norm())
        assert float(upd.norm()) > 0 and err < 1e-4, f"{combo}: critic update differs by {err:.3g} at step {step}"
        assert result["critic_grad_norms"][step] == pytest.approx(reference["critic_grad_norms"][step], rel=1e-4)
    assert len(result["critic_updates"]) == (len(result["updates"]) if combo.get("ppo") else 0)


@pytest.mark.parametrize("kind", [("token-mean", "k2", 0.0, False, False, False),
                                  ("seq-mean-token-sum", "k2", 0.0, False, False, False),
                                  ("token-mean", "k1", 0.0, False, False, False),
                                  ("token-mean", "k3", 0.0, True, False, False),
                                  ("token-mean", "full", 0.0, True, False, False),
                                  ("token-mean", "k2", 0.0, False, True, False)],
                         ids=str)
def test_the_reference_update_is_the_autograd_gradient_of_the_steps_loss(one_rank, cfg, tiny_model_path, steps, kind):
    """Independent of DeepSpeed and the Learner: plain autograd of the step's loss over all episodes at once."""
    from score_rl.algos.losses import reinforce_kl_loss
    from score_rl.learner.batch import collate
    from score_rl.learner.logprobs import token_logprobs
    from score_rl.learner.stats import loss_denominator
    from score_rl.utils import load_model, load_tokenizer

    loss_agg, estimator, _, kl_only, weighted, _ = kind
    reference = next(r for r in one_rank if r["combo"].get("reference") and _kind(r["combo"]) == kind)
    episodes = dp.without_advantages(steps[0]) if kl_only else steps[0]
    episodes = dp.weighted(episodes) if weighted else episodes
    policy, ref_model = load_model(tiny_model_path, "float32"), load_model(tiny_model_path, "float32")
    dp.perturb(ref_model)
    b = collate(episodes, load_tokenizer(tiny_model_path).pad_token_id)
    full = estimator == "full"
    temperature = cfg.rollout.temperature
    logp, logits = token_logprobs(policy, b["input_ids"], b["attention_mask"], temperature, full)
    with torch.no_grad():
        ref_logp, ref_logits = token_logprobs(ref_model, b["input_ids"], b["attention_mask"], temperature, full)
    # the denominator counted here from the batch, not with the learner's loss_denominator
    weight = {(i, t): ep.turns[t - 1].loss_weight for i, ep in enumerate(episodes) for t in (1, 2)}
    mask = torch.zeros(b["turn"].shape)
    for (i, t), w in weight.items():
        mask[i][b["turn"][i] == t] = w
    count = mask.sum() if loss_agg == "token-mean" else sum(
        w * int(((b["turn"][i] == t).sum() > 0)) for (i, t), w in weight.items())
    assert float(count) == loss_denominator(episodes, loss_agg)
    loss, _ = reinforce_kl_loss(logp, ref_logp, b["advantage"], b["kl_coef"], mask, kl_estimator=estimator,
                                kl_in_loss=estimator != "k1", loss_agg=loss_agg, denominator=float(count),
                                logits=logits, ref_logits=ref_logits)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in policy.parameters()]).double()
    update = torch.tensor(reference["updates"][0], dtype=torch.float64)
    assert float((update + dp.LR * grad).norm() / (dp.LR * grad).norm()) < 1e-4
    assert reference["grad_norms"][0] == pytest.approx(float(grad.norm()), rel=1e-4)


def test_the_kl_term_is_a_large_part_of_the_update(one_rank):
    """Guards the power of the mixed (policy gradient + k2) cases: with the perturbed reference, an error in the KL
    term would show from step 1. (The kl-only cases test every loss-side estimator on its own.)"""
    kl = torch.tensor(_reference(one_rank, {"kl_estimator": "k2", "kl_only": True})["updates"][0])
    both = torch.tensor(_reference(one_rank, {"kl_estimator": "k2"})["updates"][0])
    assert float(kl.norm()) > 0.1 * float(both.norm())


def test_the_reference_logs_the_norm_of_the_gradient_it_applies(one_rank):
    for r in one_rank:
        if r["combo"].get("reference") and not r["combo"].get("grad_clip"):
            for upd, norm in zip(r["updates"], r["grad_norms"]):
                assert norm == pytest.approx(float(torch.tensor(upd, dtype=torch.float64).norm()) / dp.LR, rel=1e-4)


def test_clipping_clips_the_update_but_logs_the_pre_clip_norm(one_rank):
    clipped = _reference(one_rank, {"grad_clip": 1e-3})
    plain = _reference(one_rank, {})
    upd, plain_upd = (torch.tensor(r["updates"][0], dtype=torch.float64) for r in (clipped, plain))
    assert float(upd.norm()) == pytest.approx(dp.LR * 1e-3, rel=1e-3)
    assert float(upd @ plain_upd / (upd.norm() * plain_upd.norm())) == pytest.approx(1.0, abs=1e-5)
    assert clipped["grad_norms"][0] == pytest.approx(float(plain_upd.norm()) / dp.LR, rel=1e-4)


def _ids(combos):
    return [f"zero{c['zero_stage']}-k{c['k']}-{c.get('loss_agg', 'token-mean')}"
            + (f"-clip{c['grad_clip']}" if c.get("grad_clip") else "")
            + (f"-{c['kl_estimator']}" if c.get("kl_estimator") else "") + ("-cached-ref" if c.get("cache_ref") else "")
            + ("-kl-only" if c.get("kl_only") else "") + ("-weighted" if c.get("weighted") else "")
            + ("-ppo" if c.get("ppo") else "")
            for c in combos]


@pytest.mark.parametrize("index", range(len(_combos(1))), ids=_ids(_combos(1)))
def test_one_rank_update_is_independent_of_micro_batching_and_zero_stage(one_rank, index):
    results = [r for r in one_rank if not r["combo"].get("reference")]
    _check(results[index], _reference(one_rank, results[index]["combo"]))


@pytest.mark.parametrize("index", range(len(_combos(2))), ids=_ids(_combos(2)))
def test_two_ranks_apply_the_one_rank_update(one_rank, two_ranks, index):
    _check(two_ranks[index], _reference(one_rank, two_ranks[index]["combo"]))


def test_zero_3_shards_the_parameters(one_rank, two_ranks):
    """ZeRO 3 combos really ran sharded: right after each update a rank holds none of the policy's (or critic's)
    parameters (learner.zero3_param_persistence_threshold = 0; DeepSpeed's default would keep the tiny model's
    parameters whole)."""
    for result in one_rank + two_ranks:
        zero3 = result["combo"]["zero_stage"] == 3
        assert result["held"] and all((h == 0) == zero3 for h in result["held"]), result["combo"]


def test_cached_reference_logprobs_give_the_same_kl_statistics(one_rank):
    cached = next(r for r in one_rank if r["combo"].get("cache_ref"))
    reference = _reference(one_rank, cached["combo"])
    for got, want in zip(cached["kl_sums"], reference["kl_sums"]):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_the_two_ranks_hold_different_token_counts(steps):
    from score_rl.launch.distributed import shard

    for episodes in steps:
        counts = [sum(len(t.response_ids) for ep in s for t in ep.turns) for s in shard(episodes, 2)]
        assert counts[0] != counts[1]
