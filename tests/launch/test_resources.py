"""plan_cpus: auto CPU settings sized to the machine / allocation (score_rl/launch/resources.py)."""

from __future__ import annotations

import pytest

from score_rl.config import load_config
from score_rl.launch import resources
from score_rl.launch.resources import available_cpus, plan_cpus

QUICKSTART = "configs/quickstart.yaml"


@pytest.fixture
def cpus(monkeypatch):
    """Pretend this process may use n CPUs (affinity), with no cgroup quota and no SLURM."""
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(resources, "_cgroup_cpu_quota", lambda: None)

    def set_n(n: int) -> None:
        monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: set(range(n)))
    return set_n


def _plan(*overrides):
    cfg, line = plan_cpus(load_config(QUICKSTART, list(overrides)))
    rc, lc = cfg.rollout, cfg.learner
    return (rc.cpus_per_worker, rc.torch_threads, lc.cpus_per_rank, lc.torch_threads), line


def test_defaults_use_every_cpu_while_rollout_and_learning_take_turns(cpus):
    cpus(2)
    plan, line = _plan()
    assert plan == (1.0, 2, 1.0, 2)  # reserve 1 + 1, but each side runs 2 threads when it has the machine
    assert "2 CPUs (CPU affinity)" in line and "take turns" in line
    cpus(16)
    assert _plan("rollout.num_workers=2")[0] == (4.0, 8, 8.0, 16)


def test_overlap_gives_each_actor_its_own_cpus(cpus):
    cpus(2)
    plan, line = _plan("trainer.off_policy_steps=1")
    assert plan == (1.0, 1, 1.0, 1) and "overlap" in line
    cpus(1)  # one CPU: half each (Ray accepts fractions below 1), one thread each
    assert _plan("trainer.off_policy_steps=1")[0] == (0.5, 1, 0.5, 1)
    cpus(7)
    assert _plan("trainer.off_policy_steps=1", "learner.num_ranks=2")[0] == (3.0, 3, 2.0, 2)


def test_explicit_values_are_kept_and_the_other_side_gets_the_rest(cpus):
    cpus(8)
    plan, line = _plan("rollout.cpus_per_worker=2", "learner.cpus_per_rank=3")
    assert plan == (2.0, 2, 3.0, 3) and "as configured" in line
    assert _plan("learner.cpus_per_rank=6", "trainer.off_policy_steps=1")[0] == (2.0, 2, 6.0, 6)
    assert _plan("learner.torch_threads=5")[0] == (4.0, 8, 4.0, 5)  # torch_threads > 0 wins


def test_in_process_gives_both_all_cpus(cpus):
    cpus(4)
    plan, line = _plan("ray.enabled=false")
    assert plan == (4.0, 4, 4.0, 4) and "in-process" in line


def test_joining_a_cluster_splits_its_free_cpus_one_thread_per_reserved_cpu(cpus):
    cpus(64)  # this machine's CPUs do not count: the actors run on the cluster's nodes
    cfg, line = plan_cpus(load_config(QUICKSTART, ["ray.address=auto"]), cluster_cpus=(8, 8))
    assert (cfg.rollout.cpus_per_worker, cfg.rollout.torch_threads, cfg.learner.cpus_per_rank,
            cfg.learner.torch_threads) == (4.0, 4, 4.0, 4)
    assert "8 CPUs (free in the Ray cluster)" in line and "joined cluster" in line


def test_allocation_limits_win_over_the_machine(cpus, monkeypatch):
    cpus(64)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert available_cpus() == (6, "SLURM_CPUS_PER_TASK")
    monkeypatch.setattr(resources, "_cgroup_cpu_quota", lambda: 3)
    assert available_cpus() == (3, "cgroup CPU quota")
    assert available_cpus(ray_num_cpus=5) == (5, "ray.num_cpus")
    assert _plan("ray.num_cpus=4")[0] == (2.0, 4, 2.0, 4)


def test_evaluation_only_gives_the_workers_everything(cpus):
    cpus(6)
    cfg, _ = plan_cpus(load_config(QUICKSTART, ["rollout.num_workers=2"]), learner=False)
    assert (cfg.rollout.cpus_per_worker, cfg.rollout.torch_threads) == (3.0, 3)


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, "float32"), (True, False, "bfloat16"),
                                                         (False, True, "bfloat16")])
def test_auto_dtype_is_bfloat16_only_where_the_cpu_has_bf16_math(monkeypatch, avx512_bf16, amx, expected):
    """(The quickstart pins float32: model.dtype=auto is asked for here.)"""
    import torch

    from score_rl.launch.resources import resolve_dtype

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    cfg, line = resolve_dtype(load_config(QUICKSTART, ["model.dtype=auto"]))
    assert cfg.model.dtype == expected and line.startswith(f"model.dtype auto: {expected}")
    assert resolve_dtype(load_config(QUICKSTART, ["model.dtype=float32"]))[1] is None  # given: kept, nothing said
    gpu, line = resolve_dtype(load_config(QUICKSTART, ["model.dtype=auto", "learner.gpus_per_rank=1",
                                                     "rollout.gpus_per_worker=1"]))
    if not torch.cuda.is_available():  # a driver without a GPU (a head node): the GPU actors get bfloat16
        assert gpu.model.dtype == "bfloat16" and "GPU actors" in line
    # CPU workers beside GPU ranks
    mixed, _ = resolve_dtype(load_config(QUICKSTART, ["model.dtype=auto", "learner.gpus_per_rank=1"]))
    assert mixed.model.dtype == expected, "one dtype for all models: bfloat16 only if the CPU side is fast too"


def test_no_plan_reserves_more_cpus_than_there_are(cpus):
    """Fewer CPUs than actors: fractional shares that add up to at most the CPUs (a placement group that can be
    placed), whole CPUs above one each."""
    for n in (1, 2, 3, 5, 8):
        cpus(n)
        for workers in (1, 2, 4):
            for ranks in (1, 2):
                for off in (0, 1):
                    cfg, _ = plan_cpus(load_config(QUICKSTART, [f"rollout.num_workers={workers}",
                                                                f"learner.num_ranks={ranks}",
                                                                f"trainer.off_policy_steps={off}"]))
                    cpw, cpr = cfg.rollout.cpus_per_worker, cfg.learner.cpus_per_rank
                    assert cpw * workers + cpr * ranks <= n + 1e-9, (n, workers, ranks)
                    assert all(c == int(c) or c < 1 for c in (cpw, cpr))


def test_a_joined_cluster_caps_each_actor_at_its_biggest_node_and_needs_a_free_cpu(cpus):
    from score_rl.config import ConfigError

    cfg, _ = plan_cpus(load_config(QUICKSTART, ["ray.address=auto"]), cluster_cpus=(6, 2))  # 3 nodes x 2 CPUs
    assert (cfg.rollout.cpus_per_worker, cfg.learner.cpus_per_rank) == (2.0, 2.0)
    with pytest.raises(ConfigError, match="no free CPU"):
        plan_cpus(load_config(QUICKSTART, ["ray.address=auto"]), cluster_cpus=(0, 4))


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "250000 100000\n"}, 3), ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None), ({}, None)],
    ids=["v2", "v2-unlimited", "v1", "v1-unlimited", "none"])
def test_cgroup_quota_v1_and_v2(tmp_path, monkeypatch, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert resources._cgroup_cpu_quota(str(tmp_path)) == expected
