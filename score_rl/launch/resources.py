"""How many CPUs a run may use, and how they are shared between rollout workers and learner ranks.

``rollout.cpus_per_worker`` / ``learner.cpus_per_rank`` left at null ("auto") size the actors to this process's CPUs
(its CPU affinity, which SLURM and taskset set, capped by a cgroup CPU quota, by ``SLURM_CPUS_PER_TASK`` and by
``ray.num_cpus``):

* the CPUs are split between the learner ranks (half, rounded up) and the rollout workers (the rest; at least half a
  CPU each): that is the Ray reservation of each actor (fractional below 1, whole numbers above, as Ray requires);
* torch threads: with ``trainer.off_policy_steps: 0`` rollout and learning take turns, so each side gets all the CPUs
  (``C // num_workers`` threads per worker, ``C // num_ranks`` per rank); with 1 they run at the same time and each
  actor gets its reservation;
* joining a running cluster (``ray.address`` set, e.g. the SLURM script's): the cluster's free CPUs are split the same
  way, no actor reserving more than its biggest node has, and each actor runs as many threads as it reserved (the
  driver cannot see which node an actor lands on); a cluster with no free CPU is an error naming the keys.

An explicit value is kept as given (reservation and thread count, as before), and ``*.torch_threads`` > 0 overrides the
thread count. ``plan_cpus`` returns the resolved config and the line the trainer prints.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import Optional, Tuple

from score_rl.config import Config


def available_cpus(ray_num_cpus: Optional[int] = None) -> Tuple[int, str]:
    """(CPUs this process may use, where that number comes from); ``ray_num_cpus`` (a local cluster's logical CPUs,
    set by the user) replaces the count."""
    try:
        n, source = len(os.sched_getaffinity(0)), "CPU affinity"
    except AttributeError:  # not Linux
        n, source = os.cpu_count() or 1, "os.cpu_count"
    quota = _cgroup_cpu_quota()
    if quota is not None and quota < n:
        n, source = quota, "cgroup CPU quota"
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit() and 0 < int(slurm) < n:
        n, source = int(slurm), "SLURM_CPUS_PER_TASK"
    if ray_num_cpus:
        n, source = int(ray_num_cpus), "ray.num_cpus"
    return max(1, n), source


def _cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> Optional[int]:
    """ceil(quota / period) of this process's cgroup CPU limit (a container's, a SLURM job's with cgroup limits):
    cgroup v2 ``cpu.max`` (of the process's own cgroup, else the root's) or v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``; None when unlimited or unknown."""
    own = ""
    try:
        for line in open("/proc/self/cgroup").read().splitlines():
            if line.startswith("0::"):
                own = line[3:].strip().lstrip("/")
    except OSError:
        pass
    candidates = [(f"{root}/{own}/cpu.max", None)] if own else []
    candidates += [(f"{root}/cpu.max", None), (f"{root}/cpu/cpu.cfs_quota_us", f"{root}/cpu/cpu.cfs_period_us"),
                   (f"{root}/cpu,cpuacct/cpu.cfs_quota_us", f"{root}/cpu,cpuacct/cpu.cfs_period_us")]
    for path, period_path in candidates:
        try:
            text = open(path).read().split()
            quota, period = (text[0], text[1]) if period_path is None else (text[0], open(period_path).read().strip())
        except (OSError, IndexError):
            continue
        if quota in ("max", "-1"):
            return None
        try:
            return max(1, math.ceil(int(quota) / int(period)))
        except ValueError:
            return None
    return None


def _reservation(cpus: float, members: int, cap: Optional[int] = None) -> float:
    """Each of ``members`` actors' share of ``cpus``: fractional below 1 CPU (to 1/100), whole CPUs above (Ray's rule),
    at most ``cap`` (the freest node's CPUs: a bundle must fit on one node)."""
    share = cpus / members
    if cap:
        share = min(share, cap)
    return math.floor(share * 100) / 100 if share < 1 else float(math.floor(share))


def plan_cpus(cfg: Config, learner: bool = True, cluster_cpus: Optional[Tuple[int, int]] = None) -> Tuple[Config, str]:
    """The config with every auto CPU setting resolved, and a line saying what was chosen and why.
    ``learner=False``: an evaluation-only run (rollout workers only). ``cluster_cpus``: (free CPUs, free CPUs of the
    freest node) of the running cluster this run joined (``ray.address`` set): the split uses the first, and no actor
    reserves more than the second (a placement-group bundle must fit on one node)."""
    rc, lc = cfg.rollout, cfg.learner
    workers = rc.num_workers if cfg.ray.enabled else 1
    ranks = (lc.num_ranks if cfg.ray.enabled else 1) if learner else 0
    overlap = learner and cfg.trainer.off_policy_steps > 0
    auto_w, auto_r = rc.cpus_per_worker is None, learner and lc.cpus_per_rank is None
    joined = cfg.ray.enabled and bool(cfg.ray.address)  # a running cluster: its nodes are not this machine
    node_cap = None
    if joined:
        free, node_cap = cluster_cpus or (0, 0)
        if (auto_w or auto_r) and free < 1:
            from score_rl.errors import ConfigError

            raise ConfigError(f"the Ray cluster at {cfg.ray.address} has no free CPU to size rollout.cpus_per_worker / "
                              f"learner.cpus_per_rank (null = auto) to; set both explicitly")
        total, source = int(free), "free in the Ray cluster"
    else:
        total, source = available_cpus(cfg.ray.num_cpus if cfg.ray.enabled else None)
    if not cfg.ray.enabled:  # one process, one torch thread pool: the learner's count (set last) serves both
        tr = _threads(lc.torch_threads, lc.cpus_per_rank if lc.cpus_per_rank is not None else total)
        tw = tr if learner else _threads(rc.torch_threads, rc.cpus_per_worker if not auto_w else total)
        cpw = rc.cpus_per_worker if not auto_w else float(total)
        cpr = lc.cpus_per_rank if lc.cpus_per_rank is not None else float(total)
        return _resolved(cfg, cpw, cpr, tw, tr), _line(cfg, 1, ranks, None, None, tw, tr,
                                                      f"{total} CPUs ({source}), in-process")
    # the reservations: the learner ranks half (rounded up; half of one CPU), the workers the rest, or what an
    # explicit side leaves (with nothing left: an equal share of all of them)
    learner_part = total / 2 if total < 2 else math.ceil(total / 2)
    if auto_w:
        left = total - (0 if not ranks else learner_part if auto_r else lc.cpus_per_rank * ranks)
        cpw = _reservation(left if left > 0 else total / (workers + ranks), workers, node_cap)
    else:
        cpw = rc.cpus_per_worker
    if auto_r:
        left = total - cpw * workers
        cpr = _reservation(left if left > 0 else total / (workers + ranks), ranks, node_cap)
    else:
        cpr = lc.cpus_per_rank if lc.cpus_per_rank is not None else 1.0
    if overlap or joined:  # at the same time, or actors on nodes this process cannot see: each its own CPUs
        tw = _threads(rc.torch_threads, cpw)
        tr = _threads(lc.torch_threads, cpr)
        mode = "rollout and learning overlap (trainer.off_policy_steps=1)" if overlap else \
            "a joined cluster: each actor as many threads as CPUs reserved"
    else:  # one after the other: each side all of them
        tw = _threads(rc.torch_threads, cpw if not auto_w else total // workers)
        tr = _threads(lc.torch_threads, cpr if not auto_r else total // max(ranks, 1))
        mode = "rollout and learning take turns, each with all of them"
    why = f"{total} CPUs ({source}); {mode}"
    if not (auto_w or auto_r):
        why = f"as configured; {total} CPUs ({source})"
    return _resolved(cfg, cpw, cpr, tw, tr), _line(cfg, workers, ranks, cpw, cpr, tw, tr, why)


def _threads(configured: int, cpus: float) -> int:
    return configured if configured > 0 else max(1, int(cpus))


def _resolved(cfg: Config, cpw: float, cpr: float, tw: int, tr: int) -> Config:
    return replace(cfg, rollout=replace(cfg.rollout, cpus_per_worker=float(cpw), torch_threads=tw),
                   learner=replace(cfg.learner, cpus_per_rank=float(cpr), torch_threads=tr))


def _line(cfg: Config, workers: int, ranks: int, cpw, cpr, tw: int, tr: int, why: str) -> str:
    def side(n: int, what: str, cpus, threads: int) -> str:
        reserved = f"{cpus:g} CPU{'s' if cpus != 1 else ''} reserved, " if cpus is not None else ""
        return f"{n} {what}{'s' if n != 1 else ''} x ({reserved}{threads} torch thread{'s' if threads != 1 else ''})"

    parts = [side(workers, "rollout worker", cpw, tw)]
    if ranks:
        parts.append(side(ranks, "learner rank", cpr, tr))
    return f"CPUs: {'; '.join(parts)} — {why}"


def bf16_is_fast(gpu: bool) -> Tuple[bool, str]:
    """Whether bfloat16 math runs at full speed where the models run, and why (the line the trainer prints)."""
    import torch

    if gpu:
        if not torch.cuda.is_available():  # the driver has no GPU (a cluster's head node): the actors' GPUs decide
            return True, "GPU actors"
        ok = torch.cuda.is_bf16_supported(including_emulation=False)  # V100 / T4 emulate it: slow
        return ok, f"{torch.cuda.get_device_name()} {'supports' if ok else 'lacks'} bfloat16"
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    ok = any(check() for check in checks if check is not None)
    return ok, ("this CPU has AVX512-BF16 / AMX" if ok else
                "this CPU has no AVX512-BF16 or AMX (bfloat16 matmuls would be emulated, many times slower)")


def resolve_dtype(cfg: Config) -> Tuple[Config, Optional[str]]:
    """``model.dtype: auto`` → bfloat16 where it is fast (a GPU with bfloat16, a CPU with AVX512-BF16 or AMX), else
    float32; the config with it resolved, and the line saying why (None when the dtype was given)."""
    if cfg.model.dtype != "auto":
        return cfg, None
    # one dtype for every model: bfloat16 only if it is fast on each side (e.g. not for CPU workers beside GPU ranks)
    checks = [bf16_is_fast(gpu) for gpu in sorted({cfg.rollout.gpus_per_worker > 0, cfg.learner.gpus_per_rank > 0})]
    fast = all(ok for ok, _ in checks)
    why = "; ".join(reason for _, reason in checks)
    dtype = "bfloat16" if fast else "float32"
    return replace(cfg, model=replace(cfg.model, dtype=dtype)), f"model.dtype auto: {dtype} ({why})"


def joined_cluster_cpus(cfg: Config) -> Optional[Tuple[int, int]]:
    """With ``ray.address`` set: join the cluster now and return (its free CPUs, the CPUs of its biggest node): what
    ``plan_cpus`` splits, and the most one actor may reserve; else None (a local cluster is started later, sized to the
    plan)."""
    if not (cfg.ray.enabled and cfg.ray.address):
        return None
    import ray

    from score_rl.launch.distributed import init_ray

    init_ray(cfg.ray.address, 0)
    per_node = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    free = int(ray.available_resources().get("CPU", 0))
    return free, int(min(max(per_node, default=0), free))
