"""The SCoRe training loop: rollout → shape → advantages → learn → sync → log → checkpoint.

``method.name`` picks what a step trains on (score_rl/algos/methods.py): SCoRe's shaped two-attempt episodes,
single-turn RL's one-attempt episodes, STaR's filtered traces, Pair-SFT's fixed pairs — or nothing (Self-Refine).
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from score_rl.algos import methods
from score_rl.train.algorithms import make_algorithm
from score_rl.train.base_model import resolve_model_path
from score_rl.train.checkpoint import (CheckpointError, has_checkpoint, resumable_checkpoints, save_checkpoint,
                                      writable_problem)
from score_rl.train.signals import StopRequest, TrainingStopped
from score_rl.config import (Config, ConfigError, check_resume_config, episodes_per_step, save_config,
                             saved_config_tree, validate_training)
from score_rl.launch.distributed import ActorGroup, check_run_dir_is_kept, init_ray, make_placement_group, shard
from score_rl.launch.faults import TrainingAborted, dead_member, death_reason, wait_alive
from score_rl.launch.resources import joined_cluster_cpus, plan_cpus, resolve_dtype
from score_rl.envs import Problem, make_env
from score_rl.episode import Episode
from score_rl.eval.evaluation import TRAINED_MARKER, EvalInterrupted, eval_problems, run_eval_episodes
from score_rl.learner.learner import Learner
from score_rl.eval.metrics import format_table, self_correction_metrics
from score_rl.rollout.worker import RolloutWorker, check_engine_installed, run_sharded
from score_rl.train.run_log import RunLogger
from score_rl.shaping import shape_episodes, stage_at
from score_rl.utils import dumps_json, nan_for_none, seed_everything
from score_rl.launch.weight_sync import make_weight_sync

PENDING_FILE = "pending_batch.json"  # in a checkpoint: the batch sampled ahead of its step (off-policy)


class ProblemSampler:
    """Shuffled passes over the train split; its position is part of the checkpoint (exact resume)."""

    def __init__(self, problems: Sequence[Problem], seed: int):
        self.problems, self.seed = list(problems), seed
        self.epoch, self.position = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> List[int]:
        order = list(range(len(self.problems)))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def next(self, n: int) -> List[Problem]:
        batch = []
        while len(batch) < n:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffle()
            batch.append(self.problems[self._order[self.position]])
            self.position += 1
        return batch

    def state(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load(self, state: Dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._shuffle()


class RunDirLock:
    """An exclusive, non-blocking lock on ``run_dir/.lock`` for a trainer's lifetime: two processes never train into
    the same run directory (a sweep re-run while an earlier one's runs still train, a SLURM array submitted twice).
    The OS drops it when the process dies (on NFSv3, a crashed node's lock may outlive it until the server reclaims
    it). Where the filesystem has no locking (e.g. Lustre mounted without flock) it warns and goes on unlocked."""

    def __init__(self, run_dir: Path, log=print):
        import fcntl
        import os

        self.path = Path(run_dir) / ".lock"
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            raise ConfigError(f"run directory {run_dir} is in use by another score-rl process (pid {holder})") from None
        except OSError as err:
            log(f"warning: cannot lock {self.path} ({err.strerror}); nothing stops a second process training here")
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing the file releases the lock

    @staticmethod
    def held(run_dir: Path) -> bool:
        """Whether another process holds the lock (False where locking is unsupported)."""
        import fcntl

        path = Path(run_dir) / ".lock"
        if not path.is_file():
            return False
        with open(path, "a") as f:  # opened for writing: NFS emulates flock with fcntl locks, which need it
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            except OSError:
                return False
            fcntl.flock(f, fcntl.LOCK_UN)
        return False


class Trainer:
    def __init__(self, cfg: Config, log=print, stop: Optional[StopRequest] = None):
        self.cfg, self.log = cfg, log
        tc = cfg.trainer
        validate_training(cfg)
        check_engine_installed(cfg)
        self.episodes_per_step = episodes_per_step(cfg)  # × corrections_per_attempt for two-attempt methods
        self.algorithm = make_algorithm(cfg)  # algo.name: reinforce or ppo (score_rl/train/algorithms.py)
        self.model_path = resolve_model_path(cfg, log=log)
        if cfg.model.lora.r > 0:  # here, not inside a learner actor, so that it is one line
            from transformers import AutoConfig

            from score_rl.learner.learner import check_lora_targets

            check_lora_targets(cfg.model.lora, AutoConfig.from_pretrained(self.model_path))
        check_run_dir_is_kept(tc.run_dir)  # a relative run_dir inside a Ray job's temporary working_dir copy: refused
        self.run_dir = Path(tc.run_dir)
        self.created_run_dir = not self.run_dir.exists()  # removed again if the start fails (no junk run dirs)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"config key 'trainer.run_dir': cannot create {self.run_dir}: "
                              f"{err.strerror or err}") from None
        problem = writable_problem(self.run_dir)
        if problem:
            raise ConfigError(f"config key 'trainer.run_dir': cannot write in {self.run_dir}: {problem}")
        self.lock = RunDirLock(self.run_dir, log)
        # what the signal handlers set (score-rl train installs them before the trainer is built)
        self.stop = stop if stop is not None else StopRequest()
        self.weights_version = 0  # policy version the rollout workers hold: one more per weight sync
        self.updates = 0  # optimizer steps applied in this run (0: the policy is still the reference model)
        self.best: Optional[Dict] = None  # trainer.best_metric's best so far: {metric, mode, value, step}
        # off_policy_steps=1: the next step's batch, sampled during this one ({step: episodes}); in checkpoints too
        self.pending: Dict[int, List[Episode]] = {}
        self.pending_seconds: Optional[float] = 0.0
        # set while the main thread calls the learner ranks and a rollout runs beside it: a worker recovered in the
        # rollout thread waits for it to clear before fetching weights (ranks must see their calls in one order)
        self.learners_busy = threading.Event()
        try:
            if has_checkpoint(self.run_dir / "checkpoints"):  # a resume: the saved config before it is rewritten
                check_resume_config(cfg, self.run_dir / "config.yaml")
            save_config(cfg, self.run_dir / "config.yaml")
            seed_everything(tc.seed)
            self.method = cfg.method.name
            self.env = make_env(cfg.env, cfg.prompt)
            self.sampler = ProblemSampler(self.env.problems("train"), tc.seed)
            self.eval_set = eval_problems(self.env.problems("test"), tc.eval_problems)
            self.start_step = 0
            # auto CPU settings and dtype resolved for this machine (the saved config.yaml keeps them auto)
            self.cfg, line = plan_cpus(cfg, cluster_cpus=joined_cluster_cpus(cfg))
            self.log(line)
            trained_in = self._resumed_dtype() if self.cfg.model.dtype == "auto" else None
            if trained_in:  # a resumed run keeps the dtype it trained in, whatever this machine would pick
                self.cfg = replace(self.cfg, model=replace(self.cfg.model, dtype=trained_in))
                self.log(f"model.dtype auto: {trained_in} (the dtype the run being resumed trained in)")
            self.cfg, line = resolve_dtype(self.cfg)
            if line:
                self.log(line)
            self._start_actors()
            self.weight_sync = make_weight_sync(cfg.learner)
        except BaseException:
            self.lock.release()  # a failed start must not keep the directory locked in a long-lived process
            self._remove_if_junk()
            raise

    def _start_actors(self) -> None:
        cfg, rc, lc = self.cfg, self.cfg.rollout, self.cfg.learner
        use_ray = cfg.ray.enabled
        pg = None
        worker_res = {"CPU": rc.cpus_per_worker, "GPU": rc.gpus_per_worker}
        learner_res = {"CPU": lc.cpus_per_rank, "GPU": lc.gpus_per_rank}
        if use_ray:
            init_ray(cfg.ray.address, rc.num_workers * rc.cpus_per_worker + lc.num_ranks * lc.cpus_per_rank,
                     rc.num_workers * rc.gpus_per_worker + lc.num_ranks * lc.gpus_per_rank, cfg.ray.num_cpus)
            if self.stop.installed:
                self.stop.install()  # again at once: ray.init replaced the SIGTERM handler (a stack dump and exit)
            bundles = [{k: v for k, v in worker_res.items() if v > 0}] * rc.num_workers + \
                      [{k: v for k, v in learner_res.items() if v > 0}] * lc.num_ranks
            pg = make_placement_group(bundles)
        self.workers = ActorGroup(
            RolloutWorker, [(cfg, self.model_path, i) for i in range(rc.num_workers)], use_ray, worker_res, pg, 0,
            max_restarts=cfg.ray.max_worker_restarts,
        )
        per_rank = self.episodes_per_step // (lc.num_ranks * self.algorithm.minibatches)  # episodes per update
        self.learners = ActorGroup(
            Learner, [(cfg, self.model_path, r, lc.num_ranks, per_rank) for r in range(lc.num_ranks)],
            use_ray, learner_res, pg, rc.num_workers,
        )
        master_addr, master_port = self.learners.call_one(0, "address")
        self.learners.call("setup", None, master_addr, master_port)
        self._say_what_is_off()

    def _say_what_is_off(self) -> None:
        """Once, at start-up: an optimisation switched on in the config that this model cannot use (never a silent
        fallback; metrics.jsonl's shared_prompt_rows shows the shared prompt at work every step)."""
        for name, why in self.learners.call("shared_prompt_fallbacks")[0].items():
            self.log(f"shared prompt: off for the {name} model, {why}; its passes run every row whole "
                     "(learner.share_prompt_prefix)")
        why = self.workers.call_one(0, "kv_cache_reuse_off")
        if why:
            self.log(f"rollout.kv_cache_reuse: off for {why}; turn 2 prefills its whole context")

    def _resumed_dtype(self) -> Optional[str]:
        """The dtype of the run being resumed: its newest checkpoint's record, else its saved config's (runs saved
        before model.dtype auto name theirs there); None for a new run."""
        root = self.run_dir / "checkpoints"
        if not has_checkpoint(root):
            return None
        for ckpt in resumable_checkpoints(root, warn=lambda *_: None):
            try:
                recorded = json.loads((ckpt / "trainer_state.json").read_text()).get("model_dtype")
            except (OSError, ValueError):
                recorded = None
            if recorded:
                return recorded
            break
        try:
            saved = saved_config_tree(self.run_dir / "config.yaml")["model"]["dtype"]
        except Exception:  # noqa: BLE001 - unreadable: check_resume_config has said so already
            return None
        return saved if saved != "auto" else None

    # --- the algorithm -------------------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Dict[str, float]]:
        """Train (resuming from the run's newest intact checkpoint), then evaluate. TrainingStopped on a stop signal
        (a checkpoint of the steps done is written first), TrainingAborted when a learner rank dies."""
        from ray.exceptions import RayActorError

        try:
            return self._fit()
        except RayActorError as err:
            raise self._aborted(err) from None
        except BaseException:
            self._remove_if_junk()
            raise

    def _fit(self) -> Dict[str, Dict[str, float]]:
        cfg, tc = self.cfg, self.cfg.trainer
        if self.method == "pair_sft":
            self.pairs = self.collect_pairs()  # from the base model: before a resume loads trained weights
        self._maybe_resume()
        steps = 0 if self.method == "self_refine" else tc.steps  # Self-Refine: prompting only
        if self.stop.requested:  # a signal during start-up (model loading, actors, Pair-SFT's pairs, the resume)
            raise TrainingStopped(self.stop.signum, self._stopped_message(self.start_step, steps))
        results: Dict[str, Dict[str, float]] = {}
        if tc.eval_before_after and self.start_step == 0:
            try:
                results["base"] = self.evaluate()
            except EvalInterrupted:
                raise TrainingStopped(self.stop.signum, self._stopped_message(0, steps)) from None
            (self.run_dir / "eval_base.json").write_text(dumps_json(results["base"], indent=2))
            self.log("base model (held-out, greedy):\n" + format_table({"base": results["base"]}))
        logger = RunLogger(self.run_dir, steps, min(self.start_step, steps), tc.progress_bar, tc.progress_interval_s,
                           cfg.logging, saved_config_tree(self.run_dir / "config.yaml"), print_fn=self.log)
        saved_step = self.done_step = self.start_step
        try:
            for step in range(self.start_step, steps):
                if self.stop.requested:
                    break
                metrics = self.train_step(step)
                # eval_every: at the last step too when there is no final evaluation to stand for it
                if tc.eval_every and (step + 1) % tc.eval_every == 0 and (step + 1 < steps or not tc.eval_before_after):
                    try:  # the last step's is not interrupted: no later evaluation would stand for it
                        metrics.update({f"eval/{k}": v for k, v in self.evaluate(step + 1 < steps).items()})
                    except EvalInterrupted:  # a stop signal: the step is logged and checkpointed without its eval
                        self.log(f"the evaluation after step {step + 1} was interrupted by {self.stop.name}; not logged")
                logger.log(step, metrics)
                self._maybe_save_best(step + 1, metrics)
                if (tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0) or step + 1 == steps:
                    self.save_checkpoint(step + 1)
                    saved_step = step + 1
                self.done_step = step + 1
        finally:
            logger.close()
        done = self.done_step
        if self.stop.requested and done < steps:
            if done > saved_step:
                self.save_checkpoint(done)
            raise TrainingStopped(self.stop.signum, self._stopped_message(done, steps))
        self.save_final(steps)
        skipped = steps - self.updates
        if skipped > 0:  # said at the end of every run, resumed or not (Self-Refine trains 0 steps)
            self.log(f"{skipped} of {steps} steps made no optimizer step (no learning signal, or nothing kept)"
                     + ("; warning: the policy was never updated: final/ is the base model" if not self.updates
                        else ""))
        if self.stop.requested:
            raise TrainingStopped(self.stop.signum, self._final_eval_skipped(steps))
        if tc.eval_before_after:
            try:
                results["trained"] = results["base"] if self.method == "self_refine" and "base" in results \
                    else self.evaluate()
            except EvalInterrupted:
                raise TrainingStopped(self.stop.signum, self._final_eval_skipped(steps)) from None
            self._maybe_save_best(steps, {f"eval/{k}": v for k, v in results["trained"].items()})
            if "base" not in results:
                results["base"] = self._base_results()
            table = format_table({"base": results["base"], "trained": results["trained"]})
            self.log(f"held-out problems: {len(self.eval_set)} (greedy)\n{table}")
            (self.run_dir / "eval_before_after.json").write_text(dumps_json(results, indent=2))
            (self.run_dir / "eval_before_after.md").write_text(table + "\n")
        # the last thing a run writes: a sweep counts the run finished only from here on
        (self.run_dir / "run_complete.json").write_text(dumps_json(
            {"method": self.method, "steps": steps, "seed": cfg.trainer.seed, "updates": self.updates,
             "evaluated": cfg.trainer.eval_before_after}, indent=2))
        self.lock.release()
        return results

    def train_step(self, step: int) -> Dict[str, float]:
        """One step: rollout → shape → learn → sync; the step's metrics.

        trainer.off_policy_steps=1: the batch of step t+1 is sampled (by the policy the workers hold: the one before
        step t's update) while step t shapes and learns, in a driver thread on Ray, so rollout and learning overlap;
        in-process it is sampled at the same point, one after the other, so both give the same batches. The learner
        importance-weights the stale batch (algo.is_clip). time/rollout is the rollout's own duration, time/rollout_wait
        how long the step waited for it, time/step the whole step."""
        timings: Dict[str, float] = {}
        start = time.perf_counter()
        episodes = self.pending.pop(step, None)  # sampled during the previous step (off-policy) or restored
        if episodes is None:
            with _timed(timings, "rollout"):
                episodes = self.step_episodes(step)
        elif self.pending_seconds is not None:  # None: restored from a checkpoint that did not record it
            timings["rollout"] = self.pending_seconds
        self.pending.clear()
        following = None
        if self.cfg.trainer.off_policy_steps and step + 1 < self.cfg.trainer.steps:
            self.learners_busy.set()
            following = _Background(lambda: self.step_episodes(step + 1), threaded=self.workers.use_ray)
        try:
            with _timed(timings, "shape"):
                stage, extra = self.prepare(episodes, step)
            with _timed(timings, "learn"):  # {} when nothing is trained (a STaR batch without a kept trace)
                stats = {} if extra.get("update_skipped") else self.algorithm.update(self.learners, episodes, step)
        except Exception as err:
            from ray.exceptions import RayActorError

            # an error of the step's own: the rollout thread finishes before it propagates, so no thread is left
            # driving the workers. Not for a dead learner (the run aborts) or a second Ctrl-C (it stops at once).
            if following is not None and not isinstance(err, RayActorError):
                self.learners_busy.clear()
                following.wait()
            raise
        finally:
            self.learners_busy.clear()  # a worker recovered in the rollout thread may now fetch the weights
        if following is not None:
            with _timed(timings, "rollout_wait"):
                self.pending = {step + 1: following.result()}
            self.pending_seconds = following.seconds
        with _timed(timings, "sync"):
            if stats:
                self.updates += 1
                self.push_weights()
        timings["step"] = time.perf_counter() - start
        return {**self.step_metrics(episodes, stage, stats, timings), **extra}

    def _stopped_message(self, done: int, steps: int) -> str:
        ckpt = self.run_dir / "checkpoints" / f"step_{done:07d}"
        where = f"checkpoint {ckpt}" if done > 0 else "no step was finished, nothing to save"
        if done == self.start_step and done > 0:
            where = f"no step finished since checkpoint {ckpt}"
        return (f"stopped by {self.stop.name} after step {done} of {steps}; {where}; to resume, run the same command "
                f"with trainer.run_dir={self.run_dir.resolve()}")

    def _final_eval_skipped(self, steps: int) -> str:
        return (f"stopped by {self.stop.name} after training all {steps} steps (policy in {self.run_dir / 'final'}); "
                f"the final evaluation was skipped: run the same command with "
                f"trainer.run_dir={self.run_dir.resolve()} to evaluate")

    def _aborted(self, err: BaseException) -> TrainingAborted:
        """A one-line TrainingAborted for an actor that died where it cannot be recovered (a learner rank)."""
        ckpts = self.run_dir / "checkpoints"
        last = next(resumable_checkpoints(ckpts, warn=lambda *_: None), None) if has_checkpoint(ckpts) else None
        resume = (f"resume from {last} by running the same command with trainer.run_dir={self.run_dir.resolve()}"
                  if last else "no checkpoint was written yet (set trainer.checkpoint_every); the run restarts from "
                  "step 0")
        rank = dead_member(self.learners, err)
        worker = dead_member(self.workers, err)
        who = (f"learner rank {rank}" if rank is not None else f"rollout worker {worker}" if worker is not None
               else "a Ray actor")
        return TrainingAborted(f"{who} died ({death_reason(err)}); {resume}")

    def _remove_if_junk(self) -> None:
        """A run directory this process created and in which nothing was computed (no step logged, no checkpoint, no
        evaluation) is removed when the run fails, so that a failed start leaves no junk behind."""
        import shutil

        if not getattr(self, "created_run_dir", False) or not self.run_dir.is_dir():
            return
        metrics = self.run_dir / "metrics.jsonl"
        worth_keeping = (has_checkpoint(self.run_dir / "checkpoints") or (self.run_dir / "eval_base.json").exists()
                         or (metrics.is_file() and metrics.stat().st_size > 0) or (self.run_dir / "final").exists()
                         or (self.run_dir / "pairs.json").exists())
        if not worth_keeping:
            if hasattr(self, "lock"):
                self.lock.release()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # --- rollout workers that die: Ray restarts them, the trainer brings them up to date -----------------------
    def push_weights(self) -> None:
        """The learner's weights to every rollout worker; a worker that dies meanwhile is waited for (Ray restarts it)
        and the push redone. Then every worker records the new policy version."""
        for attempt in range(self.cfg.ray.max_worker_restarts + 1):
            try:
                self.weight_sync.push(self.learners, self.workers)
                break
            except Exception as err:  # noqa: BLE001 - only a rollout worker's death is recovered here
                index = dead_member(self.workers, err)
                if index is None or attempt == self.cfg.ray.max_worker_restarts:
                    raise
                self.log(f"warning: rollout worker {index} died during the weight sync ({death_reason(err)}); "
                         f"waiting for Ray to restart it, then syncing again")
                wait_alive(self.workers, index)
        self.weights_version += 1
        self._set_versions(self.workers)

    def _set_versions(self, group: ActorGroup) -> None:
        try:
            group.call("set_weights_version", None, self.weights_version)
        except Exception as err:  # noqa: BLE001 - a worker that dies here is caught by the next rollout's check
            if dead_member(self.workers, err) is None:
                raise

    def recover_worker(self, index: int, err: BaseException) -> None:
        """A rollout worker died (or came back from a restart with the base weights): wait until Ray has restarted
        it, load the current policy into it; the caller redoes its shard."""
        self.log(f"warning: rollout worker {index} failed ({death_reason(err)}); restarting it with the current "
                 f"policy and redoing its shard")
        wait_alive(self.workers, index)
        one = self.workers.subset([index])
        while self.learners_busy.is_set() and threading.current_thread() is not threading.main_thread():
            time.sleep(0.05)  # the step's update is in flight on the ranks: fetch the weights after it
        if self.weights_version > 0:  # version 0 is the base model, which a restarted worker already holds
            self.weight_sync.push(self.learners, one)
        self._set_versions(one)

    # --- the steps -----------------------------------------------------------------------------------------------
    def step_episodes(self, step: int) -> List[Episode]:
        """The step's batch: sampled from the current policy, or (Pair-SFT) the step's slice of the fixed pairs."""
        if self.method == "pair_sft":
            return self.pair_batch(step)
        num_turns = 1 if self.method == "single_turn_rl" else self.cfg.rollout.num_turns
        return self.rollout(self.sampler.next(self.cfg.rollout.problems_per_step), step, num_turns)

    def rollout(self, problems: Sequence[Problem], step: int, num_turns: int = 2) -> List[Episode]:
        rc = self.cfg.rollout
        seed = self.cfg.trainer.seed * 1_000_003 + step * 1_009
        corrections = rc.corrections_per_attempt if num_turns >= 2 else 1
        return run_sharded(self.workers, problems, rc.samples_per_problem, rc.temperature, seed, num_turns, corrections,
                           weights_version=self.weights_version, recover=self.recover_worker,
                           attempts=self.cfg.ray.max_worker_restarts)

    def prepare(self, episodes: List[Episode], step: int):
        """Per-turn rewards, KL coefficients, advantages and loss masks of the step's method; (stage, extra metrics)."""
        cfg = self.cfg
        if self.method == "star":
            kept = methods.select_star(episodes, cfg.method.star_keep)
            return 0, {"sft_kept": kept / len(episodes)}
        if self.method == "pair_sft":
            return 0, {}
        if self.method == "single_turn_rl":
            stage = 0
            methods.shape_single_turn(episodes, cfg.shaping.beta1)
        else:
            stage = stage_at(step, cfg.shaping)
            shape_episodes(episodes, stage, cfg.shaping)  # Eq. 3 / Eq. 4: per-turn rewards and KL coefficients
        if self.no_learning_signal(episodes, step):
            return stage, {"update_skipped": 1.0}
        kl_penalty = self.reward_kl(episodes) if cfg.algo.kl_in_the_reward() else None
        self.algorithm.advantages(episodes, kl_penalty)  # REINFORCE's group baselines (PPO: GAE, in its update)
        return stage, {"update_skipped": 0.0} if cfg.algo.name == "reinforce" else {}

    def no_learning_signal(self, episodes: Sequence[Episode], step: int) -> bool:
        """True for a REINFORCE step whose rewards give every turn a zero advantage (e.g. every sample of every problem
        wrong) while the policy is still the reference model (no update applied yet): its only gradient is the
        sampler/learner rounding inside the KL terms (~1e-6 per token), which AdamW's normalisation would turn into a
        full-size step. Such a step makes no optimizer step (and skips the reference pass); it logs update_skipped 1.
        Once the policy has moved, the KL to the reference is a real signal and every step updates. PPO always
        updates (its critic learns from any batch); so does algo.skip_no_signal=false."""
        if self.updates or self.cfg.algo.name != "reinforce" or not self.cfg.algo.skip_no_signal:
            return False
        self.algorithm.advantages(episodes, None)  # the rewards' own advantages; overwritten when the step updates
        if any(abs(turn.advantage) > 1e-9 for ep in episodes for turn in ep.turns):
            return False
        self.log(f"step {step}: no learning signal (every turn's advantage is 0 and the policy is still the "
                 f"reference model): no optimizer step")
        return True

    def collect_pairs(self) -> List[Tuple[Episode, Episode]]:
        """Pair-SFT's data, once: first attempts of ``method.pair_sft_problems`` train problems sampled from the base
        model, paired wrong → right within each problem; saved to ``run_dir/pairs.json`` and reloaded from there when
        the run resumes (so a resumed run trains on the very same pairs)."""
        cfg = self.cfg
        saved = self.run_dir / "pairs.json"
        if saved.is_file():
            data = json.loads(saved.read_text())
            self.pair_contexts = data["contexts"]
            return [(methods.episode_from_dict(w), methods.episode_from_dict(r)) for w, r in data["pairs"]]
        problems = ProblemSampler(self.env.problems("train"), cfg.trainer.seed + 7919).next(cfg.method.pair_sft_problems)
        samples = run_sharded(self.workers, problems, cfg.rollout.samples_per_problem, cfg.rollout.temperature,
                              cfg.trainer.seed * 1_000_003 - 1, 1, weights_version=self.weights_version,
                              recover=self.recover_worker, attempts=cfg.ray.max_worker_restarts)
        pairs = methods.pair_sft_pairs(samples, cfg.trainer.seed)
        if not pairs:
            raise ConfigError(f"Pair-SFT found no problem among {len(problems)} with both a wrong and a right sampled "
                              "first attempt; raise method.pair_sft_problems or rollout.samples_per_problem")
        contexts = self.workers.call_one(0, "correction_prompts",
                                         [(w.turns[0].prompt_ids, w.turns[0].response_ids, w.problem_id) for w, _ in pairs])
        self.pair_contexts = contexts
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(dumps_json({"pairs": [[asdict(w), asdict(r)] for w, r in pairs], "contexts": contexts},
                                  default=str))
        tmp.replace(saved)
        self.log(f"Pair-SFT: {len(pairs)} wrong→right pairs from {len(samples)} base-model first attempts "
                 f"of {len(problems)} problems")
        return pairs

    def pair_batch(self, step: int) -> List[Episode]:
        """The step's ``episodes_per_step`` pairs: shuffled passes over the pairs (the ProblemSampler's order), taken
        from the step's position alone, so a resumed run sees exactly the pairs an uninterrupted one would."""
        n, size = len(self.pairs), self.episodes_per_step
        order = ProblemSampler(range(n), self.cfg.trainer.seed)
        order.load({"epoch": step * size // n, "position": step * size % n})
        return [methods.pair_episode(*self.pairs[k], self.pair_contexts[k], i)
                for i, k in enumerate(order.next(size), start=step * size)]

    def reward_kl(self, episodes: Sequence[Episode]) -> List[List[float]]:
        """Per-turn k1 = Σ_tok (log π_old − log π_ref) of every episode; the reference log-probs stay on the turns,
        so the learner does not compute them a second time."""
        shards = shard(episodes, len(self.learners))
        ref = [row for part in self.learners.call("reference_logprobs", [(s,) for s in shards]) for row in part]
        penalties = []
        for ep, ep_ref in zip(episodes, ref):
            for turn, turn_ref in zip(ep.turns, ep_ref):
                turn.ref_logprobs = turn_ref
            penalties.append([sum(t.sampling_logprobs) - sum(t.ref_logprobs) for t in ep.turns])
        return penalties

    def step_metrics(self, episodes, stage, stats, timings) -> Dict[str, float]:
        m: Dict[str, float] = {"stage": stage}
        # Pair-SFT's batches are fixed pairs (attempt 1 wrong, attempt 2 right by construction), not samples of the
        # policy: their accuracies would say nothing about it, so only the learner's statistics are logged
        if self.method != "pair_sft":
            m.update(self_correction_metrics(episodes))
            for t in range(1, len(episodes[0].turns) + 1):
                m[f"reward_t{t}"] = sum(ep.turns[t - 1].shaped_reward for ep in episodes) / len(episodes)
                m[f"truncated_t{t}"] = sum(ep.turns[t - 1].truncated for ep in episodes) / len(episodes)
        m.update(stats)
        m.update({f"time/{k}": v for k, v in timings.items()})
        return m

    def evaluate(self, interruptible: bool = True) -> Dict[str, float]:
        """The held-out evaluation of the current policy; EvalInterrupted between chunks once a stop signal came (a
        dead or quietly restarted worker is brought up to date and its chunk redone, as in training)."""
        episodes = run_eval_episodes(self.workers, self.eval_set, self.cfg.trainer.seed, self.cfg.rollout.num_turns,
                                     self.cfg.eval.temperature, progress="held-out eval",
                                     weights_version=self.weights_version, recover=self.recover_worker,
                                     attempts=self.cfg.ray.max_worker_restarts,
                                     should_stop=(lambda: self.stop.requested) if interruptible else None)
        return self_correction_metrics(episodes)

    def _base_results(self) -> Dict[str, float]:
        """Base-model metrics when the start-of-run evaluation happened in an earlier (resumed) process."""
        from score_rl.eval.evaluation import evaluate_models

        saved = self.run_dir / "eval_base.json"
        if saved.is_file():
            return nan_for_none(json.loads(saved.read_text()))
        # its actors reserve no CPU: the run's placement group may hold all of them, and the run's own actors are idle
        # meanwhile (the final evaluation); the thread counts stay the plan's
        cfg = replace(self.cfg, rollout=replace(self.cfg.rollout, cpus_per_worker=0.0))
        report = evaluate_models(cfg, [("base", self.model_path)], log=lambda *_: None)
        return next(iter(report.metrics.values()))

    def close(self) -> None:
        """Release environment pools held by in-process workers (Ray actors release theirs when they exit)."""
        if not self.workers.use_ray:
            for worker in self.workers.members:
                worker.env.close()
        self.env.close()
        self.lock.release()

    # --- persistence ---------------------------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> None:
        state = {"step": step, "sampler": self.sampler.state(), "model_path": self.model_path, "best": self.best,
                 "updates": self.updates,
                 "model_dtype": self.cfg.model.dtype}  # what model.dtype auto chose: a resume keeps it
        pending = self.pending.get(step)  # off-policy: the next batch was sampled (the sampler advanced) before it

        def save(directory: str, tag: str) -> None:
            self.learners.call("save_checkpoint", None, directory, tag)
            if pending is not None:  # compact: a batch of episodes with per-token log-probs
                (Path(directory) / PENDING_FILE).write_text(dumps_json(
                    {"rollout_seconds": self.pending_seconds, "episodes": [asdict(ep) for ep in pending]},
                    separators=(",", ":")))
            if self.best is not None and (self.run_dir / "best").is_dir():  # the best policy as of this step
                _link_tree(self.run_dir / "best", Path(directory) / "best")

        save_checkpoint(self.run_dir / "checkpoints", step, state, save, keep=self.cfg.trainer.keep_checkpoints)

    def _maybe_resume(self) -> None:
        """Load the newest intact checkpoint; a damaged one (missing / truncated files, a learner state that fails to
        load) is skipped with a warning for the one before it."""
        root = self.run_dir / "checkpoints"
        if not has_checkpoint(root):
            return
        ckpt = None
        for candidate in resumable_checkpoints(root, warn=self.log):
            try:
                state = json.loads((candidate / "trainer_state.json").read_text())
                pending = json.loads((candidate / PENDING_FILE).read_text()) \
                    if (candidate / PENDING_FILE).is_file() else None
                self.learners.call("load_checkpoint", None, str(candidate), "learner")
            except Exception as err:  # noqa: BLE001 - any failure to load is damage (Ray wraps the learner's error)
                from ray.exceptions import RayActorError

                if isinstance(err, RayActorError):  # a dead learner is not a damaged checkpoint
                    raise
                if "has no critic" in str(err):  # not damage: a run of another algorithm
                    raise ConfigError(str(err).strip().splitlines()[-1]) from None
                self.log(f"warning: checkpoint {candidate} could not be loaded ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[-1][:200] if str(err).strip() else ''}); trying the "
                         f"previous one")
                continue
            ckpt = candidate
            break
        if ckpt is None:
            raise CheckpointError(f"no checkpoint in {root} could be loaded (warnings above); move the run directory "
                                  f"away to start over")
        self.sampler.load(state["sampler"])
        self.start_step = state["step"]
        self.updates = state.get("updates", self.start_step)  # older checkpoints: every step counted as an update
        if pending is not None:  # the batch an uninterrupted off-policy run would train next
            self.pending = {self.start_step: [methods.episode_from_dict(ep) for ep in pending["episodes"]]}
            self.pending_seconds = pending["rollout_seconds"]
        elif state.get("pending"):  # written by earlier versions, inside trainer_state.json, without its time
            self.pending = {self.start_step: [methods.episode_from_dict(ep) for ep in state["pending"]]}
            self.pending_seconds = None
        self._restore_best(ckpt, state)
        self.push_weights()
        self.log(f"resumed from {ckpt} at step {self.start_step}")
        if self.start_step > self.cfg.trainer.steps:
            raise ConfigError(f"config key 'trainer.steps': {self.cfg.trainer.steps} is below the checkpoint's step "
                              f"{self.start_step} in {ckpt}; a run cannot be shortened after the fact")
        if self.start_step == self.cfg.trainer.steps:
            self.log(f"checkpoint step {self.start_step} = trainer.steps: nothing left to train")

    def save_final(self, steps: int) -> None:
        out = self.run_dir / "final"
        self._save_policy(out, str(self.run_dir / "final_critic"), {"steps": steps})
        self.log(f"final policy saved to {out}")

    def _save_policy(self, out: Path, critic_dir: Optional[str], info: Dict) -> None:
        """A Hugging Face model directory (``score-rl eval`` loads it), written to a temporary directory and renamed
        into place."""
        import shutil

        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.learners.call("save_pretrained", None, str(tmp), critic_dir)
        (tmp / TRAINED_MARKER).write_text(dumps_json(
            {"base_model": self.model_path, "run_dir": str(self.run_dir), "method": self.method, **info}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)

    # --- the best policy by trainer.best_metric (the paper keeps the checkpoint of the highest training reward) ----
    def _restore_best(self, ckpt: Path, state: Dict) -> None:
        """The best policy as of the resumed checkpoint: its value from trainer_state.json, its weights from the
        checkpoint's hard-linked copy (a best found after the checkpoint belongs to the steps that are redone)."""
        import shutil

        best_dir = self.run_dir / "best"
        if "best" not in state:  # a checkpoint written before the best was recorded in it: keep an earlier best
            saved = best_dir / "best.json"
            earlier = json.loads(saved.read_text()) if saved.is_file() else None
            self.best = earlier if earlier and earlier.get("step", 0) <= self.start_step else None
            if self.best is None and best_dir.is_dir():
                shutil.rmtree(best_dir)
            return
        self.best = state["best"]
        if self.best is not None and (ckpt / "best").is_dir():
            tmp = self.run_dir / ".best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            _link_tree(ckpt / "best", tmp)
            shutil.rmtree(best_dir, ignore_errors=True)
            tmp.replace(best_dir)
        elif self.best is None and best_dir.is_dir():
            shutil.rmtree(best_dir)  # found only after the checkpoint

    def _maybe_save_best(self, step: int, metrics: Dict[str, float]) -> None:
        key, mode = self.cfg.trainer.best_metric, self.cfg.trainer.best_mode
        if not key:
            return
        if self.best is not None and (self.best.get("metric"), self.best.get("mode")) != (key, mode):
            self.best = None  # recorded under another best_metric / best_mode (allow_config_change)
        if key in metrics:
            self._best_seen = True
        # a step without an update logs no learner statistics: not a miss
        missed = key not in metrics and not metrics.get("update_skipped")
        self._best_misses = getattr(self, "_best_misses", 0) + missed
        # said once, after 3 steps without it (a step may lack learner statistics, e.g. STaR with nothing kept)
        if not key.startswith("eval/") and not getattr(self, "_best_seen", False) and self._best_misses == 3:
            self.log(f"warning: config key 'trainer.best_metric' is {key!r}, which this run does not log; no best "
                     f"policy is kept. Logged: {', '.join(sorted(k for k in metrics if not k.startswith('time/')))}")
        if key not in metrics or metrics[key] is None or not math.isfinite(metrics[key]):  # absent / NaN / ±inf
            return
        value = float(metrics[key])
        if self.best is not None and not (value > self.best["value"] if mode == "max" else value < self.best["value"]):
            return
        self.best = {"metric": key, "mode": mode, "value": value, "step": step}
        self._save_policy(self.run_dir / "best", None, {"steps": step, "best": self.best})
        (self.run_dir / "best" / "best.json").write_text(dumps_json(self.best, indent=2))


def _link_tree(src: Path, dst: Path) -> None:
    """A copy of the directory ``src`` at ``dst`` made of hard links (no bytes copied; ``src``'s files are later
    replaced, never rewritten in place), or of real copies where hard links are not possible."""
    import os
    import shutil

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


class _Background:
    """``fn()`` in a thread (``threaded``; Ray calls release the GIL while the actors work), else at once; ``result()``
    returns its value or raises its exception, ``seconds`` is how long it ran."""

    def __init__(self, fn, threaded: bool):
        import threading

        self.value, self.error, self.seconds = None, None, 0.0

        def run() -> None:
            start = time.perf_counter()
            try:
                self.value = fn()
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread by result()
                self.error = err
            self.seconds = time.perf_counter() - start

        self.thread = threading.Thread(target=run, name="score-rl-rollout", daemon=True) if threaded else None
        if self.thread is not None:
            self.thread.start()
        else:
            run()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()

    def result(self):
        self.wait()
        if self.error is not None:
            raise self.error
        return self.value


@contextmanager
def _timed(timings: Dict[str, float], name: str):
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
