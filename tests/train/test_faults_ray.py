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


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for the module's runs (one start-up instead of three), started as a run starts its own
    (score-rl's init_ray with RAY's ray.num_cpus: the same actor environment). Each run hands back its placement
    group (_run), with its actors, the killed ones' restarts included."""
    import ray

    from score_rl.launch.distributed import init_ray

    init_ray(None, 1.0, num_cpus=2)
    try:
        yield
    finally:
        ray.shutdown()


def _run(tmp_path, tiny_model_path, name, hook=None, extra=()):
    from ray.util import remove_placement_group

    from score_rl.train import startup

    cfg = tiny_config(tmp_path / name, [f"model.path={tiny_model_path}", *RAY, *extra])
    logs, made, make = [], [], startup.make_placement_group
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(startup, "make_placement_group", lambda bundles: made.append(make(bundles)) or made[-1])
        trainer = Trainer(cfg, log=logs.append)
    if hook:
        hook(trainer)
    try:
        trainer.fit()
    finally:
        trainer.close()
        for pg in made:  # the run's actors end with it: the next run finds the cluster's CPUs free
            remove_placement_group(pg)
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows], logs


def _kill_worker_four_times(trainer):
    """Kill rollout worker 0 with SIGKILL: as step 1's rollout starts, as the evaluation after step 2 (index 1) starts,
    before step 2's weight sync, and after step 3 (Ray restarts it with the base weights before the evaluation after
    step 4 asks for it: a quiet restart)."""
    def kill():
        os.kill(trainer.workers.call_one(0, "pid"), signal.SIGKILL)

    rollout, push, train_step, evaluate = (trainer.step_episodes, trainer.push_weights, trainer.train_step,
                                           trainer.evaluate)
    state = {"step": -1}

    def evaluate_after_kill(*args):  # as the first evaluation (after step 2) starts
        state["evals"] = state.get("evals", 0) + 1
        if state["evals"] == 1:
            kill()
        return evaluate(*args)

    def step_episodes(step):
        if step == 1:
            kill()
        return rollout(step)

    def push_weights():
        if state["step"] == 2:
            kill()
        return push()

    def step_then_kill(step):
        state["step"] = step
        metrics = train_step(step)
        if step == 3:
            kill()
            wait_alive(trainer.workers, 0)  # restarted quietly: the next call would succeed, with stale weights
        return metrics

    trainer.step_episodes, trainer.push_weights, trainer.train_step = step_episodes, push_weights, step_then_kill
    trainer.evaluate = evaluate_after_kill


def test_a_killed_rollout_worker_is_restarted_and_the_run_matches_an_uninterrupted_one(tmp_path, tiny_model_path,
                                                                                      ray_cluster):
    run = ["trainer.steps=5", "trainer.eval_every=2"]  # evaluations after steps 2 and 4 (logged as eval/*)
    reference, _ = _run(tmp_path, tiny_model_path, "reference", extra=run)
    # four kills: Ray's max_restarts counts every restart of the actor's life (with 3, the fourth kill ends the run
    # with "rollout worker 0 died and Ray could not restart it")
    rows, logs = _run(tmp_path, tiny_model_path, "killed", _kill_worker_four_times, [*run, "ray.max_worker_restarts=4"])
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4] and "eval/acc_t2" in rows[1] and "eval/acc_t2" in rows[3]
    assert rows == reference, "every step's episodes counted once, each from the policy of its step; the eval too"
    recoveries = [line for line in logs if "rollout worker 0" in line]
    # the kill before the sync is noticed as a failed call or not at all (Ray may already queue the sync's calls for the
    # restarted actor, which then gets all the weights): 3 or 4 recoveries, and the quiet restart is always caught
    assert len(recoveries) in (3, 4) and any("holds the base weights" in line for line in recoveries), recoveries


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
