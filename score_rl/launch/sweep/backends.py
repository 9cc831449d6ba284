"""The backends of ``score-rl sweep``: where the unfinished runs of a planned sweep (spec.py) run.

* ``run_local``: ``score-rl train`` subprocesses, N at a time, stopped cleanly on Ctrl-C / SIGTERM / SIGHUP;
* ``run_ray``: one Ray job per run (Jobs API) on a running cluster, N at a time;
* ``run_slurm``: one job array, a task per run (``slurm_script``: the body of slurm/score_rl.sbatch, so each task
  gets its Ray cluster, signals, requeue and no-progress guard), submitted with sbatch or only written (dry run).

A run is never started while another process holds its run directory's lock (score_rl.rundir.RunDirLock).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from score_rl import rundir
from score_rl.errors import ConfigError
from score_rl.launch.sweep.spec import Run, Sweep, is_complete, safe_name


def _record_failure(run: Run, returncode: Any, log_path: Optional[Path]) -> None:
    tail = ""
    if log_path and log_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    (Path(run.run_dir) / rundir.FAILED).write_text(json.dumps({"returncode": returncode, "log": str(log_path),
                                                        "log_tail": tail}, indent=2))


def _finished(run: Run, returncode: Any, log_path: Optional[Path], seconds: float, log: Callable) -> bool:
    if returncode == 0 and is_complete(run):
        (Path(run.run_dir) / rundir.FAILED).unlink(missing_ok=True)
        log(f"done   {run.run_id} ({seconds:.0f} s)")
        return True
    _record_failure(run, returncode, log_path)
    log(f"FAILED {run.run_id} (exit {returncode}); log: {log_path}")
    return False


def run_local(sweep: Sweep, log: Callable = print) -> Dict[str, bool]:
    """Every unfinished run as a ``score-rl train`` subprocess, ``backend.parallel`` at a time.

    Ctrl-C, SIGTERM or SIGHUP (unless ignored, as under nohup) only *requests* a stop: the loop notices it between
    two polls, so no trainer is ever started without being recorded; then the running trainers (each in its own
    session: only the sweep signals them) are interrupted and KeyboardInterrupt is raised. Re-running the sweep resumes
    them. Any other exit of the sweep stops them too."""
    pending, active, results = sweep.pending(), {}, {}
    parallel = sweep.spec.backend.parallel
    stop: List[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.append(signum))
                for sig in _STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        while (pending or active) and not stop:
            while pending and len(active) < parallel and not stop:
                run = pending.pop(0)
                if run_dir_in_use(Path(run.run_dir)):
                    log(f"skip   {run.run_id}: another process is training it (its run directory is locked)")
                    continue
                Path(run.run_dir).mkdir(parents=True, exist_ok=True)
                log_path = Path(run.run_dir) / "train.log"
                resumed = (Path(run.run_dir) / rundir.CHECKPOINTS).is_dir()
                handle = open(log_path, "a")
                proc = subprocess.Popen(run.command(sweep.base), stdout=handle, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                active[run.run_id] = (run, proc, handle, log_path, time.time())
                log(f"start  {run.run_id}{' (resuming)' if resumed else ''}")
            for run_id, (run, proc, handle, log_path, started) in list(active.items()):
                if proc.poll() is not None:
                    handle.close()
                    del active[run_id]
                    results[run_id] = _finished(run, proc.returncode, log_path, time.time() - started, log)
            time.sleep(0.2)
        if stop:
            raise KeyboardInterrupt
    finally:
        if active:
            _stop_local(active.values(), log)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return results


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_local(active, log: Callable) -> None:
    """SIGINT to every running trainer's process group (each stops at once; its re-run resumes from its latest
    checkpoint), SIGKILL after 60 s; further Ctrl-C / SIGTERM / SIGHUP are ignored meanwhile so the cleanup itself
    cannot be interrupted."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
    try:
        for _, proc, _, _, _ in active:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGINT)
        deadline = time.time() + 60
        for run, proc, handle, _, _ in active:
            try:
                proc.wait(timeout=max(deadline - time.time(), 1))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            handle.close()
            log(f"stopped {run.run_id} (re-run the sweep to resume it)")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the trainer and whatever it started (sandbox children, a local Ray)
    except ProcessLookupError:
        pass


def run_dir_in_use(run_dir: Path) -> bool:
    """Whether a trainer holds the run directory's lock (score_rl.rundir.RunDirLock)."""
    return rundir.RunDirLock.held(run_dir)


