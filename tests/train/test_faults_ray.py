"""Faults on Ray: a killed rollout worker is restarted by Ray, brought up to date and its shard redone, so the run
equals an uninterrupted one; a killed learner rank ends the run with one line naming it and the checkpoint."""

from __future__ import annotations

import json
import os
import signal

import pytest

from score_rl.launch.faults import TrainingAborted, wait_alive
from score_rl.train.trainer import Trainer
from tests.conftest import tiny_config

RAY = ["ray.enabled=true", "ray.num_cpus=2", "trainer.steps=4", "trainer.eval_before_after=false",
       "rollout.cpus_per_worker=0.5", "learner.cpus_per_rank=0.5"]


@pytest.fixture
def ray_cluster():
    import ray

    yield
    ray.shutdown()


def _run(tmp_path, tiny_model_path, name, hook=None, extra=()):
    import ray

    cfg = tiny_config(tmp_path / name, [f"model.path={tiny_model_path}", *RAY, *extra])
    logs = []
    trainer = Trainer(cfg, log=logs.append)
    if hook:
        hook(trainer)
    try:
        trainer.fit()
    finally:
        trainer.close()
        ray.shutdown()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows], logs


def _kill_worker_at(when):
    """Kill rollout worker 0 with SIGKILL at step 2: as its rollout starts, before the weight sync, or between steps
    (after the sync; Ray has restarted it with the base weights before the next rollout asks for it)."""
    def hook(trainer):
        state = {"killed": False}

        def kill():
            if not state["killed"]:
                state["killed"] = True
                os.kill(trainer.workers.call_one(0, "pid"), signal.SIGKILL)

        rollout, push, train_step = trainer.step_episodes, trainer.push_weights, trainer.train_step
        if when == "rollout":
            trainer.step_episodes = lambda step: (kill() if step == 2 else None, rollout(step))[1]
        elif when == "sync":
            trainer.push_weights = lambda: (kill() if trainer.weights_version == 2 else None, push())[1]
        else:
            def step_then_kill(step):
                metrics = train_step(step)
                if step == 1:
                    kill()
                    wait_alive(trainer.workers, 0)  # restarted quietly: the next call would succeed, with stale weights
                return metrics
            trainer.train_step = step_then_kill
    return hook


def test_a_killed_rollout_worker_is_restarted_and_the_run_matches_an_uninterrupted_one(tmp_path, tiny_model_path,
                                                                                      ray_cluster):
    reference, _ = _run(tmp_path, tiny_model_path, "reference")
    for when in ("rollout", "sync", "idle"):
        rows, logs = _run(tmp_path, tiny_model_path, when, _kill_worker_at(when))
        assert [r["step"] for r in rows] == [0, 1, 2, 3], when
        assert rows == reference, f"killed at {when}: every step's episodes counted once, from the right policy"
        assert any("rollout worker 0" in line and "restart" in line for line in logs), (when, logs)


def test_a_killed_learner_rank_stops_the_run_with_one_line(tmp_path, tiny_model_path, ray_cluster):
    def hook(trainer):
        train_step = trainer.train_step

        def step(s):
            if s == 2:
                os.kill(trainer.learners.call_one(0, "pid"), signal.SIGKILL)
            return train_step(s)
        trainer.train_step = step

    with pytest.raises(TrainingAborted) as err:
        _run(tmp_path, tiny_model_path, "learner", hook, ["trainer.checkpoint_every=2"])
    message = str(err.value)
    assert message.startswith("learner rank 0 died") and "\n" not in message
    assert "resume from " in message and "checkpoints/step_0000002" in message
