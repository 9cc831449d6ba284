"""A run's start: pre-flight checks (before anything is loaded), the run directory, and the actors.

Everything that can be refused is refused here, in one line naming the key, before a model loads or Ray starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Tuple

from score_rl.config import Config, episodes_per_step, validate_training
from score_rl.errors import ConfigError
from score_rl.launch.distributed import ActorGroup, check_run_dir_is_kept, init_ray, make_placement_group
from score_rl.learner.learner import Learner
from score_rl.rollout.worker import RolloutWorker, check_engine_installed
from score_rl.train.base_model import resolve_model_path
from score_rl.train.checkpoint import writable_problem


def preflight(cfg: Config, log: Callable[[str], None]) -> str:
    """The training-only config checks, the rollout engine, the model (built or located; its LoRA targets) and the
    run directory's place; returns the model's path."""
    validate_training(cfg)
    check_engine_installed(cfg)
    model_path = resolve_model_path(cfg, log=log)
    if cfg.model.lora.r > 0:  # here, not inside a learner actor, so that it is one line
        from transformers import AutoConfig

        from score_rl.learner.learner import check_lora_targets

        check_lora_targets(cfg.model.lora, AutoConfig.from_pretrained(model_path))
    check_run_dir_is_kept(cfg.trainer.run_dir)  # a relative run_dir inside a Ray job's temporary working_dir copy
    return model_path


def make_run_dir(run_dir: Path) -> bool:
    """Create the run directory (if needed) and check that it is writable; True if this call created it."""
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"config key 'trainer.run_dir': cannot create {run_dir}: {err.strerror or err}") from None
    problem = writable_problem(run_dir)
    if problem:
        raise ConfigError(f"config key 'trainer.run_dir': cannot write in {run_dir}: {problem}")
    return created


def start_actors(cfg: Config, model_path: str, minibatches: int, stop) -> Tuple[ActorGroup, ActorGroup]:
    """The rollout workers and the learner ranks (Ray actors in one placement group, or in-process objects), the
    ranks' process group set up. ``minibatches``: updates per step (PPO's minibatches; 1 for REINFORCE)."""
    rc, lc = cfg.rollout, cfg.learner
    pg = None
    worker_res = {"CPU": rc.cpus_per_worker, "GPU": rc.gpus_per_worker}
    learner_res = {"CPU": lc.cpus_per_rank, "GPU": lc.gpus_per_rank}
    if cfg.ray.enabled:
        init_ray(cfg.ray.address, rc.num_workers * rc.cpus_per_worker + lc.num_ranks * lc.cpus_per_rank,
                 rc.num_workers * rc.gpus_per_worker + lc.num_ranks * lc.gpus_per_rank, cfg.ray.num_cpus)
        if stop.installed:
            stop.install()  # again at once: ray.init replaced the SIGTERM handler (a stack dump and exit)
        bundles = [{k: v for k, v in worker_res.items() if v > 0}] * rc.num_workers + \
                  [{k: v for k, v in learner_res.items() if v > 0}] * lc.num_ranks
        pg = make_placement_group(bundles)
    workers = ActorGroup(RolloutWorker, [(cfg, model_path, i) for i in range(rc.num_workers)], cfg.ray.enabled,
                         worker_res, pg, 0, max_restarts=cfg.ray.max_worker_restarts)
    per_rank = episodes_per_step(cfg) // (lc.num_ranks * minibatches)  # episodes per update
    learners = ActorGroup(Learner, [(cfg, model_path, r, lc.num_ranks, per_rank) for r in range(lc.num_ranks)],
                          cfg.ray.enabled, learner_res, pg, rc.num_workers)
    master_addr, master_port = learners.call_one(0, "address")
    learners.call("setup", None, master_addr, master_port)
    return workers, learners


def say_what_is_off(workers: ActorGroup, learners: ActorGroup, log: Callable[[str], None]) -> None:
    """Once, at start-up: an optimisation switched on in the config that this model cannot use (never a silent
    fallback; metrics.jsonl's shared_prompt_rows shows the shared prompt at work every step)."""
    for name, why in learners.call("shared_prompt_fallbacks")[0].items():
        log(f"shared prompt: off for the {name} model, {why}; its passes run every row whole "
            "(learner.share_prompt_prefix)")
    why = workers.call_one(0, "kv_cache_reuse_off")
    if why:
        log(f"rollout.kv_cache_reuse: off for {why}; turn 2 prefills its whole context")