def run_ray(sweep: Sweep, log: Callable = print) -> Dict[str, bool]:
    """Every unfinished run as a Ray job (Jobs API) on a running cluster, ``backend.parallel`` at a time.

    The run directories must be on storage the cluster's nodes share (they are absolute paths)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    rb = sweep.spec.backend.ray
    _use_ray_token_if_present()
    client = JobSubmissionClient(rb.address)
    python = rb.python or sys.executable
    env = dict(rb.runtime_env)
    env["env_vars"] = {"TOKENIZERS_PARALLELISM": "false", **env.get("env_vars", {})}
    pending, active, results = sweep.pending(), {}, {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        while pending or active:
            while pending and len(active) < sweep.spec.backend.parallel:
                run = pending.pop(0)
                if run_dir_in_use(Path(run.run_dir)):
                    log(f"skip   {run.run_id}: another process is training it (its run directory is locked)")
                    continue
                Path(run.run_dir).mkdir(parents=True, exist_ok=True)
                # a run that starts Ray itself joins this cluster instead of starting its own
                command = shlex.join(run.command(sweep.base, python) + ["ray.address=auto"])
                if "working_dir" not in env:  # relative paths in the overrides mean what they mean here
                    command = f"cd {shlex.quote(str(Path.cwd()))} && {command}"
                job_id = client.submit_job(
                    entrypoint=command, runtime_env=env, submission_id=f"{sweep.spec.name}-{run.run_id}-"
                    f"{stamp}", entrypoint_num_cpus=rb.num_cpus, entrypoint_num_gpus=rb.num_gpus or None,
                    metadata={"sweep": sweep.spec.name, "run": run.run_id})
                active[run.run_id] = (run, job_id, time.time())
                log(f"submit {run.run_id} as Ray job {job_id}")
            for run_id, (run, job_id, started) in list(active.items()):
                status = client.get_job_status(job_id)
                if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                    log_path = Path(run.run_dir) / "train.log"
                    with open(log_path, "a") as f:  # appended, as the local backend does: a resumed run keeps both
                        f.write(client.get_job_logs(job_id))
                    del active[run_id]
                    results[run_id] = _finished(run, 0 if status == JobStatus.SUCCEEDED else str(status), log_path,
                                                time.time() - started, log)
            time.sleep(rb.poll_s)
    except KeyboardInterrupt:
        for run, job_id, _ in active.values():
            client.stop_job(job_id)
            log(f"stopped Ray job {job_id} ({run.run_id}; re-run the sweep to resume it)")
        raise
    return results


def _use_ray_token_if_present() -> None:
    """Ray >= 2.5x clusters require a token by default (``ray start`` keeps it in ~/.ray/auth_token). ``ray.init``
    turns token auth on in a process when a token exists and RAY_AUTH_MODE is unset; the Jobs client does not, so we
    do the same here (Ray's own function; an explicit RAY_AUTH_MODE is respected)."""
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:  # an older Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


SBATCH = Path(__file__).resolve().parents[3] / "slurm" / "score_rl.sbatch"
BODY_MARK = "# --- from here on: the body of slurm/score_rl.sbatch"
_DIRECTIVE = re.compile(r"^[\w.:,@%+=/-]+$")
# directives of slurm/score_rl.sbatch that the array script sets itself: a task is one run, with the resources of
# backend.slurm (add --exclusive through backend.slurm.sbatch_args to get whole nodes)
_REPLACED = ("--job-name", "--output", "--exclusive")
# what the body sets itself from SCORE_RL_RUN_DIR (it refuses trainer.run_dir among the overrides)
_BODY_SETS = ("trainer.run_dir=", "trainer.progress_bar=")


def sbatch_parts(path: Path = SBATCH) -> Tuple[List[str], str]:
    """slurm/score_rl.sbatch as its ``#SBATCH`` lines and its body (from its first line of code on)."""
    if not path.is_file():
        raise ConfigError(f"sweep backend slurm: {path} not found (the array script runs its body; use score-rl "
                          "from a checkout of the repository)")
    lines = path.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if i and line.strip() and not line.startswith("#"))
    directives = [line for line in lines[:first] if line.startswith("#SBATCH ")]
    return directives, "\n".join(lines[first:]) + "\n"


