"""Bad input: one clear line naming the problem, a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import QUICKSTART


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "score_rl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("override, expected", [
    ("shaping.alpah=3", "unknown config key 'shaping.alpah' (did you mean 'shaping.alpha'?)"),
    ("rollout.num_workers=two", "config key 'rollout.num_workers' expects int, got 'two'"),
    ("model.path=/nonexistent/model", "model.path '/nonexistent/model' is not a Hugging Face model directory"),
    ("algo.advantage=ppo", "config key 'algo.advantage' must be one of"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, override, expected):
    proc = _cli("train", str(QUICKSTART), override, f"trainer.run_dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists(), "a failed start must not leave a run directory behind"


def test_missing_config_file(tmp_path):
    proc = _cli("train", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "config file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_prints_the_metrics_table(tmp_path, tiny_model_path):
    from tests.conftest import TINY_OVERRIDES

    proc = _cli("eval", str(QUICKSTART), *TINY_OVERRIDES, "eval.num_problems=6", "ray.enabled=false", "--model",
                tiny_model_path,
                "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "Acc@t1" in proc.stdout and "Δi→c" in proc.stdout
    assert (tmp_path / "out" / "episodes.jsonl").read_text().count("\n") == 6


@pytest.mark.parametrize("args, expected", [
    (["train", str(QUICKSTART), "--method", "pair-sft"], "unknown method 'pair-sft' (did you mean 'pair_sft'?)"),
    (["sweep", "nope.yaml"], "sweep file not found: nope.yaml"),
    (["sweep"], "needs a sweep file"),
    (["sweep", "--report", "no-such-dir"], "no-such-dir/sweep.json not found"),
])
def test_method_and_sweep_bad_input_is_one_line(tmp_path, args, expected):
    proc = _cli(*args, cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr
