"""Checks of a loaded config: ``validate`` (every config, run by load_config) and ``validate_training`` (a run that
trains). Each failure is one ConfigError line that names the key.

What a method needs (two attempts, a policy-gradient loss, training at all) comes from the registry in
score_rl.algos.methods, never from method lists here.
"""

from __future__ import annotations

import math

from score_rl.algos.methods import METHODS, method_names
from score_rl.config.schema import CHOICES, Config, get_key, schema_fields
from score_rl.errors import ConfigError

# lower bounds of single keys, checked before the cross-field checks (which may divide by or compare them)
AT_LEAST_ONE = ("rollout.num_workers", "rollout.problems_per_step", "rollout.samples_per_problem",
                "rollout.max_new_tokens", "rollout.num_turns", "learner.num_ranks", "learner.micro_batch_size",
                "trainer.steps", "method.pair_sft_problems", "rollout.corrections_per_attempt")
NON_NEGATIVE = ("eval.temperature", "eval.scaling_temperature", "trainer.eval_problems", "trainer.checkpoint_every",
                "trainer.keep_checkpoints", "trainer.eval_every", "trainer.progress_interval_s",
                "trainer.max_bad_steps", "ray.max_worker_restarts", "rollout.torch_threads", "learner.torch_threads",
                "shaping.alpha", "shaping.beta1", "shaping.beta2", "learner.weight_decay", "rollout.gpus_per_worker",
                "learner.gpus_per_rank")
POSITIVE_OR_NULL = ("learner.lr", "rollout.cpus_per_worker", "learner.cpus_per_rank", "algo.is_clip")


def validate(cfg: Config) -> None:
    """Cross-field checks; each failure names the key."""
    _validate_choices(cfg)
    _validate_bounds(cfg)
    for section in (_validate_shaping, _validate_learner, _validate_rollout, _validate_algo, _validate_method,
                    _validate_ray, _validate_prompt, _validate_eval, _validate_model, _validate_trainer):
        section(cfg)


def _validate_choices(cfg: Config) -> None:
    for key, choices in CHOICES.items():
        value = get_key(cfg, key)
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {list(choices)}, got {value!r}")


