"""A relative trainer.run_dir inside a Ray job's working_dir copy is refused in one line (no Ray started: the job's
environment and working directory are recreated as Ray 2.60's job supervisor sets them up). Default suite; the real
`ray job submit` of the same case is in test_ray_job_submit.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from score_rl.config import ConfigError
from score_rl.launch.distributed import check_run_dir_is_kept, ray_job_working_dir_copy
from tests.conftest import QUICKSTART, REPO


def _job_env(working_dir=True) -> str:
    runtime_env = {"working_dir": "gcs://_ray_pkg_a1922813ecbed548.zip", "env_vars": {}} if working_dir else {}
    return json.dumps({"runtime_env": runtime_env, "metadata": {"job_submission_id": "raysubmit_x"}})


@pytest.fixture
def job_copy(tmp_path, monkeypatch):
    """cwd = <temp dir>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>, as `ray job submit
    --working-dir .` starts the entrypoint (observed with Ray 2.60)."""
    copy = tmp_path / "session_2026-11-22_20-30-29_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_a19228"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", _job_env())
    return copy


def test_relative_run_dir_in_a_working_dir_copy_is_refused_in_one_line(job_copy):
    assert ray_job_working_dir_copy() == str(job_copy)
    with pytest.raises(ConfigError) as err:
        check_run_dir_is_kept("runs/quickstart-20261122")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("trainer.run_dir=runs/quickstart-20261122 is relative, and this Ray job runs in Ray's "
                              "temporary copy of its working_dir")
    assert "absolute trainer.run_dir" in message and "trainer.run_dir=$PWD/runs/quickstart-20261122" in message


def test_eval_output_dir_is_checked_the_same_way(job_copy, tmp_path, capsys):
    from score_rl.cli import main

    # before any model is loaded (model.path would be built into the cache dir otherwise)
    assert main(["eval", str(QUICKSTART), f"model.cache_dir={tmp_path / 'cache'}", "--output", "eval_out"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("score-rl: error: eval.output_dir=eval_out is relative") and "\n" not in err
    assert not (tmp_path / "cache").exists()


def test_absolute_run_dir_in_a_working_dir_copy_is_accepted(job_copy, tmp_path):
    check_run_dir_is_kept(str(tmp_path / "runs" / "x"))


def test_a_subdirectory_of_the_copy_counts_too(job_copy, monkeypatch):
    (job_copy / "configs").mkdir()
    monkeypatch.chdir(job_copy / "configs")
    with pytest.raises(ConfigError):
        check_run_dir_is_kept("runs/x")


@pytest.mark.parametrize("case", ["not a job", "job without working_dir", "job that cd'ed elsewhere", "bad json"])
def test_relative_run_dir_elsewhere_is_unchanged(case, job_copy, tmp_path, monkeypatch):
    if case == "not a job":
        monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    elif case == "job without working_dir":
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", _job_env(working_dir=False))
    elif case == "job that cd'ed elsewhere":  # ray job submit --working-dir . -- bash -c "cd /data && score-rl ..."
        monkeypatch.chdir(tmp_path)
    else:
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{not json")
    assert ray_job_working_dir_copy() is None
    check_run_dir_is_kept("runs/x")


def test_score_rl_train_refuses_before_any_work(job_copy, tmp_path):
    """Through the CLI: exit 2, one line on stderr, no run dir, no model built (model.cache_dir stays empty)."""
    import os

    env = {**os.environ, "RAY_JOB_CONFIG_JSON_ENV_VAR": _job_env(), "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "score_rl.cli", "train", str(QUICKSTART), "trainer.run_dir=runs/x",
                          f"model.cache_dir={tmp_path / 'cache'}"], cwd=job_copy, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("score-rl: error: trainer.run_dir=runs/x is relative"), res.stderr
    assert not (job_copy / "runs").exists() and not (tmp_path / "cache").exists()
