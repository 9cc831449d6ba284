"""The policy of slurm/score_rl.sbatch: what a job runs, where its run lives, when it is requeued.

The sbatch script keeps what must be shell (``#SBATCH`` directives, traps, ``srun`` steps, ``scontrol requeue``) and
asks this module the rest, as ``python -m score_rl.launch.slurm SUBCOMMAND ...``:

* ``plan CONFIG [KEY=VALUE ...]``: validate the config and print the job's plan as shell assignments (run directory,
  checkpoint interval, Ray or not, GPUs and CPUs the run asks for, the step it starts from, malloc settings);
* ``stop USR1|TERM ...``: after the driver stopped on a signal, log what happens next and print ``requeue`` when the
  script must requeue the job; exit status 1 when the job must end in error;
* ``finished RUN_DIR``: exit status 0 when the run is finished (score_rl.rundir.is_complete);
* ``run-dir CONFIG [KEY=VALUE ...]``, ``checkpoint-step RUN_DIR``, ``env``: one piece of the plan each;
* ``ray-node CMD ...``: run a Ray node (``ray start --block ...``) as one srun step (see ray_node).

Messages go to stderr in the script's own format, so the job output reads as one log.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from score_rl import rundir

NO_PROGRESS = "no-progress"  # RUN_DIR/slurm/no-progress: job starts in a row that ended without a new checkpoint
LOG_SUBDIR = "slurm"  # RUN_DIR/slurm: the Ray nodes' logs, restarts.log, no-progress
DEFAULT_MAX_REQUEUES = 20
DEFAULT_NO_PROGRESS_RETRIES = 1


def log(message: str) -> None:
    """One line of the job output, in the format of the sbatch script's own ``log``."""
    print(f"[score-rl.sbatch {time.strftime('%Y-%m-%d %H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _int_env(env: Mapping[str, str], key: str, default: int) -> int:
    value = env.get(key) or ""
    return int(value) if value.strip() else default


# --- identity and progress -------------------------------------------------------------------------------------
def submission_id(config: str, overrides: Sequence[str], array_task_id: str = "") -> str:
    """10 hex digits naming a submission: CONFIG, the overrides and the array task id, each NUL-terminated. The same
    command, requeued or submitted again, gets the same id (and so the same default run directory)."""
    data = "".join(f"{a}\0" for a in [config, *overrides, array_task_id]).encode()
    return hashlib.sha1(data).hexdigest()[:10]


def default_run_dir(config: str, overrides: Sequence[str], env: Mapping[str, str], cwd: str) -> str:
    """``CWD/runs/<job name>-<submission id>``: named after the submission, not the job id."""
    name = env.get("SLURM_JOB_NAME") or "score-rl"
    return f"{cwd}/runs/{name}-{submission_id(config, overrides, env.get('SLURM_ARRAY_TASK_ID', ''))}"


def run_dir_for(config: str, overrides: Sequence[str], env: Mapping[str, str], cwd: str) -> str:
    """The job's run directory: SCORE_RL_RUN_DIR, else the default one."""
    return env.get("SCORE_RL_RUN_DIR") or default_run_dir(config, overrides, env, cwd)


def latest_step(run_dir: str | Path) -> int:
    """The step of the checkpoint ``checkpoints/latest`` names (step_0000012 -> 12); 0 when there is none. This is
    what the trainer last published; the script compares it across job starts to tell progress from none."""
    try:
        name = (Path(run_dir) / rundir.CHECKPOINTS / "latest").read_text().strip()
    except OSError:
        return 0
    digits = name[len("step_"):] if name.startswith("step_") else name
    return int(digits) if digits.isdigit() else 0


# --- the plan --------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    run_dir: str
    checkpoint_every: int
    ray_enabled: bool
    gpus_needed: float
    cpus_needed: str  # a number, or "all-free": the driver sizes its actors to the cluster's free CPUs
    start_step: int
    env: dict = field(default_factory=dict)  # exported for the Ray nodes and their actors

    def shell(self) -> str:
        """The plan as shell assignments, each value quoted (the script evaluates them)."""
        values = {"RUN_DIR": self.run_dir, "CHECKPOINT_EVERY": self.checkpoint_every,
                  "RAY_ENABLED": int(self.ray_enabled), "GPUS_NEEDED": self.gpus_needed,
                  "CPUS_NEEDED": self.cpus_needed, "START_STEP": self.start_step}
        lines = [f"{k}={shlex.quote(str(v))}" for k, v in values.items()]
        lines += [f"export {k}={shlex.quote(str(v))}" for k, v in self.env.items()]
        return "\n".join(lines)


class FinishedRun(Exception):
    """A new submission whose default run directory holds a finished run."""


def config_plan(config: str, overrides: Sequence[str], env: Mapping[str, str], cwd: str) -> Plan:
    """Validate the config (raises ConfigError) and plan the job. A new submission (not a requeue) of a command whose
    default run directory holds a finished run raises FinishedRun: it would only evaluate that run again."""
    from score_rl.config import load_config
    from score_rl.launch.distributed import malloc_env

    run_dir = run_dir_for(config, overrides, env, cwd)
    if not env.get("SCORE_RL_RUN_DIR") and _int_env(env, "SLURM_RESTART_COUNT", 0) == 0 and rundir.is_complete(run_dir):
        raise FinishedRun(f"this command's run directory {run_dir} holds a finished run ({rundir.COMPLETE}): change an "
                          f"override or set SCORE_RL_RUN_DIR for a new run (SCORE_RL_RUN_DIR={run_dir} evaluates the "
                          "finished one again)")
    cfg = load_config(config, ["trainer.progress_bar=false", f"trainer.run_dir={run_dir}", *overrides])
    r, lrn = cfg.rollout, cfg.learner
    auto = r.cpus_per_worker is None or lrn.cpus_per_rank is None
    cpus = "all-free" if auto else str(r.num_workers * r.cpus_per_worker + lrn.num_ranks * lrn.cpus_per_rank)
    return Plan(run_dir=run_dir, checkpoint_every=cfg.trainer.checkpoint_every, ray_enabled=bool(cfg.ray.enabled),
                gpus_needed=r.num_workers * r.gpus_per_worker + lrn.num_ranks * lrn.gpus_per_rank, cpus_needed=cpus,
                start_step=latest_step(run_dir), env=malloc_env(env) if cfg.ray.enabled else {})


# --- after a stop signal ---------------------------------------------------------------------------------------
@dataclass
class Decision:
    requeue: bool
    error: bool  # the job ends with exit status 1
    messages: List[str]  # to log, in order
    # job starts in a row without a new checkpoint, this one included (0: it made progress); None: left as it was
    no_progress: Optional[int]


def resume_command(config: str, overrides: Sequence[str], run_dir: str, with_run_dir: bool = True) -> str:
    """The command that resumes the run in RUN_DIR (the same submission)."""
    prefix = f"SCORE_RL_RUN_DIR={run_dir} " if with_run_dir else ""
    return f"{prefix}sbatch [options] slurm/score_rl.sbatch {shlex.join([config, *overrides])}"


def requeue_decision(*, finished: bool, restarts: int, max_requeues: int, start_step: int, step: int,
                     no_progress: int, no_progress_retries: int, job_id: str, log_dir: str, resume: str) -> Decision:
    """After SIGUSR1: requeue the job, unless the run is finished, the job is out of requeues or its starts make no
    progress. ``no_progress`` counts the earlier starts in a row without a new checkpoint."""
    if finished:
        return Decision(False, False, ["training finished; not requeueing"], None)
    if restarts >= max_requeues:
        return Decision(False, True, [f"error: not requeueing: the job was already restarted {restarts} times "
                                      f"(SCORE_RL_MAX_REQUEUES={max_requeues})"], None)
    messages, count = [], 0
    if step <= start_step:
        count = no_progress + 1
        if count > no_progress_retries:
            return Decision(False, True, [
                f"error: not requeueing: {count} job starts in a row ended without a new checkpoint (still at step "
                f"{step}; see {log_dir}/restarts.log). The time between the SIGUSR1 and the time limit must fit the "
                "start-up, a step and a checkpoint: raise --signal=B:USR1@SECONDS or --time. Resume with: "
                f"{resume}"], count)
        messages.append(f"warning: this job start made no progress (still at step {step}); requeueing once more "
                        f"({count} of {no_progress_retries} allowed in a row)")
    messages.append(f"requeueing job {job_id}; it resumes from step {step} (SLURM starts it again after "
                    f"AuthInfo=cred_expire, 120 s by default; its '*** JOB {job_id} ... CANCELLED ... DUE TO JOB "
                    "REQUEUE ***' line next is this requeue)")
    return Decision(True, False, messages, count)


def term_messages(*, requeued_by_slurm: bool, finished: bool, run_dir: str, resume: str) -> List[str]:
    """After SIGTERM: what the user should know (SLURM requeues the job by itself, or how to resume it)."""
    if requeued_by_slurm:
        return ["the job is being requeued (scontrol requeue or preemption): SLURM starts it again and it resumes "
                f"from {run_dir}/{rundir.CHECKPOINTS}/latest"]
    if not finished:
        return [f"to resume, submit the same command again (it resumes {run_dir}): {resume}"]
    return []


def _stop(args, env: Mapping[str, str]) -> int:
    """The ``stop`` subcommand: the requeue policy with its inputs read from the run directory and the environment."""
    log_dir = Path(args.run_dir) / LOG_SUBDIR
    finished = rundir.is_complete(args.run_dir)
    if args.signal == "TERM":
        restarts = _int_env(env, "SLURM_RESTART_COUNT", 0)
        messages = term_messages(requeued_by_slurm=args.slurm_restarts is not None and args.slurm_restarts > restarts,
                                 finished=finished, run_dir=args.run_dir,
                                 resume=resume_command(args.config, args.overrides, args.run_dir,
                                                       bool(env.get("SCORE_RL_RUN_DIR"))))
        for message in messages:
            log(message)
        return 0
    counter = log_dir / NO_PROGRESS
    try:
        no_progress = int(counter.read_text().strip() or 0)
    except (OSError, ValueError):
        no_progress = 0
    decision = requeue_decision(
        finished=finished, restarts=_int_env(env, "SLURM_RESTART_COUNT", 0),
        max_requeues=_int_env(env, "SCORE_RL_MAX_REQUEUES", DEFAULT_MAX_REQUEUES), start_step=args.start_step,
        step=latest_step(args.run_dir), no_progress=no_progress,
        no_progress_retries=_int_env(env, "SCORE_RL_NO_PROGRESS_RETRIES", DEFAULT_NO_PROGRESS_RETRIES),
        job_id=env.get("SLURM_JOB_ID", "?"), log_dir=str(log_dir),
        resume=resume_command(args.config, args.overrides, args.run_dir))
    if decision.no_progress:
        log_dir.mkdir(parents=True, exist_ok=True)
        counter.write_text(f"{decision.no_progress}\n")
    elif decision.no_progress == 0:
        counter.unlink(missing_ok=True)
    for message in decision.messages:
        log(message)
    if decision.requeue:
        print("requeue")
    return 1 if decision.error else 0


# --- the Ray node of one srun step -----------------------------------------------------------------------------
def ray_node(command: Sequence[str]) -> int:
    """Run COMMAND (``ray start --block ...``) as the Ray node of one srun step; its exit status.

    SLURM sends SIGTERM to every process of a job on scancel / requeue / preemption; Ray's processes exit on it within
    ~2 s, which would take the actors away from a driver that is finishing its step. So COMMAND and everything it
    starts (raylet, GCS, workers: a blocked signal is inherited across fork and exec) run with SIGTERM blocked, and
    this process ignores it; SIGKILL after KillWait still ends them. The script ends a step with SIGUSR2 (srun forwards
    it): this process then runs ``ray stop --force`` on its node, waits for COMMAND to exit, and returns 0."""
    import signal
    import subprocess

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop: List[int] = []
    signal.signal(signal.SIGUSR2, lambda *_: stop.append(1))

    def child() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    node = subprocess.Popen(list(command), preexec_fn=child)
    while node.poll() is None and not stop:
        time.sleep(0.2)
    if stop:
        subprocess.run(["ray", "stop", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
        return 0
    return node.returncode


# --- the command line ------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m score_rl.launch.slurm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("plan", "run-dir"):
        s = sub.add_parser(name)
        s.add_argument("--cwd", default=None, help="the directory the default run directory is under (default: $PWD)")
        s.add_argument("config")
        s.add_argument("overrides", nargs="*")
    s = sub.add_parser("stop")
    s.add_argument("signal", choices=["USR1", "TERM"])
    s.add_argument("--run-dir", required=True)
    s.add_argument("--start-step", type=int, default=0, help="the checkpoint step the job started from")
    s.add_argument("--slurm-restarts", type=int, default=None, help="Restarts= of `scontrol show job` now (TERM)")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*")
    sub.add_parser("finished").add_argument("run_dir")
    sub.add_parser("checkpoint-step").add_argument("run_dir")
    sub.add_parser("env")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ray-node"]:  # everything after it is the command, options included
        return ray_node(argv[1:])
    args = _parser().parse_args(argv)
    env = os.environ
    if args.command in ("plan", "run-dir"):
        cwd = args.cwd or env.get("PWD") or os.getcwd()
        if args.command == "run-dir":
            print(run_dir_for(args.config, args.overrides, env, cwd))
            return 0
        from score_rl.errors import ConfigError

        try:
            plan = config_plan(args.config, args.overrides, env, cwd)
        except FinishedRun as err:
            log(f"error: {err}")
            return 1
        except ConfigError as err:
            print(f"score-rl: error: {err}", file=sys.stderr)
            return 2
        print(plan.shell())
        return 0
    if args.command == "stop":
        return _stop(args, env)
    if args.command == "finished":
        return 0 if rundir.is_complete(args.run_dir) else 1
    if args.command == "checkpoint-step":
        print(latest_step(args.run_dir))
        return 0
    from score_rl.launch.distributed import malloc_env

    for key, value in malloc_env(env).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