def slurm_script(sweep: Sweep, runs: List[Run]) -> str:
    """A job array with one task per run: each task's case names its run (config, overrides, run directory), then
    the body of slurm/score_rl.sbatch runs it, with that script's directives for signals and requeue."""
    sb, spec = sweep.spec.backend.slurm, sweep.spec
    logs = sweep.out_dir / "slurm"
    for key in ("partition", "account", "time", "mem"):
        value = getattr(sb, key)
        if value is not None and not _DIRECTIVE.match(str(value)):
            raise ConfigError(f"sweep key 'backend.slurm.{key}': {value!r} is not a plain SLURM value")
    for arg in sb.sbatch_args:
        if not _DIRECTIVE.match(arg):
            raise ConfigError(f"sweep key 'backend.slurm.sbatch_args': {arg!r} must be one --option=value "
                              "without spaces")
    if not _DIRECTIVE.match(str(logs)):
        raise ConfigError(f"sweep out_dir {sweep.out_dir} must not contain spaces or shell characters for SLURM")
    directives, body = sbatch_parts()
    array = f"0-{len(runs) - 1}" + (f"%{sb.throttle}" if sb.throttle else "")
    about = (f"score-rl sweep '{spec.name}': {len(runs)} unfinished run(s), one array task each; re-running the "
             "sweep leaves finished runs out (a run already training elsewhere holds its directory's lock and this "
             "task then stops). Each task sets its run, then runs the body of slurm/score_rl.sbatch: its stop "
             "signals, requeue and no-progress guard; its SCORE_RL_* settings apply. Tasks share nodes, so each "
             "run starts its own local Ray (SCORE_RL_LOCAL_RAY=1), as a plain score-rl train does.")
    lines = ["#!/bin/bash", *[f"# {line}" for line in textwrap.wrap(about, 116)],
             *[d for d in directives if d.split()[1].split("=")[0] not in _REPLACED],
             f"#SBATCH --job-name={safe_name(spec.name)}", f"#SBATCH --array={array}",
             f"#SBATCH --cpus-per-task={sb.cpus_per_task}", f"#SBATCH --mem={sb.mem}", f"#SBATCH --time={sb.time}",
             f"#SBATCH --output={logs}/%x_%A_%a.out"]
    if sb.partition:
        lines.append(f"#SBATCH --partition={sb.partition}")
    if sb.account:
        lines.append(f"#SBATCH --account={sb.account}")
    if sb.gpus_per_task:
        lines.append(f"#SBATCH --gres=gpu:{sb.gpus_per_task}")
    lines += [f"#SBATCH {arg}" for arg in sb.sbatch_args]
    cwd = shlex.quote(str(Path.cwd()))
    # tasks share nodes: each driver starts its own private local Ray (a cluster per task would meet its neighbours'
    # on one port, and one task's `ray stop` would end them all)
    lines += ["", f"cd {cwd}", f"export SCORE_RL_WORKDIR={cwd}", "export SCORE_RL_LOCAL_RAY=1"]
    if shlex.split(sb.python) != ["python"]:  # e.g. "uv run python": the policy and the driver run through it
        lines.append(f"export SCORE_RL_PYTHON={shlex.quote(sb.python)}")
    # the setup lines first: environment activation scripts are often not safe under `set -u` or `set -e`
    check = "# shellcheck disable=SC1090,SC1091  # (backend.slurm.setup: sourced files are not followed)"
    lines += [f"{check}\n{line}" for line in sb.setup]
    lines += ["", 'case "${SLURM_ARRAY_TASK_ID:-}" in']
    for i, run in enumerate(runs):
        args = [sweep.base, *[o for o in run.overrides if not o.startswith(_BODY_SETS)]]
        lines += [f"  {i})  # {run.run_id}", f"    RUN_ID={shlex.quote(run.run_id)}",
                  f"    export SCORE_RL_RUN_DIR={shlex.quote(run.run_dir)}",
                  "    set -- " + " \\\n      ".join(shlex.quote(a) for a in args), "    ;;"]
    lines += ['  *) echo "score-rl sweep: no run for array index ${SLURM_ARRAY_TASK_ID:-}" >&2; exit 2 ;;', "esac",
              'echo "score-rl sweep: run ${RUN_ID} in ${SCORE_RL_RUN_DIR}" >&2', "",
              f"{BODY_MARK} (its header documents it) ---"]
    return "\n".join(lines) + "\n" + body


def run_slurm(sweep: Sweep, dry_run: bool, log: Callable = print) -> Optional[str]:
    """Write the job array of the unfinished runs; submit it with sbatch unless ``dry_run``. Returns the job id."""
    runs = [r for r in sweep.pending() if not run_dir_in_use(Path(r.run_dir))]  # training right now: left out
    if not runs:
        log("every run is finished or training: nothing to submit")
        return None
    (sweep.out_dir / "slurm").mkdir(parents=True, exist_ok=True)
    script = sweep.out_dir / "slurm" / f"{safe_name(sweep.spec.name)}.sbatch"
    text = slurm_script(sweep, runs)
    script.write_text(text)
    if dry_run:
        head = text[:text.index(BODY_MARK)]
        log(f"{head}{BODY_MARK} ({text[len(head):].count(chr(10))} lines: see the file) ---")
        log(f"# dry run: wrote {script} ({len(runs)} array tasks); submit it with: sbatch {script}")
        return None
    try:
        out = subprocess.run(["sbatch", "--parsable", str(script)], check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise ConfigError("sweep backend slurm: sbatch not found (run on a SLURM login node, or use --dry-run)"
                          ) from None
    except subprocess.CalledProcessError as err:
        reason = err.stderr.strip().splitlines()[-1] if err.stderr else err
        raise ConfigError(f"sbatch rejected {script}: {reason}") from None
    job_id = out.stdout.strip().split(";")[0]
    log(f"submitted job array {job_id} ({len(runs)} runs); when it is done: score-rl sweep --report {sweep.out_dir}")
    return job_id