def _validate_bounds(cfg: Config) -> None:
    """AT_LEAST_ONE >= 1, every float finite, NON_NEGATIVE >= 0, POSITIVE_OR_NULL > 0 or null."""
    for key in AT_LEAST_ONE:
        if get_key(cfg, key) < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {get_key(cfg, key)}")
    for key, _, _ in schema_fields():
        value = get_key(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value}")
    for key in NON_NEGATIVE:
        if get_key(cfg, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {get_key(cfg, key)}")
    for key in POSITIVE_OR_NULL:
        if get_key(cfg, key) is not None and get_key(cfg, key) <= 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {get_key(cfg, key)}")


def _validate_shaping(cfg: Config) -> None:
    if not 0.0 <= cfg.shaping.gamma <= 1.0:
        raise ConfigError(f"config key 'shaping.gamma' must be in [0, 1], got {cfg.shaping.gamma}")
    if cfg.shaping.stage1_steps < 0:
        raise ConfigError("config key 'shaping.stage1_steps' must be >= 0")


def _validate_learner(cfg: Config) -> None:
    learner = cfg.learner
    if learner.weight_sync_bucket_mb <= 0:
        raise ConfigError(f"config key 'learner.weight_sync_bucket_mb' must be > 0, got "
                          f"{learner.weight_sync_bucket_mb}")
    if learner.grad_clip < 0:
        raise ConfigError(f"config key 'learner.grad_clip' must be >= 0 (0 = no clipping), got {learner.grad_clip}")
    if learner.zero3_param_persistence_threshold < 0:
        raise ConfigError("config key 'learner.zero3_param_persistence_threshold' must be >= 0")


def _validate_rollout(cfg: Config) -> None:
    rollout, vllm = cfg.rollout, cfg.rollout.vllm
    if vllm.tensor_parallel_size < 1 or vllm.kv_cache_mb <= 0 or not 0 < vllm.gpu_memory_utilization <= 1:
        bad = ("tensor_parallel_size" if vllm.tensor_parallel_size < 1 else "kv_cache_mb" if vllm.kv_cache_mb <= 0
               else "gpu_memory_utilization")
        raise ConfigError(f"config key 'rollout.vllm.{bad}' is out of range: {getattr(vllm, bad)!r}")
    if rollout.engine == "vllm" and vllm.tensor_parallel_size > 1 and \
            rollout.gpus_per_worker != vllm.tensor_parallel_size:
        raise ConfigError(f"config key 'rollout.vllm.tensor_parallel_size' is {vllm.tensor_parallel_size}: each "
                          f"rollout worker's engine then spans that many GPUs, so rollout.gpus_per_worker must be the "
                          f"same (got {rollout.gpus_per_worker:g}; tensor parallelism needs GPUs)")
    if rollout.num_turns != 2:
        raise ConfigError("config key 'rollout.num_turns': training supports exactly 2 turns (SCoRe's setting)")
    if rollout.temperature <= 0:
        raise ConfigError("config key 'rollout.temperature' must be > 0 for training (on-policy sampling)")


def _validate_algo(cfg: Config) -> None:
    algo, rollout = cfg.algo, cfg.rollout
    if algo.uses_reward_kl() != (algo.kl_estimator == "k1"):
        raise ConfigError(
            "config key 'algo.kl_estimator': k1 is unbiased only as a reward penalty (algo.kl_in_reward=true), and "
            "the reward penalty is implemented with k1 only; use k1 with kl_in_reward=true, or k2/k3/full with false"
        )
    if algo.name == "ppo":
        _validate_ppo(cfg)
        return  # PPO's baseline is its critic: the group-baseline checks below are REINFORCE's
    if rollout.corrections_per_attempt > 1 and algo.advantage == "group_norm":
        raise ConfigError("config key 'algo.advantage': group_norm with rollout.corrections_per_attempt > 1 normalises "
                          "away the scale of turn 2's shaped reward among siblings (alpha would have no effect)")
    if rollout.corrections_per_attempt > 1 and rollout.samples_per_problem < 2:
        raise ConfigError("config key 'rollout.samples_per_problem' must be >= 2 with corrections_per_attempt > 1 "
                          "(turn 1's baseline is over the problem's distinct first attempts)")
    if algo.advantage == "rloo" and rollout.samples_per_problem < 2:
        raise ConfigError("config key 'rollout.samples_per_problem' must be >= 2 for algo.advantage=rloo")


def _validate_ppo(cfg: Config) -> None:
    ppo, trainable = cfg.algo.ppo, method_names("policy_gradient")
    if cfg.method.name not in trainable:
        raise ConfigError(f"config key 'algo.name': ppo trains the RL methods ({', '.join(trainable)}); method "
                          f"'{cfg.method.name}' is not policy-gradient RL")
    for key in ("algo.ppo.epochs", "algo.ppo.minibatches"):
        if get_key(cfg, key) < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {get_key(cfg, key)}")
    for key in ("algo.ppo.clip_eps", "algo.ppo.value_clip", "algo.critic.lr"):
        if get_key(cfg, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {get_key(cfg, key)}")
    if ppo.clip_eps >= 1:
        raise ConfigError(f"config key 'algo.ppo.clip_eps' must be < 1 (the ratio's lower bound 1 - ε), got "
                          f"{ppo.clip_eps}")
    if not 0.0 <= ppo.lam <= 1.0:
        raise ConfigError(f"config key 'algo.ppo.lam' must be in [0, 1], got {ppo.lam}")


def _validate_method(cfg: Config) -> None:
    if cfg.rollout.corrections_per_attempt > 1 and not METHODS[cfg.method.name].two_attempts:
        raise ConfigError(f"config key 'rollout.corrections_per_attempt' > 1 needs two-attempt rollouts; method "
                          f"'{cfg.method.name}' does not sample second attempts from the policy")


def _validate_ray(cfg: Config) -> None:
    if not cfg.ray.enabled and (cfg.rollout.num_workers > 1 or cfg.learner.num_ranks > 1):
        raise ConfigError("config key 'ray.enabled': more than one rollout worker or learner rank needs Ray")


def _validate_prompt(cfg: Config) -> None:
    if "{problem}" not in cfg.prompt.first_attempt:
        raise ConfigError("config key 'prompt.first_attempt' must contain '{problem}'")


def _validate_eval(cfg: Config) -> None:
    if cfg.eval.num_turns < 1:
        raise ConfigError(f"config key 'eval.num_turns' must be >= 1, got {cfg.eval.num_turns}")
    if cfg.eval.scaling_samples and cfg.eval.scaling_samples < 2:
        raise ConfigError("config key 'eval.scaling_samples' must be 0 (off) or >= 2")
    ec = cfg.eval
    if any(not isinstance(n, int) or n < 1 for n in ec.budgets) or len(set(ec.budgets)) != len(ec.budgets):
        raise ConfigError(f"config key 'eval.budgets' must be a list of distinct integers >= 1, got "
                          f"{list(ec.budgets)}")
    if ec.scorer and not ec.budgets:
        raise ConfigError("config key 'eval.scorer' is set but eval.budgets is empty: the scorer weighs the votes of "
                          "the test-time compute study only")
    for key in ("budget_max_turns", "difficulty_samples", "difficulty_bins"):
        if getattr(ec, key) < 1:
            raise ConfigError(f"config key 'eval.{key}' must be >= 1, got {getattr(ec, key)}")
    if not 0 < ec.coverage_target < 1:
        raise ConfigError(f"config key 'eval.coverage_target' must be in (0, 1), got {ec.coverage_target}")


def _validate_model(cfg: Config) -> None:
    lora = cfg.model.lora
    if lora.r < 0:
        raise ConfigError(f"config key 'model.lora.r' must be >= 0 (0 = full fine-tuning), got {lora.r}")
    if lora.r == 0:
        return  # full fine-tuning: the other LoRA keys are unused
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError(f"config key 'model.lora.dropout' must be in [0, 1), got {lora.dropout}")
    if lora.alpha <= 0:
        raise ConfigError(f"config key 'model.lora.alpha' must be > 0 (0 makes the adapter a no-op), got {lora.alpha}")
    if lora.dropout > 0 and cfg.algo.name == "ppo":
        raise ConfigError("config key 'model.lora.dropout' must be 0 with algo.name=ppo (dropout makes log π_old "
                          "differ from the policy of the first update)")
    if not lora.target_modules:
        raise ConfigError("config key 'model.lora.target_modules' must name at least one module")
    if cfg.learner.zero_stage == 3:
        raise ConfigError("config key 'model.lora.r': LoRA with learner.zero_stage=3 is not supported (the adapter "
                          "is small; use ZeRO 0-2)")


def _validate_trainer(cfg: Config) -> None:
    trainer = cfg.trainer
    if (trainer.best_metric or "").startswith("eval/") and not trainer.eval_every and not trainer.eval_before_after:
        raise ConfigError(f"config key 'trainer.best_metric' is {trainer.best_metric}, a held-out metric, but "
                          f"nothing evaluates during the run: set trainer.eval_every (or trainer.eval_before_after)")


def episodes_per_step(cfg: Config) -> int:
    """problems_per_step × samples_per_problem, × corrections_per_attempt for methods that sample second attempts."""
    n = cfg.rollout.problems_per_step * cfg.rollout.samples_per_problem
    return n * cfg.rollout.corrections_per_attempt if cfg.method.name in method_names("two_attempts") else n


def validate_training(cfg: Config) -> None:
    """Checks that only matter when a learner trains (evaluation may use any dtype); a sweep runs them on every run
    before starting any."""
    n, parts = episodes_per_step(cfg), cfg.learner.num_ranks
    by = f"learner.num_ranks = {parts}"
    if cfg.algo.name == "ppo":
        parts *= cfg.algo.ppo.minibatches
        by = f"learner.num_ranks * algo.ppo.minibatches = {parts}"
    if n % parts:
        raise ConfigError(f"the step's {n} episodes (rollout.problems_per_step * rollout.samples_per_problem * "
                          f"rollout.corrections_per_attempt) must be divisible by {by}")
    if cfg.trainer.off_policy_steps not in (0, 1):
        raise ConfigError(f"config key 'trainer.off_policy_steps' must be 0 or 1, got {cfg.trainer.off_policy_steps}")
    method = METHODS[cfg.method.name]
    if cfg.trainer.off_policy_steps and method.trains and (cfg.algo.name != "reinforce" or not method.policy_gradient):
        what = f"algo.name={cfg.algo.name}" if cfg.algo.name != "reinforce" else f"method.name={cfg.method.name}"
        raise ConfigError(f"config key 'trainer.off_policy_steps': 1 (one-step off-policy overlap) needs "
                          f"algo.name=reinforce and a method that samples its batch with a policy-gradient loss "
                          f"({', '.join(method_names('policy_gradient'))}), got {what}")
    if cfg.trainer.max_bad_steps and cfg.algo.name == "ppo":
        # PPO's step is several updates: a bad minibatch after finite ones leaves the learner moved, so such a step
        # cannot be skipped whole; PPO stops at the first bad minibatch instead
        raise ConfigError("config key 'trainer.max_bad_steps': skipping bad steps needs algo.name=reinforce (a PPO "
                          "step is several updates and cannot be skipped whole); PPO stops at the first (0)")
    if cfg.model.dtype == "float16" and cfg.learner.zero_stage == 0:
        # DeepSpeed 0.19 wraps a client optimizer in its fp16 optimizer, which unscales gradients that ZeRO 0 never
        # scaled: the update would be the gradient / 65536, silently
        raise ConfigError("config key 'model.dtype': training in float16 needs learner.zero_stage >= 1 (with ZeRO 0 "
                          "DeepSpeed's loss scaling shrinks every update); use bfloat16, or set learner.zero_stage=1")
