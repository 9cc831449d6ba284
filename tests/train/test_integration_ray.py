"""The whole loop on Ray, on CPU: 2 rollout workers, 2 DeepSpeed learner ranks (gloo), 2 training steps."""

from __future__ import annotations

import json

import pytest
import torch

from score_rl.train.trainer import Trainer
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for the module's three runs (one start-up instead of three), started as a run starts its
    own (score-rl's init_ray, the run's ray.num_cpus: the same actor environment); each test hands back what its run
    reserved (ray_run)."""
    import ray

    from score_rl.launch.distributed import init_ray

    init_ray(None, 2.0, num_cpus=4)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def ray_run(ray_cluster, monkeypatch):
    """The placement groups the test's trainer reserves are removed after the test (Ray ends the actors in them), so
    the next test's run finds the cluster's CPUs free."""
    from ray.util import remove_placement_group

    from score_rl.train import startup

    made, make = [], startup.make_placement_group
    monkeypatch.setattr(startup, "make_placement_group", lambda bundles: made.append(make(bundles)) or made[-1])
    yield
    for pg in made:
        remove_placement_group(pg)


@pytest.mark.parametrize("zero_stage, algo", [
    (2, []), (2, ["algo.name=ppo", "algo.ppo.minibatches=2"]),
    # ZeRO 3 with 10 KB buckets: the weight sync gathers the sharded policy bucket by bucket on both ranks
    (3, ["algo.name=ppo", "algo.ppo.minibatches=2", "learner.weight_sync_bucket_mb=0.01"])],
                         ids=["reinforce", "ppo", "ppo-zero3"])
def test_two_steps_two_workers_two_ranks(tmp_path, tiny_model_path, ray_run, zero_stage, algo):
    cfg = tiny_config(tmp_path, [
        f"model.path={tiny_model_path}", "ray.enabled=true", "ray.num_cpus=4", "rollout.num_workers=2",
        "learner.num_ranks=2", f"learner.zero_stage={zero_stage}", "trainer.steps=2", "trainer.checkpoint_every=2",
        "rollout.cpus_per_worker=0.5", "learner.cpus_per_rank=0.5", *algo,
    ])
    trainer = Trainer(cfg, log=lambda *_: None)
    assert len(trainer.workers) == 2 and len(trainer.learners) == 2
    synced = []  # after every sync, both workers hold exactly the learner's (under ZeRO 3: gathered) weights
    push = trainer.weight_sync.push

    def checked_push(learners, workers):
        push(learners, workers)
        learner_weights = learners.call("state_dict")[0]
        synced.append(all(all(torch.equal(w[k], learner_weights[k]) for k in learner_weights)
                          for w in workers.call("state_dict")))

    trainer.weight_sync.push = checked_push
    results = trainer.fit()
    assert synced == [True, True], "one sync per step, each exact"
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert set(results) == {"base", "trained"}
    assert (trainer.run_dir / "final" / "config.json").is_file()
    assert (trainer.run_dir / "checkpoints" / "latest").is_file()
    # both ranks hold identical weights after the data-parallel step, and the workers got them
    w0, w1 = trainer.learners.call("state_dict")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    from score_rl.utils import load_model

    final = load_model(str(trainer.run_dir / "final")).state_dict()  # saved from the gathered weights under ZeRO 3
    assert final.keys() <= w0.keys() and all(torch.equal(final[k], w0[k]) for k in final)
    if algo:  # PPO: the critics beside the two ranks are identical too, and updated 2 x 2 times
        c0, c1 = trainer.learners.call("state_dict", None, True)
        assert all(torch.equal(c0[k], c1[k]) for k in c0)
        assert all(r["updates"] == 2 and r["ratio_dev_first_update"] == 0.0 for r in rows)
        assert (trainer.run_dir / "final_critic" / "config.json").is_file()
    base = trainer.workers.members[0]
    import ray

    assert ray.get(base.ping.remote()) == 0
