"""The SCoRe training loop. ``fit`` is the run; ``train_step`` is one step of the paper's algorithm:

    1. sample problems, roll out attempt 1, the correction instruction, attempt 2   (Method.batch → RolloutPool)
    2. the stage: Stage I for shaping.stage1_steps steps, then Stage II              (score_rl/shaping.py)
    3. per-turn rewards and KL coefficients of the method (Eq. 3 / Eq. 4)            (score_rl/train/methods.py)
    4. the KL penalty in the reward and per-turn advantages                          (score_rl/train/algorithms.py)
    5. the update on the learner ranks                                               (score_rl/learner/)
    6. the new weights to the rollout workers                                        (score_rl/launch/weight_sync.py)

Around it, each concern has a module: the method's batch and rewards (train/methods.py), the rollout pool and its
recovery (train/rollout_pool.py), off-policy prefetch (train/prefetch.py), the trainer state in checkpoints
(train/state.py), the best policy (train/best.py), start-up (train/startup.py), stop signals (train/signals.py) and the
run directory's files (score_rl/rundir.py).
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from score_rl import rundir, seeds
from score_rl.config import Config, episodes_per_step, save_config, saved_config_tree
from score_rl.envs import Problem, make_env
from score_rl.episode import Episode
from score_rl.eval.evaluation import TRAINED_MARKER, EvalInterrupted, eval_problems, run_eval_episodes
from score_rl.eval.metrics import format_table, self_correction_metrics
from score_rl.launch.resources import joined_cluster_cpus, plan_cpus, resolve_dtype
from score_rl.launch.weight_sync import make_weight_sync
from score_rl.rundir import RunDirLock
from score_rl.train import state as trainer_state
from score_rl.train.algorithms import make_algorithm, reward_kl
from score_rl.train.best import BestPolicy
from score_rl.train.checkpoint import save_checkpoint
from score_rl.train.divergence import BadSteps, raise_if_sampling_diverged
from score_rl.train.methods import make_method
from score_rl.train.prefetch import Prefetch
from score_rl.train.rollout_pool import RolloutPool
from score_rl.train.run_log import RunLogger
from score_rl.train.sampler import ProblemSampler
from score_rl.train.signals import (StopRequest, TrainingStopped, aborted_error, final_eval_skipped_message,
                                   stopped_message)
from score_rl.train.startup import make_run_dir, preflight, say_what_is_off, start_actors
from score_rl.utils import dumps_json, nan_for_none, seed_everything


class Trainer:
    def __init__(self, cfg: Config, log=print, stop: Optional[StopRequest] = None):
        self.cfg, self.log = cfg, log
        self.stop = stop if stop is not None else StopRequest()  # what the signal handlers set (score-rl train)
        self.episodes_per_step = episodes_per_step(cfg)  # × corrections_per_attempt for two-attempt methods
        self.algorithm = make_algorithm(cfg)  # algo.name: reinforce or ppo (score_rl/train/algorithms.py)
        self.model_path = preflight(cfg, log)
        self.run_dir = Path(cfg.trainer.run_dir)
        self.created_run_dir = make_run_dir(self.run_dir)  # removed again if the start fails (no junk run dirs)
        self.lock = RunDirLock(self.run_dir, log)
        self.updates = 0  # optimizer steps applied in this run (0: the policy is still the reference model)
        self.start_step = self.done_step = self.saved_step = 0
        try:
            self._start()
        except BaseException:
            self.lock.release()  # a failed start must not keep the directory locked in a long-lived process
            self._remove_if_junk()
            raise

    def _start(self) -> None:
        cfg, tc = self.cfg, self.cfg.trainer
        self.run_config = trainer_state.RunConfig(cfg, self.run_dir, self.log)  # a resume: checks the run's config
        save_config(cfg, self.run_dir / rundir.CONFIG)
        seed_everything(tc.seed)
        self.env = make_env(cfg.env, cfg.prompt)
        self.sampler = ProblemSampler(self.env.problems("train"), tc.seed)
        self.eval_set = eval_problems(self.env.problems("test"), tc.eval_problems)
        # auto CPU settings and dtype resolved for this machine (the saved config.yaml keeps them auto)
        self.cfg, line = plan_cpus(cfg, cluster_cpus=joined_cluster_cpus(cfg))
        self.log(line)
        trained_in = trainer_state.resumed_dtype(self.run_dir) if self.cfg.model.dtype == "auto" else None
        if trained_in:  # a resumed run keeps the dtype it trained in, whatever this machine would pick
            self.cfg = replace(self.cfg, model=replace(self.cfg.model, dtype=trained_in))
            self.log(f"model.dtype auto: {trained_in} (the dtype the run being resumed trained in)")
        self.cfg, line = resolve_dtype(self.cfg)
        if line:
            self.log(line)
        self.workers, self.learners = start_actors(self.cfg, self.model_path, self.algorithm.minibatches, self.stop)
        say_what_is_off(self.workers, self.learners, self.log)
        self.weight_sync = make_weight_sync(cfg.learner)
        self.pool = RolloutPool(self.workers, self.learners, self.weight_sync, self.cfg.ray.max_worker_restarts,
                                self.log)
        self.prefetch = Prefetch(lambda step: self.step_episodes(step), threaded=self.workers.use_ray,
                                 learners_busy=self.pool.learners_busy)
        self.best_policy = BestPolicy(self.run_dir, tc.best_metric, tc.best_mode, self._save_policy, self.log)
        self.method = make_method(self.cfg, self)  # method.name: what a step samples and how it is rewarded
        self.bad_steps = BadSteps(tc.max_bad_steps, self.run_dir, self.log, self.cfg.model.dtype)

    # --- the algorithm -------------------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Dict[str, float]]:
        """Train (resuming from the run's newest intact checkpoint), then evaluate. TrainingStopped on a stop signal
        (a checkpoint of the steps done is written first), TrainingAborted when a learner rank dies."""
        from score_rl.launch.faults import actor_died_types

        try:
            return self._fit()
        except actor_died_types() as err:  # a learner rank died: one line naming it and the checkpoint to resume from
            last = trainer_state.newest_checkpoint(self.run_dir)
            raise aborted_error(err, self.learners, self.workers, self.run_dir, last) from None
        except BaseException as err:
            self._remove_if_junk()
            raise_if_sampling_diverged(err, self.done_step, self.cfg.trainer.steps, self.run_dir)  # overflowed policy
            raise

    def _fit(self) -> Dict[str, Dict[str, float]]:
        self.method.start()  # Pair-SFT: its pairs, sampled once from the base model
        self.resume()  # from the newest intact checkpoint, if any
        steps = self.method.steps  # trainer.steps (0: a prompting-only method)
        self.stop_point(self.start_step, steps)  # a stop signal during start-up ends the run here
        results = self.evaluate_base(steps)  # the base model on the held-out problems (a new run)
        with closing(self.logger(steps)) as logger:
            for step in range(self.start_step, steps):
                if self.stop.requested:
                    break
                metrics = self.train_step(step)  # one step of the algorithm
                self.after_step(step, steps, metrics, logger)  # evaluate, log, best policy, checkpoint
        if self.done_step < steps:
            self.stop_point(self.done_step, steps)  # stopped early: a checkpoint of the steps done, then the end
        self.save_final(steps)  # final/: the trained policy
        self.stop_point(steps, steps, trained=True)
        results = self.evaluate_final(results, steps)  # base vs trained on the held-out problems
        self.complete(steps)  # run_complete.json: the run is finished
        return results

    def train_step(self, step: int) -> Dict[str, float]:
        """One step of the algorithm (numbered as in this module's docstring); the step's metrics. time/rollout is the
        rollout's own duration, time/rollout_wait how long the step waited for a prefetched one, time/step the whole
        step."""
        times: Dict[str, float] = {}
        start = time.perf_counter()
        episodes = self.next_batch(step, times)  # 1. problems → y1 → instruction → y2
        if self.cfg.trainer.off_policy_steps and step + 1 < self.cfg.trainer.steps:
            self.prefetch.start(step + 1)  # off-policy: step t+1's batch is sampled while step t learns
        with self.prefetch.learning():
            with _timed(times, "shape"):
                stage, extra = self.method.rewards(episodes, step)  # 2-3. the stage; per-turn rewards (Eq. 3 / 4)
                extra.update(self.advantages(episodes, step))  # 4. the reward's KL penalty; per-turn advantages
            with _timed(times, "learn"):  # 5. the update ({}: nothing trained, e.g. STaR without a kept trace)
                stats = {} if extra.get("update_skipped") else self.algorithm.update(self.learners, episodes, step)
        if self.prefetch.running:
            with _timed(times, "rollout_wait"):
                self.prefetch.finish()
        with _timed(times, "sync"):  # 6. the new policy to the rollout workers (a non-finite update: none)
            if stats and self.bad_steps.applied(step, self.cfg.trainer.steps, stats):
                self.updates += 1
                self.push_weights()
        times["step"] = time.perf_counter() - start
        return {**self.step_metrics(episodes, stage, stats, times), **extra}

    def next_batch(self, step: int, times: Dict[str, float]) -> List[Episode]:
        """The step's episodes: sampled in the previous step (off-policy, or restored from a checkpoint), else now."""
        ready = self.prefetch.take(step)
        if ready is None:
            with _timed(times, "rollout"):
                return self.step_episodes(step)
        episodes, seconds = ready
        if seconds is not None:  # None: restored from a checkpoint that did not record it
            times["rollout"] = seconds
        return episodes

    def step_episodes(self, step: int) -> List[Episode]:
        """The method's batch for ``step`` (sampled from the current policy, or Pair-SFT's slice of its pairs)."""
        return self.method.batch(step)

    def rollout(self, problems: Sequence[Problem], step: int, num_turns: int = 2) -> List[Episode]:
        """``rollout.samples_per_problem`` episodes of ``num_turns`` attempts per problem from the current policy."""
        rc = self.cfg.rollout
        seed = seeds.rollout(self.cfg.trainer.seed, step)
        corrections = rc.corrections_per_attempt if num_turns >= 2 else 1
        return self.pool.sample(problems, rc.samples_per_problem, rc.temperature, seed, num_turns, corrections)

    def advantages(self, episodes: List[Episode], step: int) -> Dict[str, float]:
        """Step 4 for the policy-gradient methods: the k1 KL penalty in the reward (algo.kl_in_reward) and the
        algorithm's advantages; STaR's and Pair-SFT's SFT targets carry advantage 1 already. A REINFORCE step without
        a learning signal while the policy is still the reference model makes no update (update_skipped 1)."""
        if not self.method.spec.policy_gradient:
            return {}
        if not self.updates and self.algorithm.no_signal(episodes):
            self.log(f"step {step}: no learning signal (every turn's advantage is 0 and the policy is still the "
                     f"reference model): no optimizer step")
            return {"update_skipped": 1.0}
        kl_penalty = reward_kl(self.learners, episodes) if self.cfg.algo.uses_reward_kl() else None
        self.algorithm.advantages(episodes, kl_penalty)  # REINFORCE's group baselines (PPO: GAE, in its update)
        return {"update_skipped": 0.0} if self.cfg.algo.name == "reinforce" else {}

    def push_weights(self) -> None:
        self.pool.push_weights()

    def logger(self, steps: int) -> RunLogger:
        """metrics.jsonl, TensorBoard, W&B and the progress bar, from the step the run starts at."""
        tc = self.cfg.trainer
        return RunLogger(self.run_dir, steps, min(self.start_step, steps), tc.progress_bar, tc.progress_interval_s,
                         self.cfg.logging, saved_config_tree(self.run_dir / rundir.CONFIG), print_fn=self.log)

    def after_step(self, step: int, steps: int, metrics: Dict[str, float], logger: RunLogger) -> None:
        """Evaluate (trainer.eval_every), log, keep the best policy, checkpoint (trainer.checkpoint_every, last)."""
        tc, done = self.cfg.trainer, step + 1
        # eval_every: at the last step too when there is no final evaluation to stand for it
        if tc.eval_every and done % tc.eval_every == 0 and (done < steps or not tc.eval_before_after):
            try:  # the last step's is not interrupted: no later evaluation would stand for it
                metrics.update({f"eval/{k}": v for k, v in self.evaluate(done < steps).items()})
            except EvalInterrupted:  # a stop signal: the step is logged and checkpointed without its eval
                self.log(f"the evaluation after step {done} was interrupted by {self.stop.name}; not logged")
        logger.log(step, metrics)
        self.best_policy.update(done, metrics)
        if (tc.checkpoint_every and done % tc.checkpoint_every == 0) or done == steps:
            self.save_checkpoint(done)
        self.done_step = done

    def stop_point(self, done: int, steps: int, trained: bool = False) -> None:
        """Where a stop signal ends the run: TrainingStopped with the line to print, after a checkpoint of the steps
        done since the last one. ``trained``: every step is done and final/ saved; the final evaluation is left."""
        if not self.stop.requested:
            return
        if trained:
            raise TrainingStopped(self.stop.signum, final_eval_skipped_message(self.stop.name, self.run_dir, steps))
        if done > self.saved_step:
            self.save_checkpoint(done)
        raise TrainingStopped(self.stop.signum, stopped_message(self.stop.name, self.run_dir, done, steps,
                                                                self.start_step))

    def complete(self, steps: int) -> None:
        """The run's last write: a sweep, the SLURM script and a re-run count it finished from here on."""
        rundir.write_complete(self.run_dir, {"method": self.cfg.method.name, "steps": steps,
                                             "seed": self.cfg.trainer.seed, "updates": self.updates,
                                             "evaluated": self.cfg.trainer.eval_before_after})
        self.lock.release()

    # --- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self, interruptible: bool = True) -> Dict[str, float]:
        """The held-out evaluation of the current policy; EvalInterrupted between chunks once a stop signal came (a
        dead or quietly restarted worker is brought up to date and its chunk redone, as in training)."""
        episodes = run_eval_episodes(self.workers, self.eval_set, self.cfg.trainer.seed, self.cfg.rollout.num_turns,
                                     self.cfg.eval.temperature, progress="held-out eval",
                                     weights_version=self.pool.version, recover=self.pool.recover,
                                     attempts=self.cfg.ray.max_worker_restarts,
                                     should_stop=(lambda: self.stop.requested) if interruptible else None)
        return self_correction_metrics(episodes)

    def evaluate_base(self, steps: int) -> Dict[str, Dict[str, float]]:
        """{"base": metrics}: the start-of-run evaluation of the base model (saved: a resumed run reads it back); {}
        for a resumed run or without trainer.eval_before_after."""
        if not self.cfg.trainer.eval_before_after or self.start_step:
            return {}
        try:
            base = self.evaluate()
        except EvalInterrupted:  # (only once a stop signal came)
            self.stop_point(0, steps)
            raise
        (self.run_dir / rundir.EVAL_BASE).write_text(dumps_json(base, indent=2))
        self.log("base model (held-out, greedy):\n" + format_table({"base": base}))
        return {"base": base}

    def evaluate_final(self, results: Dict[str, Dict[str, float]], steps: int) -> Dict[str, Dict[str, float]]:
        """The trained policy on the held-out problems beside the base model (trainer.eval_before_after)."""
        if not self.cfg.trainer.eval_before_after:
            return results
        try:  # a method that trains nothing is its base model
            results["trained"] = results["base"] if not self.method.spec.trains and "base" in results \
                else self.evaluate()
        except EvalInterrupted:  # (only once a stop signal came)
            self.stop_point(steps, steps, trained=True)
            raise
        self.best_policy.update(steps, {f"eval/{k}": v for k, v in results["trained"].items()})
        if "base" not in results:
            results["base"] = self._base_results()
        table = format_table({"base": results["base"], "trained": results["trained"]})
        self.log(f"held-out problems: {len(self.eval_set)} (greedy)\n{table}")
        (self.run_dir / rundir.EVAL_BEFORE_AFTER).write_text(dumps_json(results, indent=2))
        (self.run_dir / rundir.EVAL_TABLE).write_text(table + "\n")
        return results

    def _base_results(self) -> Dict[str, float]:
        """Base-model metrics when the start-of-run evaluation happened in an earlier (resumed) process."""
        from score_rl.eval.evaluation import evaluate_models

        saved = self.run_dir / rundir.EVAL_BASE
        if saved.is_file():
            return nan_for_none(json.loads(saved.read_text()))
        # its actors reserve no CPU: the run's placement group may hold all of them, and the run's own actors are idle
        # meanwhile (the final evaluation); the thread counts stay the plan's
        cfg = replace(self.cfg, rollout=replace(self.cfg.rollout, cpus_per_worker=0.0))
        report = evaluate_models(cfg, [("base", self.model_path)], log=lambda *_: None)
        return next(iter(report.metrics.values()))

    def step_metrics(self, episodes, stage, stats, timings) -> Dict[str, float]:
        m: Dict[str, float] = {"stage": stage}
        if self.method.samples_policy:  # (Pair-SFT's fixed pairs say nothing about the policy: learner stats only)
            m.update(self_correction_metrics(episodes))
            for t in range(1, len(episodes[0].turns) + 1):
                m[f"reward_t{t}"] = sum(ep.turns[t - 1].shaped_reward for ep in episodes) / len(episodes)
                m[f"truncated_t{t}"] = sum(ep.turns[t - 1].truncated for ep in episodes) / len(episodes)
        m.update(stats)
        m.update({f"time/{k}": v for k, v in timings.items()})
        return m

    # --- persistence ---------------------------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> None:
        state = trainer_state.state_of(step, self.sampler.state(), self.model_path, self.best, self.updates,
                                       self.cfg.model.dtype, self.run_config.tree, self.bad_steps.in_a_row)
        ready = self.prefetch.ready  # off-policy: the next batch was sampled (the sampler advanced) before it

        def save(directory: str, tag: str) -> None:
            self.learners.call("save_checkpoint", None, directory, tag)
            if ready is not None and ready[0] == step:  # compact: a batch of episodes with per-token log-probs
                trainer_state.write_pending(Path(directory), trainer_state.Pending(*ready))
            self.best_policy.link_into(Path(directory))  # the best policy as of this step

        save_checkpoint(self.run_dir / rundir.CHECKPOINTS, step, state, save, keep=self.cfg.trainer.keep_checkpoints)
        self.saved_step = step

    def resume(self) -> None:
        """Load the newest intact checkpoint (trainer state, learner ranks, pending batch, best policy) and push its
        weights to the rollout workers; a damaged one is skipped with a warning for the one before it."""
        found = trainer_state.load_newest(self.run_dir, lambda path: self.learners.call(
            "load_checkpoint", None, path, "learner"), self.log, self.run_config.check)
        if found is None:
            return
        self.sampler.load(found.state["sampler"])
        self.start_step = self.done_step = self.saved_step = found.step
        self.updates, self.bad_steps.in_a_row = found.updates, found.state.get("bad_steps_in_a_row", 0)
        if found.pending is not None:  # the batch an uninterrupted off-policy run would train next
            self.prefetch.restore(found.pending.step, found.pending.episodes, found.pending.seconds)
        self.best_policy.restore(found.path, found.state)
        self.push_weights()
        self.log(f"resumed from {found.path} at step {self.start_step}")
        if self.start_step > self.cfg.trainer.steps:
            from score_rl.errors import ConfigError

            raise ConfigError(f"config key 'trainer.steps': {self.cfg.trainer.steps} is below the checkpoint's step "
                              f"{self.start_step} in {found.path}; a run cannot be shortened after the fact")
        if self.start_step == self.cfg.trainer.steps:
            self.log(f"checkpoint step {self.start_step} = trainer.steps: nothing left to train")

    def save_final(self, steps: int) -> None:
        out = self.run_dir / rundir.FINAL
        self._save_policy(out, {"steps": steps}, str(self.run_dir / rundir.FINAL_CRITIC))
        self.log(f"final policy saved to {out}")
        skipped = steps - self.updates
        if skipped > 0:  # said at the end of every run, resumed or not (Self-Refine trains 0 steps)
            self.log(f"{skipped} of {steps} steps made no optimizer step (no learning signal, or nothing kept)"
                     + ("; warning: the policy was never updated: final/ is the base model" if not self.updates
                        else ""))

    def _save_policy(self, out: Path, info: Dict, critic_dir: Optional[str] = None) -> None:
        """A Hugging Face model directory (``score-rl eval`` loads it), written to a temporary directory and renamed
        into place."""
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.learners.call("save_pretrained", None, str(tmp), critic_dir)
        (tmp / TRAINED_MARKER).write_text(dumps_json(
            {"base_model": self.model_path, "run_dir": str(self.run_dir), "method": self.cfg.method.name, **info},
            indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)

    @property
    def best(self) -> Optional[Dict]:
        """trainer.best_metric's best so far: {metric, mode, value, step}."""
        return self.best_policy.value

    @property
    def weights_version(self) -> int:
        """The policy version the rollout workers hold: one more per weight sync."""
        return self.pool.version

    # --- the end of a run ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release in-process workers' environment pools and learners' DeepSpeed engines (Ray actors free theirs)."""
        if not self.workers.use_ray:  # (learners in-process too: ray.enabled decides both)
            for worker in self.workers.members:
                worker.env.close()
            self.learners.call("close")
        self.env.close()
        self.lock.release()

    def _remove_if_junk(self) -> None:
        """A run directory this process created and in which nothing was computed is removed when the run fails."""
        if getattr(self, "created_run_dir", False) and self.run_dir.is_dir() and not rundir.worth_keeping(self.run_dir):
            if hasattr(self, "lock"):
                self.lock.release()
            shutil.rmtree(self.run_dir, ignore_errors=True)


@contextmanager
def _timed(timings: Dict[str, float], name: str):
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
