"""The policy of slurm/score_rl.sbatch (score_rl/launch/slurm.py): the requeue decision, "finished", no-progress
counting, the run directory, the plan, the Ray node wrapper. No SLURM, no Ray; one test runs the script against the
stand-in commands of tests/test_docs.py."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys

import pytest

from score_rl import rundir
from score_rl.launch import slurm
from tests.conftest import QUICKSTART


def _decide(**overrides) -> slurm.Decision:
    args = dict(finished=False, restarts=0, max_requeues=20, start_step=0, step=5, no_progress=0,
                no_progress_retries=1, job_id="42", log_dir="/r/slurm", resume="SCORE_RL_RUN_DIR=/r sbatch x")
    args.update(overrides)
    return slurm.requeue_decision(**args)


# --- the requeue decision --------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, requeue, error, no_progress, message", [
    ({}, True, False, 0, "requeueing job 42; it resumes from step 5"),
    ({"finished": True}, False, False, None, "training finished; not requeueing"),
    ({"restarts": 20}, False, True, None, "error: not requeueing: the job was already restarted 20 times "
                                          "(SCORE_RL_MAX_REQUEUES=20)"),
    ({"finished": True, "restarts": 20}, False, False, None, "training finished"),  # finished wins
    ({"start_step": 5}, True, False, 1, "warning: this job start made no progress (still at step 5); requeueing "
                                        "once more (1 of 1 allowed in a row)"),
    ({"start_step": 5, "no_progress": 1}, False, True, 2,
     "error: not requeueing: 2 job starts in a row ended without a new checkpoint (still at step 5; see "
     "/r/slurm/restarts.log)"),
    ({"start_step": 5, "no_progress": 1, "no_progress_retries": 2}, True, False, 2, "(2 of 2 allowed in a row)"),
    ({"start_step": 3, "no_progress": 1}, True, False, 0, "resumes from step 5"),  # progress resets the count
])
def test_requeue_decision_table(case, requeue, error, no_progress, message):
    d = _decide(**case)
    assert (d.requeue, d.error, d.no_progress) == (requeue, error, no_progress)
    assert any(message in m for m in d.messages), d.messages


def test_giving_up_names_the_command_that_resumes():
    d = _decide(start_step=5, no_progress=1)
    assert d.messages[-1].endswith("Resume with: SCORE_RL_RUN_DIR=/r sbatch x")
    assert slurm.resume_command("c.yaml", ["a=1", "p=two words"], "/r") == \
        "SCORE_RL_RUN_DIR=/r sbatch [options] slurm/score_rl.sbatch c.yaml a=1 'p=two words'"


def test_after_sigterm_the_user_learns_how_it_resumes():
    msgs = slurm.term_messages(requeued_by_slurm=True, finished=False, run_dir="/r", resume="cmd")
    assert msgs == ["the job is being requeued (scontrol requeue or preemption): SLURM starts it again and it "
                    "resumes from /r/checkpoints/latest"]
    assert slurm.term_messages(requeued_by_slurm=False, finished=False, run_dir="/r", resume="cmd") == [
        "to resume, submit the same command again (it resumes /r): cmd"]
    assert slurm.term_messages(requeued_by_slurm=False, finished=True, run_dir="/r", resume="cmd") == []


# --- finished, progress ----------------------------------------------------------------------------------------
def test_final_dir_alone_is_not_finished(tmp_path):
    """final/ is written before the final evaluation: only run_complete.json finishes a run."""
    (tmp_path / rundir.FINAL).mkdir()
    (tmp_path / rundir.FINAL / "config.json").write_text("{}")
    assert not rundir.is_complete(tmp_path) and slurm.main(["finished", str(tmp_path)]) == 1
    (tmp_path / rundir.COMPLETE).write_text("{}")
    assert rundir.is_complete(tmp_path) and slurm.main(["finished", str(tmp_path)]) == 0


@pytest.mark.parametrize("latest, step", [(None, 0), ("step_0000012", 12), ("step_0000012\n", 12), ("junk", 0),
                                          ("step_", 0)])
def test_latest_step(tmp_path, latest, step):
    if latest is not None:
        (tmp_path / "checkpoints").mkdir()
        (tmp_path / "checkpoints" / "latest").write_text(latest)
    assert slurm.latest_step(tmp_path) == step


def _stop(run_dir, start_step, env, monkeypatch, capsys, sig="USR1"):
    for key in ("SLURM_RESTART_COUNT", "SCORE_RL_MAX_REQUEUES", "SCORE_RL_NO_PROGRESS_RETRIES", "SCORE_RL_RUN_DIR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"SLURM_JOB_ID": "42", **env}.items():
        monkeypatch.setenv(key, value)
    rc = slurm.main(["stop", sig, "--run-dir", str(run_dir), "--start-step", str(start_step), "--", "c.yaml", "a=1"])
    out = capsys.readouterr()
    return rc, out.out.strip(), out.err


def test_no_progress_is_counted_across_job_starts_and_reset_by_progress(tmp_path, monkeypatch, capsys):
    counter = tmp_path / "slurm" / slurm.NO_PROGRESS
    rc, action, err = _stop(tmp_path, 0, {}, monkeypatch, capsys)  # no checkpoint at all: no progress
    assert (rc, action, counter.read_text()) == (0, "requeue", "1\n") and "made no progress" in err
    rc, action, err = _stop(tmp_path, 0, {"SLURM_RESTART_COUNT": "1"}, monkeypatch, capsys)
    assert (rc, action, counter.read_text()) == (1, "", "2\n")
    assert "error: not requeueing: 2 job starts in a row" in err and "SCORE_RL_RUN_DIR=" in err
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_0000003")
    rc, action, err = _stop(tmp_path, 0, {}, monkeypatch, capsys)
    assert (rc, action, counter.exists()) == (0, "requeue", False) and "resumes from step 3" in err
    rc, action, err = _stop(tmp_path, 3, {"SCORE_RL_NO_PROGRESS_RETRIES": "0"}, monkeypatch, capsys)
    assert (rc, action) == (1, "")


def test_a_stop_after_the_run_finished_neither_requeues_nor_counts(tmp_path, monkeypatch, capsys):
    (tmp_path / rundir.COMPLETE).write_text("{}")
    rc, action, err = _stop(tmp_path, 0, {}, monkeypatch, capsys)
    assert (rc, action) == (0, "") and "training finished; not requeueing" in err
    assert not (tmp_path / "slurm").exists()
    rc, action, err = _stop(tmp_path, 0, {}, monkeypatch, capsys, sig="TERM")
    assert (rc, action, err) == (0, "", "")


def test_sigterm_names_score_rl_run_dir_only_when_it_was_set(tmp_path, monkeypatch, capsys):
    _, _, err = _stop(tmp_path, 0, {}, monkeypatch, capsys, sig="TERM")
    assert "to resume, submit the same command again" in err and "SCORE_RL_RUN_DIR" not in err
    _, _, err = _stop(tmp_path, 0, {"SCORE_RL_RUN_DIR": str(tmp_path)}, monkeypatch, capsys, sig="TERM")
    assert f"SCORE_RL_RUN_DIR={tmp_path} sbatch" in err


# --- the run directory and the plan ----------------------------------------------------------------------------
def test_default_run_dir_is_named_after_the_submission():
    args = ["a=1", "p=two  words"]
    digest = hashlib.sha1("".join(f"{a}\0" for a in ["c.yaml", *args, ""]).encode()).hexdigest()[:10]
    env = {"SLURM_JOB_NAME": "job", "SLURM_JOB_ID": "1"}
    assert slurm.run_dir_for("c.yaml", args, env, "/w") == f"/w/runs/job-{digest}"
    assert slurm.run_dir_for("c.yaml", args, {**env, "SLURM_JOB_ID": "2"}, "/w") == f"/w/runs/job-{digest}"
    assert slurm.run_dir_for("c.yaml", args, {**env, "SLURM_ARRAY_TASK_ID": "3"}, "/w") != f"/w/runs/job-{digest}"
    assert slurm.run_dir_for("c.yaml", args, {**env, "SCORE_RL_RUN_DIR": "/x"}, "/w") == "/x"
    assert slurm.run_dir_for("c.yaml", args, {}, "/w").startswith("/w/runs/score-rl-")


def test_plan_of_a_config(tmp_path):
    env = {"SCORE_RL_RUN_DIR": str(tmp_path / "run")}
    plan = slurm.config_plan(str(QUICKSTART), ["trainer.checkpoint_every=7", "rollout.cpus_per_worker=1",
                                               "learner.cpus_per_rank=2"], env, "/w")
    assert (plan.run_dir, plan.checkpoint_every, plan.ray_enabled, plan.start_step) == (str(tmp_path / "run"), 7,
                                                                                        True, 0)
    assert float(plan.cpus_needed) == 3 and float(plan.gpus_needed) == 0
    assert plan.env == {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(512 << 20)}
    auto = slurm.config_plan(str(QUICKSTART), ["ray.enabled=false"], env, "/w")
    assert (auto.cpus_needed, auto.ray_enabled, auto.env) == ("all-free", False, {})
    own = slurm.config_plan(str(QUICKSTART), [], {**env, "MALLOC_ARENA_MAX": "2", "MALLOC_TOP_PAD_": "0"}, "/w")
    assert own.env == {}, "malloc settings of the user's own are left alone"


def test_plan_as_shell_assignments(tmp_path):
    plan = slurm.Plan(run_dir=str(tmp_path / "a b$c"), checkpoint_every=5, ray_enabled=True, gpus_needed=2.0,
                      cpus_needed="all-free", start_step=12, env={"MALLOC_TRIM_THRESHOLD_": "1"})
    script = plan.shell() + '\nprintf "%s|" "$RUN_DIR" "$CHECKPOINT_EVERY" "$RAY_ENABLED" "$GPUS_NEEDED" ' \
        '"$CPUS_NEEDED" "$START_STEP"; bash -c \'printf "%s" "$MALLOC_TRIM_THRESHOLD_"\''
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == f"{tmp_path}/a b$c|5|1|2.0|all-free|12|1"


def test_plan_command_refuses_a_finished_default_run_and_a_bad_config(tmp_path, monkeypatch, capsys):
    for key in ("SCORE_RL_RUN_DIR", "SLURM_RESTART_COUNT", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_JOB_NAME", "j")
    run_dir = slurm.run_dir_for(str(QUICKSTART), [], os.environ, str(tmp_path))
    os.makedirs(run_dir)
    (tmp_path / run_dir / rundir.COMPLETE).write_text("{}")
    assert slurm.main(["plan", "--cwd", str(tmp_path), "--", str(QUICKSTART)]) == 1
    assert "holds a finished run (run_complete.json)" in capsys.readouterr().err
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeue of the job that finished it goes on
    assert slurm.main(["plan", "--cwd", str(tmp_path), "--", str(QUICKSTART)]) == 0
    assert f"RUN_DIR={run_dir}" in capsys.readouterr().out
    assert slurm.main(["plan", "--cwd", str(tmp_path), "--", str(QUICKSTART), "shaping.alpah=1"]) == 2
    assert "did you mean 'shaping.alpha'" in capsys.readouterr().err


def test_env_command_prints_the_malloc_exports(monkeypatch, capsys):
    for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                "GLIBC_TUNABLES"):
        monkeypatch.delenv(key, raising=False)
    assert slurm.main(["env"]) == 0
    assert capsys.readouterr().out.split() == ["export", f"MALLOC_MMAP_THRESHOLD_={32 << 20}", "export",
                                               f"MALLOC_TRIM_THRESHOLD_={512 << 20}"]
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    assert slurm.main(["env"]) == 0 and capsys.readouterr().out == ""


# --- the Ray node wrapper --------------------------------------------------------------------------------------
def test_ray_node_runs_its_command_with_sigterm_blocked_and_passes_its_status():
    probe = "awk '/^SigBlk:/ { print $2 }' /proc/self/status; exit 3"
    result = subprocess.run([sys.executable, "-m", "score_rl.launch.slurm", "ray-node", "bash", "-c", probe],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert int(result.stdout.strip(), 16) & (1 << (signal.SIGTERM - 1))


# --- the script itself: a stop during the final evaluation -----------------------------------------------------
def test_a_job_stopped_during_the_final_evaluation_is_requeued(tmp_path):
    """final/ exists but run_complete.json does not (the final evaluation was running): the run is not finished, so
    SIGUSR1 before the time limit must requeue the job, as the trainer tells the user to re-run."""
    from tests.test_docs import _read, _stopped_job

    run_dir = tmp_path / "run"
    (run_dir / rundir.FINAL).mkdir(parents=True)
    (run_dir / rundir.FINAL / "config.json").write_text("{}")
    rc, stderr, _ = _stopped_job(tmp_path, signal.SIGUSR1, {"SCORE_RL_RUN_DIR": str(run_dir),
                                                            "STUB_CHECKPOINT_STEP": "12"})
    assert rc == 0, stderr
    assert "training finished" not in stderr
    assert "scontrol requeue 4242" in _read(tmp_path / "calls"), stderr
