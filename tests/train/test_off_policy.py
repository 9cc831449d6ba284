"""trainer.off_policy_steps=1: step t+1's batch is sampled while step t learns (one-step off-policy), importance-
weighted in the loss; the batches, metrics and resumes are the same on every backend and at every resume point."""

from __future__ import annotations

import json

import pytest

from score_rl.config import ConfigError
from score_rl.train.state import PENDING_FILE
from score_rl.train.trainer import Trainer
from tests.conftest import tiny_config

OFF = ["trainer.off_policy_steps=1"]


def _trainer(tmp_path, tiny_model_path, name, extra=()):
    cfg = tiny_config(tmp_path / name, [f"model.path={tiny_model_path}", "ray.enabled=false", "trainer.steps=4",
                                        "trainer.eval_before_after=false", "learner.lr=1e-2", *extra])
    return Trainer(cfg, log=lambda *_: None)


def _fit(trainer):
    trainer.fit()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _sampled_versions(trainer):
    """The policy version the workers held for each rollout, in call order."""
    versions, rollout = [], trainer.rollout

    def recording(problems, step, num_turns=2):
        versions.append((step, trainer.weights_version))
        return rollout(problems, step, num_turns)

    trainer.rollout = recording
    return versions


def _stop_after_step_2(trainer):
    """Run ``trainer`` until a stop signal arrives during step 2 (as SIGTERM would): it checkpoints and stops."""
    import signal

    from score_rl.train.signals import TrainingStopped

    train_step = trainer.train_step

    def stop_after_step_2(step):
        metrics = train_step(step)
        if step == 1:
            trainer.stop.request(signal.SIGTERM)
        return metrics

    trainer.train_step = stop_after_step_2
    with pytest.raises(TrainingStopped):
        trainer.fit()
    trainer.close()


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model_path):
    """An uninterrupted off-policy run (4 steps, in-process): its metrics and the policy version behind each rollout,
    run once for the module: the off=1 case of test_each_batch_is_sampled_by_the_policy_the_setting_says and the
    reference of the resume tests (the same config but for the run directory)."""
    trainer = _trainer(tmp_path_factory.mktemp("straight"), tiny_model_path, "straight", OFF)
    versions = _sampled_versions(trainer)
    return _fit(trainer), versions


@pytest.mark.parametrize("off", [0, 1])
def test_each_batch_is_sampled_by_the_policy_the_setting_says(tmp_path, tiny_model_path, request, off):
    if off:
        rows, versions = request.getfixturevalue("straight")
    else:
        trainer = _trainer(tmp_path, tiny_model_path, f"v{off}", [f"trainer.off_policy_steps={off}"])
        versions = _sampled_versions(trainer)
        rows = _fit(trainer)
    if off:  # step t+1's batch is sampled before step t's update reaches the workers
        assert versions == [(0, 0), (1, 0), (2, 1), (3, 2)]
        assert all("is_weight" in r and "is_clip_frac" in r for r in rows)
        assert rows[0]["logprob_mismatch"] < 1e-3 and rows[0]["is_weight"] == pytest.approx(1.0, abs=1e-3)
        # the later batches come from the policy one update old: the learner's log-probs differ from the sampler's
        assert all(r["logprob_mismatch"] > 1e-3 for r in rows[1:])
        # the mean importance weight is 1 in expectation under the sampling policy (E_μ[π/μ] = 1): its distance from
        # 1 is a few 1e-5 to 1e-3 here, depending on the CPU's float rounding; on-policy it is 1 up to ~1e-7
        assert all(r["is_weight"] != pytest.approx(1.0, abs=1e-5) for r in rows[1:])
    else:
        assert versions == [(0, 0), (1, 1), (2, 2), (3, 3)]
        assert all("is_weight" not in r for r in rows)
        assert all(r["logprob_mismatch"] < 1e-3 for r in rows)


