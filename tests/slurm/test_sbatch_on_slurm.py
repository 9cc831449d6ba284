"""slurm/score_rl.sbatch on a real single-node SLURM: a run to the end; SIGUSR1, `scontrol requeue` and plain scancel
in the middle of a run, each resumed to the same metrics as an uninterrupted run; a requeue without progress.

Needs a running SLURM whose jobs can run on this machine: `bash scripts/start-local-slurm.sh` (as root) starts one;
.ci/run does that, then `pytest -m slurm`. Without SLURM these tests skip with the reason, unless
SCORE_RL_REQUIRE_SLURM=1 (set by .ci/run once the start script succeeded), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from conftest import QUICKSTART, REPO, TINY_OVERRIDES

pytestmark = pytest.mark.slurm

STEPS = 12
# ~0.8 s a step on 2 CPU cores with Ray, so that a signal sent at step 3 lands mid-run; checkpoint_every large so
# that a checkpoint in the run dir can only come from the stop signal
# explicit CPUs: the reference runs on a local Ray (auto: 2 threads per actor, taking turns) and the job joins the
# sbatch's cluster (auto: 1 thread per reserved CPU); float sums differ with the thread count, and these tests compare
# the runs' metrics exactly
RUN_ARGS = TINY_OVERRIDES + ["rollout.problems_per_step=64", "rollout.samples_per_problem=4", f"trainer.steps={STEPS}",
                             "trainer.checkpoint_every=1000", "trainer.eval_before_after=false",
                             "rollout.cpus_per_worker=1", "learner.cpus_per_rank=1"]
VENV = Path(sys.executable).parent.parent
JOB_TIMEOUT = 240  # seconds for one job (or a requeued one) to reach its end
# what a job output must not hold (Ray's SIGTERM stack dump, bash's "Aborted", srun/slurmstepd errors, tracebacks)
BAD_LINE = re.compile(r"Traceback|error|Killed|Aborted|SIGTERM received at|core dumped|Terminated", re.I)
# SLURM's own lines when a job is cancelled or requeued (any job's output has them then)
SLURM_STOP_LINES = re.compile(r"^(srun: Job step aborted: Waiting up to \d+ seconds|srun: got SIGCONT$|"
                              r"srun: forcing job termination$|slurmstepd(-\S+)?: error: \*\*\* (JOB|STEP) \S+ ON \S+ "
                              r"CANCELLED AT \S+( DUE TO JOB REQUEUE)? \*\*\*$)")


@pytest.fixture(scope="module")
def slurm() -> None:
    reason = None
    if shutil.which("sbatch") is None:
        reason = "no SLURM here (sbatch not found); scripts/start-local-slurm.sh starts one"
    else:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
        if state.returncode != 0 or not {"idle", "mixed", "completing"} & set(state.stdout.split()):
            reason = f"SLURM has no idle node (sinfo: {state.stdout.strip() or state.stderr.strip()})"
    if reason:
        if os.environ.get("SCORE_RL_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_path) -> List[dict]:
    """metrics.jsonl of an uninterrupted run with the same config and seed: `score-rl train` directly (local Ray)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    result = subprocess.run([str(VENV / "bin" / "score-rl"), "train", str(QUICKSTART), *RUN_ARGS,
                             f"model.path={tiny_model_path}", f"trainer.run_dir={run_dir}"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(STEPS))
    return rows


# --- helpers -----------------------------------------------------------------------------------------------------
def _submit(run_dir: Path, model: str, extra: tuple = (), output: Path = None) -> str:
    # `ray status` polled every second while the job's Ray starts (default 5 s: a job start here waits up to 5 s
    # more for its cluster, twice per requeued job)
    env = {**os.environ, "SCORE_RL_VENV": str(VENV), "SCORE_RL_RUN_DIR": str(run_dir), "SCORE_RL_POLL_INTERVAL": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("RAY_")}
    opts = ["--parsable", "--job-name=score-rl-test"] + ([f"--output={output}"] if output else [])
    result = subprocess.run(["sbatch", *opts, "slurm/score_rl.sbatch", "configs/quickstart.yaml", *RUN_ARGS,
                             f"model.path={model}", *extra], env=env, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def _job(job: str) -> Dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)


def _wait(condition: Callable[[], object], what: str, timeout: float = JOB_TIMEOUT, job: str = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    info = _job(job) if job else {}
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; job: {info.get('JobState')} "
                         f"restarts {info.get('Restarts')}")


def _wait_end(job: str, restarts: int = 0) -> Dict[str, str]:
    """Wait until JOB (requeued RESTARTS times) has ended; its scontrol fields."""
    def ended():
        info = _job(job)
        done = info.get("JobState") in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
        return info if done and int(info.get("Restarts", 0)) >= restarts else None
    return _wait(ended, f"job {job} to end after {restarts} restart(s)", JOB_TIMEOUT * (restarts + 1), job)


def _metrics(run_dir: Path) -> List[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _latest_step(run_dir: Path) -> int:
    try:
        return int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    except (OSError, IndexError, ValueError):
        return -1


def _without_time(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("time/")}


def _assert_same_run(run_dir: Path, reference: List[dict]) -> None:
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(STEPS)), "metrics.jsonl must hold each step once, in order"
    assert [_without_time(r) for r in rows] == [_without_time(r) for r in reference]
    assert (run_dir / "final" / "config.json").exists()


def _bad_lines(output: str, allowed: re.Pattern = None) -> List[str]:
    return [line for line in output.splitlines()
            if BAD_LINE.search(line) and not (allowed and allowed.search(line))]


def _cleanup(*jobs: str) -> None:
    for job in jobs:
        if job and _job(job).get("JobState") not in {None, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}:
            subprocess.run(["scancel", job])


def _stop_mid_run(run_dir: Path, job: str, command: List[str]) -> int:
    """Once the run has logged 3 steps, run COMMAND (a signal); return how many steps were logged then."""
    _wait(lambda: len(_metrics(run_dir)) >= 3, "3 training steps", job=job)
    logged = len(_metrics(run_dir))
    assert logged < STEPS, "the run finished before the signal: make the steps slower"
    subprocess.run(command, check=True)
    return logged


# --- scenarios ---------------------------------------------------------------------------------------------------
def test_a_short_run_exits_0_with_a_clean_job_output(slurm, tiny_model_path, reference, tmp_path):
    run_dir = tmp_path / "run"
    job = _submit(run_dir, tiny_model_path)  # the script's own --output: logs/<job name>-<job id>.out
    output_file = REPO / "logs" / f"score-rl-test-{job}.out"
    try:
        info = _wait_end(job)
        output = output_file.read_text()
    finally:
        _cleanup(job)
        output_file.unlink(missing_ok=True)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", output
    assert _bad_lines(output) == [], output
    assert output.count("Ray cluster: 1/1 nodes") == 1, output
    assert f"step {STEPS}/{STEPS}" in output  # progress lines in the job output
    _assert_same_run(run_dir, reference)


def test_b_sigusr1_checkpoints_at_once_requeues_and_resumes(slurm, tiny_model_path, reference, tmp_path):
    run_dir, output_file = tmp_path / "run", tmp_path / "job.out"
    job = _submit(run_dir, tiny_model_path, output=output_file)
    try:
        logged = _stop_mid_run(run_dir, job, ["scancel", "--signal=USR1", "--batch", job])
        step = _wait(lambda: _latest_step(run_dir) if _latest_step(run_dir) >= 0 else None,
                     "the checkpoint written on SIGUSR1", timeout=60, job=job)
        assert logged <= step < STEPS  # the step the run had reached, not a periodic one (there is none)
        info = _wait_end(job, restarts=1)
    finally:
        _cleanup(job)
    output = output_file.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["Restarts"] == "1", output
    assert "SIGUSR1 (time limit near or scancel --signal=USR1)" in output
    assert f"stopped by SIGUSR1 after step {step} of {STEPS}" in output
    assert f"resumed from {run_dir}/checkpoints/step_{step:07d} at step {step}" in output
    requeue = re.compile(r"^slurmstepd(-\S+)?: error: \*\*\* JOB \S+ ON \S+ CANCELLED AT \S+ "
                         r"DUE TO JOB REQUEUE \*\*\*$")
    assert _bad_lines(output, allowed=requeue) == [], output
    _assert_same_run(run_dir, reference)


def test_c_scontrol_requeue_checkpoints_and_resumes(slurm, tiny_model_path, reference, tmp_path):
    run_dir, output_file = tmp_path / "run", tmp_path / "job.out"
    job = _submit(run_dir, tiny_model_path, output=output_file)
    try:
        logged = _stop_mid_run(run_dir, job, ["scontrol", "requeue", job])
        step = _wait(lambda: _latest_step(run_dir) if _latest_step(run_dir) >= 0 else None,
                     "the checkpoint written on SIGTERM", timeout=60, job=job)
        assert logged <= step < STEPS
        info = _wait_end(job, restarts=1)
    finally:
        _cleanup(job)
    output = output_file.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["Restarts"] == "1", output
    assert f"stopped by SIGTERM after step {step} of {STEPS}" in output
    assert "the job is being requeued (scontrol requeue or preemption)" in output
    assert f"resumed from {run_dir}/checkpoints/step_{step:07d} at step {step}" in output
    assert _bad_lines(output, allowed=SLURM_STOP_LINES) == [], output
    _assert_same_run(run_dir, reference)


def test_d_plain_scancel_checkpoints_within_the_grace_period_and_the_same_command_resumes(
        slurm, tiny_model_path, reference, tmp_path):
    run_dir, output_file = tmp_path / "run", tmp_path / "job.out"
    job = _submit(run_dir, tiny_model_path, output=output_file)
    again = None
    try:
        logged = _stop_mid_run(run_dir, job, ["scancel", job])
        cancelled_at = time.monotonic()
        info = _wait_end(job)
        took = time.monotonic() - cancelled_at
        output = output_file.read_text()
        assert info["JobState"] == "CANCELLED", output
        kill_wait = int(re.search(r"KillWait\s*=\s*(\d+)", subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True).stdout).group(1))
        assert took < kill_wait, f"the job took {took:.0f} s to end after scancel (KillWait {kill_wait} s)"
        step = _latest_step(run_dir)
        assert logged <= step < STEPS, output
        assert f"stopped by SIGTERM after step {step} of {STEPS}" in output
        assert f"SCORE_RL_RUN_DIR={run_dir} sbatch" in output  # how to resume
        assert _bad_lines(output, allowed=SLURM_STOP_LINES) == [], output

        second_output = tmp_path / "again.out"
        again = _submit(run_dir, tiny_model_path, output=second_output)  # the same command, the same run dir
        info = _wait_end(again)
    finally:
        _cleanup(job, again)
    output = second_output.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", output
    assert f"resumed from {run_dir}/checkpoints/step_{step:07d} at step {step}" in output
    assert _bad_lines(output) == [], output
    _assert_same_run(run_dir, reference)


def test_e_a_requeue_without_progress_stops_with_a_clear_message(slurm, tiny_model_path, tmp_path):
    run_dir, output_file = tmp_path / "run", tmp_path / "job.out"
    starts = run_dir / "slurm" / "restarts.log"
    # no Ray (faster): the no-progress check is the script's, the same with or without Ray
    job = _submit(run_dir, tiny_model_path, extra=("ray.enabled=false",), output=output_file)
    try:
        for n in (1, 2):  # SIGUSR1 as soon as the job has started, twice: no checkpoint either time
            _wait(lambda n=n: starts.exists() and len(starts.read_text().splitlines()) >= n, f"job start {n}", job=job)
            subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
        info = _wait_end(job, restarts=1)
    finally:
        _cleanup(job)
    output = output_file.read_text()
    assert info["JobState"] == "FAILED" and info["Restarts"] == "1", output
    assert "this job start made no progress (still at step 0); requeueing once more" in output
    assert "error: not requeueing: 2 job starts in a row ended without a new checkpoint (still at step 0" in output
    assert len(starts.read_text().splitlines()) == 2
