"""Each comparison method end to end in one process: what it trains on, what it logs, what it leaves alone."""

from __future__ import annotations

import json

import pytest
import torch

from score_rl.algos.methods import preset_overrides
from score_rl.train.trainer import Trainer
from tests.conftest import tiny_config


def _trainer(tmp_path, tiny_model_path, method, extra=()):
    cfg = tiny_config(tmp_path / method, [*preset_overrides(method), f"model.path={tiny_model_path}",
                                          "ray.enabled=false", "trainer.steps=2", *extra])
    return Trainer(cfg, log=lambda *_: None)


def _rows(trainer):
    return [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(path):
    from score_rl.utils import load_model

    return torch.cat([p.detach().flatten() for p in load_model(str(path), "float32").parameters()])


def _record_updates(trainer, batches):
    """Record (episodes, denominator) of every learner update the trainer makes."""
    call = trainer.learners.call

    def recording(method, per_member_args=None, *args):
        if method in ("train_step", "ppo_update"):
            batches.append(([ep for a in per_member_args for ep in a[0]], per_member_args[0][1]))
        return call(method, per_member_args, *args)

    trainer.learners.call = recording


def _no_updates(trainer, why):
    call = trainer.learners.call
    trainer.learners.call = lambda method, *a: pytest.fail(why) if method in ("train_step", "ppo_update") \
        else call(method, *a)


def test_single_turn_rl_trains_on_one_attempt_and_evaluates_two(tmp_path, tiny_model_path):
    trainer = _trainer(tmp_path, tiny_model_path, "single_turn_rl")
    seen = []
    _record_updates(trainer, seen)
    results = trainer.fit()
    trainer.close()
    assert seen and all(len(ep.turns) == 1 for batch, _ in seen for ep in batch), "turn 2 is never in the loss"
    rows = _rows(trainer)
    assert "acc_t1" in rows[0] and "acc_t2" not in rows[0]
    assert "acc_t2" in results["trained"] and "delta" in results["trained"], "evaluated with two attempts"
    assert (trainer.run_dir / "run_complete.json").is_file()


@pytest.mark.parametrize("keep", ["D", "D+"])
def test_star_trains_only_kept_second_attempts(tmp_path, tiny_model_path, keep):
    trainer = _trainer(tmp_path, tiny_model_path, "star" if keep == "D+" else "star_d")
    batches = []
    _record_updates(trainer, batches)
    trainer.fit()
    trainer.close()
    rows = _rows(trainer)
    assert [r["step"] for r in rows] == [0, 1] and all("sft_kept" in r for r in rows)
    for episodes, denominator in batches:
        for ep in episodes:
            r1, r2 = ep.turns[0].reward, ep.turns[1].reward
            keeps = r2 == 1 and (keep == "D+" or r1 == 0)
            assert not ep.turns[0].trained and ep.turns[1].trained == keeps
        assert denominator == sum(len(ep.turns[1].response_ids) for ep in episodes if ep.turns[1].trained)
    # a step whose batch keeps nothing makes no update at all
    assert len(batches) == sum(r["sft_kept"] > 0 for r in rows)


def test_star_without_kept_traces_does_not_update(tmp_path, tiny_model_path):
    # min_operand > max sums the tiny model can produce: rewards are all 0, nothing is kept
    trainer = _trainer(tmp_path, tiny_model_path, "star", ["env.params.min_operand=90"])
    _no_updates(trainer, "no kept trace: the learner must not be called")
    trainer.step_episodes = _all_wrong(trainer.step_episodes)
    trainer.fit()
    trainer.close()
    assert all(r["sft_kept"] == 0 for r in _rows(trainer))
    assert torch.equal(_weights(trainer.run_dir / "final"), _weights(tiny_model_path))


def _all_wrong(step_episodes):
    def wrapped(step):
        episodes = step_episodes(step)
        for ep in episodes:
            for t in ep.turns:
                t.reward = 0.0
        return episodes
    return wrapped


def test_pair_sft_trains_on_fixed_pairs_from_the_base_model(tmp_path, tiny_model_path, monkeypatch):
    import score_rl.train.rollout_pool as pool_module

    sample = pool_module.run_sharded

    def graded(*args, **kwargs):  # the tiny test model is never right: grade its samples alternately right and wrong
        episodes = sample(*args, **kwargs)
        for ep in episodes:
            ep.turns[0].reward = float(ep.sample_index % 2)
        return episodes

    monkeypatch.setattr(pool_module, "run_sharded", graded)
    trainer = _trainer(tmp_path, tiny_model_path, "pair_sft", ["method.pair_sft_problems=32",
                                                               "rollout.samples_per_problem=4",
                                                               "trainer.eval_before_after=false"])
    batches = []
    _record_updates(trainer, batches)
    trainer.fit()
    trainer.close()
    assert trainer.method.pairs, "the base model's samples gave pairs"
    batches = [episodes for episodes, _ in batches]
    for episodes in batches:
        assert len(episodes) == trainer.episodes_per_step
        for ep in episodes:
            wrong, right = ep.turns
            assert wrong.reward == 0 and right.reward == 1 and not wrong.trained and right.trained
            assert right.prompt_ids[:len(wrong.prompt_ids) + len(wrong.response_ids)] == \
                wrong.prompt_ids + wrong.response_ids, "problem + wrong attempt + instruction → right attempt"
    assert [ep.problem_id for ep in trainer.method.batch(1)] == [ep.problem_id for ep in batches[1]], \
        "a step's pairs are a function of the step (exact resume)"
    # a resumed run reloads the saved pairs instead of sampling new ones
    monkeypatch.setattr(pool_module, "run_sharded", lambda *a: pytest.fail("the pairs were sampled again"))
    again = _trainer(tmp_path, tiny_model_path, "pair_sft", ["method.pair_sft_problems=32",
                                                             "rollout.samples_per_problem=4",
                                                             "trainer.eval_before_after=false"])
    pairs, contexts = again.method.collect_pairs()
    again.close()
    assert [(w.turns[0].response_ids, r.turns[0].response_ids) for w, r in pairs] == \
        [(w.turns[0].response_ids, r.turns[0].response_ids) for w, r in trainer.method.pairs]
    assert contexts == trainer.method.contexts


def test_a_run_directory_is_trained_by_one_process_at_a_time(tmp_path, tiny_model_path):
    from score_rl.config import ConfigError
    from score_rl.rundir import RunDirLock

    first = _trainer(tmp_path, tiny_model_path, "score")
    assert RunDirLock.held(first.run_dir)
    with pytest.raises(ConfigError, match="is in use by another score-rl process"):
        _trainer(tmp_path, tiny_model_path, "score")
    first.close()
    assert not RunDirLock.held(first.run_dir)
    _trainer(tmp_path, tiny_model_path, "score").close()


def test_self_refine_trains_nothing(tmp_path, tiny_model_path):
    trainer = _trainer(tmp_path, tiny_model_path, "self_refine")
    _no_updates(trainer, "Self-Refine must not train")
    results = trainer.fit()
    trainer.close()
    assert results["trained"] == results["base"]
    assert (trainer.run_dir / "metrics.jsonl").read_text() == ""
    assert torch.equal(_weights(trainer.run_dir / "final"), _weights(tiny_model_path))
    assert (trainer.run_dir / "run_complete.json").is_file()


def test_corrections_per_attempt_trains_each_first_attempt_once(tmp_path, tiny_model_path):
    trainer = _trainer(tmp_path, tiny_model_path, "score", ["rollout.corrections_per_attempt=2",
                                                            "trainer.eval_before_after=false"])
    assert trainer.episodes_per_step == 4 * 2 * 2
    seen = []
    _record_updates(trainer, seen)
    trainer.fit()
    trainer.close()
    for episodes, denominator in seen:
        assert len(episodes) == trainer.episodes_per_step
        firsts = {(ep.problem_id, ep.first_attempt_id): len(ep.turns[0].response_ids) for ep in episodes}
        assert len(firsts) == 4 * 2
        assert denominator == pytest.approx(sum(firsts.values()) + sum(len(ep.turns[1].response_ids) for ep in episodes)
                                            / 2), "a first attempt's tokens count once, each of its 2 corrections half"


def test_corrections_per_attempt_needs_second_attempts_from_the_policy(tmp_path, tiny_model_path):
    from score_rl.config import ConfigError

    with pytest.raises(ConfigError, match="corrections_per_attempt' > 1 needs two-attempt rollouts"):
        _trainer(tmp_path, tiny_model_path, "single_turn_rl", ["rollout.corrections_per_attempt=2"])