def test_an_off_policy_run_stopped_and_resumed_logs_what_an_uninterrupted_run_logs(tmp_path, tiny_model_path,
                                                                                   straight):
    """A stop signal after step 2 of 4: the checkpoint keeps the batch already sampled for step 3 (and the sampler
    past it), so the resumed run trains on the very batch the uninterrupted one did, sampled one update earlier."""
    straight = straight[0]
    run = [f"trainer.run_dir={tmp_path / 'resumed'}", *OFF]
    _stop_after_step_2(_trainer(tmp_path, tiny_model_path, "first", run))
    ckpt = tmp_path / "resumed" / "checkpoints" / "step_0000002"
    assert "pending" not in json.loads((ckpt / "trainer_state.json").read_text())
    pending = json.loads((ckpt / PENDING_FILE).read_text())  # compact, beside the readable trainer state
    assert len(pending["episodes"]) == 8  # step 2's batch (4 problems x 2 samples), sampled during step 1
    assert pending["rollout_seconds"] > 0
    second = _trainer(tmp_path, tiny_model_path, "second", run)
    versions = _sampled_versions(second)
    resumed = _fit(second)
    rows = [json.loads(line) for line in (second.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[2]["time/rollout"] == pytest.approx(pending["rollout_seconds"]), "the restored batch's rollout time"
    assert versions == [(3, 1)], "step 2's batch comes from the checkpoint; step 3's from the policy after step 2"
    assert [r["step"] for r in resumed] == [0, 1, 2, 3]
    assert resumed == straight


def test_off_policy_needs_reinforce_and_a_sampled_batch(tmp_path, tiny_model_path):
    with pytest.raises(ConfigError, match="trainer.off_policy_steps.*algo.name=ppo"):
        _trainer(tmp_path, tiny_model_path, "ppo", OFF + ["algo.name=ppo"])
    with pytest.raises(ConfigError, match="trainer.off_policy_steps.*method.name=pair_sft"):
        _trainer(tmp_path, tiny_model_path, "sft", OFF + ["method.name=pair_sft"])
    with pytest.raises(ConfigError, match="'trainer.off_policy_steps' must be 0 or 1, got 2"):
        _trainer(tmp_path, tiny_model_path, "two", ["trainer.off_policy_steps=2"])


def test_overlapped_on_ray_trains_what_in_process_trains(tmp_path, tiny_model_path):
    """Backend invariance: on Ray the next batch is sampled in a driver thread while the learner works; in-process
    one after the other. Same batches, same updates, same metrics."""
    import ray

    one_thread = ["rollout.cpus_per_worker=1", "learner.cpus_per_rank=1", "trainer.steps=3", *OFF]
    local = _fit(_trainer(tmp_path, tiny_model_path, "local", one_thread))
    try:
        cfg = tiny_config(tmp_path / "ray", [f"model.path={tiny_model_path}", "ray.enabled=true", "ray.num_cpus=2",
                                             "trainer.eval_before_after=false", "learner.lr=1e-2", *one_thread])
        trainer = Trainer(cfg, log=lambda *_: None)
        threads = []
        step_episodes = trainer.step_episodes

        def recording(step):
            import threading

            threads.append(threading.current_thread().name)
            return step_episodes(step)

        trainer.step_episodes = recording
        on_ray = _fit(trainer)
        trainer.close()
    finally:
        ray.shutdown()
    assert threads == ["MainThread", "score-rl-rollout", "score-rl-rollout"], "the next batch overlaps the learning"
    assert on_ray == local


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_update_waits_for_the_rollout_thread(tmp_path, tiny_model_path, monkeypatch, error):
    """An error in the learning (here the shaping) while the next batch is sampled in the rollout thread: the step
    raises only after that thread is done, so no thread is left driving the workers while the run stops. A second
    Ctrl-C (KeyboardInterrupt) stops at once, without waiting for the rollout."""
    import threading
    import time

    from score_rl.train import prefetch as prefetch_module

    trainer = _trainer(tmp_path, tiny_model_path, "fail", OFF)
    background = prefetch_module.Background
    monkeypatch.setattr(prefetch_module, "Background", lambda fn, threaded: background(fn, threaded=True))  # as on Ray
    rollout_done = threading.Event()
    step_episodes = trainer.step_episodes

    def slow(step):
        episodes = step_episodes(step)
        if step == 1:
            time.sleep(0.5)
            rollout_done.set()
        return episodes

    def broken(episodes, step):
        raise error("shaping failed")

    trainer.step_episodes, trainer.advantages = slow, broken
    with pytest.raises(error, match="shaping failed"):
        trainer.train_step(0)
    assert rollout_done.is_set() == (error is RuntimeError)
    for thread in [t for t in threading.enumerate() if t.name == "score-rl-rollout"]:
        assert error is KeyboardInterrupt
        thread.join()
    trainer.close()


def test_a_damaged_pending_batch_falls_back_to_the_checkpoint_before(tmp_path, tiny_model_path, straight):
    """pending_batch.json zero-filled at its own size (the manifest's size check passes): the resume treats the
    checkpoint as damaged and resumes from the one before, with that one's pending batch: the same run."""
    straight = straight[0]
    run = [f"trainer.run_dir={tmp_path / 'damaged'}", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0", *OFF]
    _stop_after_step_2(_trainer(tmp_path, tiny_model_path, "first", run))
    damaged = tmp_path / "damaged" / "checkpoints" / "step_0000002" / PENDING_FILE
    damaged.write_bytes(b"\0" * len(damaged.read_bytes()))
    logs = []
    second = _trainer(tmp_path, tiny_model_path, "second", run)
    second.log = logs.append
    assert _fit(second) == straight
    assert any("step_0000002 could not be loaded" in line for line in logs)
    assert any("resumed from" in line and "step_0000001" in line for line in logs)
