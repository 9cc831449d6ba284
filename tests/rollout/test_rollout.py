"""RolloutWorker: typed two-turn episodes, and the sampled distribution equals the trained distribution."""

from __future__ import annotations

import pytest
import torch

from score_rl.learner.batch import collate
from score_rl.learner.logprobs import token_logprobs
from score_rl.rollout.worker import RolloutWorker


@pytest.fixture
def worker(cfg, tiny_model_path):
    return RolloutWorker(cfg, tiny_model_path)


def test_episodes_are_typed_per_turn_and_turn2_extends_turn1(worker):
    problems = worker.env.problems("train")[:3]
    episodes = worker.run_episodes(problems, samples_per_problem=2, temperature=1.0, seed=0)
    assert len(episodes) == 6
    assert [ep.sample_index for ep in episodes[:2]] == [0, 1]
    correction = worker.prompts._correction_ids
    eos = worker.tokenizer.eos_token_id
    for ep in episodes:
        t1, t2 = ep.turns
        assert len(t1.response_ids) == len(t1.sampling_logprobs) > 0
        # turn 2's context is exactly turn-1 prompt + attempt-1 ids + correction ids (no re-tokenisation); a
        # truncated attempt 1 is closed by an EOS that is context, not part of attempt 1
        boundary = [eos] if t1.truncated else []
        assert t2.prompt_ids == t1.prompt_ids + t1.response_ids + boundary + correction
        for turn in ep.turns:
            assert turn.reward in (0.0, 1.0) and turn.reason
            assert turn.truncated == (not set(worker.engine.eos_ids) & set(turn.response_ids))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_equal_training_logprobs(worker, temperature):
    """The learner's log_softmax(logits / T) at the sampled tokens reproduces the sampler's log-probs."""
    episodes = worker.run_episodes(worker.env.problems("train")[:4], 2, temperature, seed=1)
    batch = collate(episodes, worker.tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs(worker.model, batch["input_ids"], batch["attention_mask"], temperature)
    mask = batch["turn"] > 0
    assert mask.sum() > 0
    assert torch.allclose(logp[mask], batch["sampling_logprobs"][mask], atol=1e-4)


def test_same_seed_same_samples_different_seed_different(worker):
    problems = worker.env.problems("train")[:8]
    texts = lambda eps: [t.response_text for ep in eps for t in ep.turns]  # noqa: E731
    a = texts(worker.run_episodes(problems, 2, 1.0, seed=5))
    b = texts(worker.run_episodes(problems, 2, 1.0, seed=5))
    c = texts(worker.run_episodes(problems, 2, 1.0, seed=6))
    assert a == b
    assert a != c


def test_load_weights_changes_the_policy(worker, tiny_model_path):
    state = {k: torch.zeros_like(v) for k, v in worker.model.state_dict().items()}
    worker.load_weights(state)
    assert all(float(v.abs().sum()) == 0 for v in worker.model.state_dict().values())


def test_overlong_prompt_is_an_error_not_a_silent_cut(cfg, tiny_model_path):
    cfg.rollout.max_prompt_tokens = 5
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        RolloutWorker(cfg, tiny_model_path).run_episodes(RolloutWorker(cfg, tiny_model_path).env.problems("train")[:1],
                                                         1, 1.0, seed=0)


def test_a_model_generation_config_cannot_change_the_sampled_distribution(cfg, tiny_model_path, tmp_path):
    """generation_config.json with top_k / repetition_penalty must not leak into sampling (sampled = trained)."""
    import shutil

    from transformers import GenerationConfig

    path = tmp_path / "model"
    shutil.copytree(tiny_model_path, path)
    GenerationConfig(do_sample=True, top_k=2, top_p=0.5, repetition_penalty=1.5, min_p=0.2).save_pretrained(path)
    worker = RolloutWorker(cfg, str(path))
    episodes = worker.run_episodes(worker.env.problems("train")[:4], 2, 1.0, seed=3)
    batch = collate(episodes, worker.tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs(worker.model, batch["input_ids"], batch["attention_mask"], 1.0)
    mask = batch["turn"] > 0
    assert torch.allclose(logp[mask], batch["sampling_logprobs"][mask], atol=1e-4)


def test_corrections_per_attempt_continue_each_first_attempt_m_times(worker):
    problems = worker.env.problems("train")[:3]
    problems = problems + problems[:1]  # a problem drawn twice in one step keeps its first attempts apart
    episodes = worker.run_episodes(problems, samples_per_problem=2, temperature=1.0, seed=0, corrections_per_attempt=3)
    assert len(episodes) == 4 * 2 * 3
    assert len({ep.first_attempt_id for ep in episodes}) == 4 * 2, "one id per first attempt, unique in the call"
    for start in range(0, len(episodes), 3):
        sibs = episodes[start:start + 3]
        assert len({(ep.problem_id, ep.first_attempt_id) for ep in sibs}) == 1
        assert all(ep.turns[1].loss_weight == pytest.approx(1 / 3) and ep.turns[0].loss_weight == 1.0 for ep in sibs)
        assert all(ep.turns[0].response_ids == sibs[0].turns[0].response_ids for ep in sibs), "one shared attempt 1"
        assert [ep.turns[0].trained for ep in sibs] == [True, False, False], "attempt 1 is trained once"
        assert all(ep.turns[1].prompt_ids[:len(ep.turns[0].prompt_ids)] == ep.turns[0].prompt_ids for ep in sibs)
        assert len({ep.sample_index for ep in sibs}) == 3
    assert len({tuple(ep.turns[1].response_ids) for ep in episodes}) > 1


def test_request_seeds_are_distinct_deterministic_and_take_any_int_seed():
    from score_rl.rollout.engines.base import request_seed

    seeds = [request_seed((s, t), i) for s in (-1, 0, 1, 10**12) for t in (0, 1) for i in range(50)]
    assert len(set(seeds)) == len(seeds) and all(0 <= x < 2**31 for x in seeds)
    assert request_seed((-1, 0), 3) == request_seed((-1, 0), 3)  # deterministic
    assert request_seed((-1, 0), 3) != request_seed((1, 0), 3) != request_seed((1, 1), 3)  # seed and turn matter
