"""Bad input: one clear line naming the problem, a non-zero exit, no traceback."""

from __future__ import annotations

import json
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


# --- the 14 bad inputs that gave a traceback or were accepted silently ---------------------------
# Run in-process through main() (the same code path as the console script, without a 5 s interpreter start each).
# Each must be one line `score-rl: error: ...` naming the file / key, exit 2, before any work: nothing trains (a
# missed check would start a run and fail these tests on the output), no run directory is left behind.
MATH = QUICKSTART.parent / "score_math.yaml"


def _main_error(capsys, *args):
    from score_rl.cli import main

    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert rc == 2, captured
    assert len(lines) == 1 and lines[0].startswith("score-rl: error: "), captured
    assert "Traceback" not in captured.err and not captured.out.strip(), captured
    return lines[0][len("score-rl: error: "):]


@pytest.mark.parametrize("command, override, expected", [
    ("train", "learner.lr=-1", "config key 'learner.lr' must be > 0, got -1.0"),
    ("train", "rollout.cpus_per_worker=0", "config key 'rollout.cpus_per_worker' must be > 0, got 0.0"),
    ("train", "shaping.alpha=nan", "config key 'shaping.alpha' must be a finite number, got nan"),
    ("eval", "eval.temperature=-1", "config key 'eval.temperature' must be >= 0, got -1.0"),
    ("train", "trainer.eval_problems=-5", "config key 'trainer.eval_problems' must be >= 0, got -5"),
    ("train", "trainer.checkpoint_every=-1", "config key 'trainer.checkpoint_every' must be >= 0, got -1"),
    ("train", "learner.grad_clip=-1", "config key 'learner.grad_clip' must be >= 0 (0 = no clipping), got -1.0"),
    ("train", "shaping.beta1=-1", "config key 'shaping.beta1' must be >= 0, got -1.0"),
])
def test_out_of_range_values_through_the_cli(tmp_path, capsys, command, override, expected):
    run = tmp_path / "run"
    assert _main_error(capsys, command, QUICKSTART, override, f"trainer.run_dir={run}",
                       f"model.cache_dir={tmp_path / 'cache'}") == expected
    assert not run.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("command", ["train", "eval"])
def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys, command):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  path: null\nshaping:\n  alpha: [1, 2\nlearner:\n  lr: 1e-5\n")
    message = _main_error(capsys, command, config, f"trainer.run_dir={tmp_path / 'run'}")
    assert message.startswith(f"config file {config}:5:") and "not valid YAML" in message, message
    assert not (tmp_path / "run").exists()


def _not_a_model(tmp_path):
    """A folder with a config.json that is not a model's (no model_type), beside made-up weights and tokenizer."""
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.mark.parametrize("command, how", [("train", "model.path"), ("eval", "model.path"), ("eval", "--model")])
def test_a_folder_whose_config_json_is_not_a_model(tmp_path, capsys, command, how):
    folder = _not_a_model(tmp_path)
    model_arg = ["--model", folder] if how == "--model" else [f"model.path={folder}"]
    message = _main_error(capsys, command, QUICKSTART, f"trainer.run_dir={tmp_path / 'run'}", *model_arg)
    named = f"--model '{folder}'" if how == "--model" else f"model.path '{folder}'"
    assert message.startswith(f"{named}: {folder / 'config.json'} is not a model's config"), message
    assert "model_type" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("files, expected", [
    ({"config.json": '{"model_type": "qwen2"'}, "config.json is not a model's config (It looks like"),
    ({"config.json": '{"model_type": "qwen2"}', "tokenizer.json": "{}"}, "has no weights (model.safetensors"),
    ({"config.json": '{"model_type": "qwen2"}', "model.safetensors.index.json":
      '{"weight_map": {"a": "model-00001-of-00002.safetensors"}}'}, "['model-00001-of-00002.safetensors'] named in"),
    ({"config.json": '{"model_type": "qwen2"}', "model.safetensors": ""}, "has no usable tokenizer"),
    ({"config.json": '{"model_type": "t5"}', "model.safetensors": ""}, "model_type 't5'"),
    ({}, "is not a Hugging Face model directory (no config.json)"),
])
def test_other_broken_model_folders_are_one_line(tmp_path, capsys, files, expected):
    folder = tmp_path / "model"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    message = _main_error(capsys, "train", QUICKSTART, f"model.path={folder}", f"trainer.run_dir={tmp_path / 'run'}")
    assert message.startswith(f"model.path '{folder}'") and expected in message, message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, expected", [
    (b'{"problem": "1+1", "answer": "2"}\n{"problem": "caf\xe9", "answer": "3"}\n',
     "{path}:2: not UTF-8 text (byte 0xe9 at byte offset 50 of the file)"),
    (b"", "{path} holds no records (it is empty)"),
    (b"\n  \n", "{path} holds no records"),
])
@pytest.mark.parametrize("command, key", [("train", "train_path"), ("eval", "test_path")])
def test_bad_math_data_files(tmp_path, capsys, content, expected, command, key):
    """model.path=null: the tiny base model would be built (minutes) if the env's data were not read first."""
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    message = _main_error(capsys, command, MATH, "model.path=null", f"env.params.{key}={data}",
                          f"trainer.run_dir={tmp_path / 'run'}", f"model.cache_dir={tmp_path / 'cache'}")
    assert message == "math data file " + expected.format(path=data)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_non_utf8_score_input_names_the_file_line_and_offset(tmp_path, capsys):
    src = tmp_path / "responses.jsonl"
    src.write_bytes(b'{"problem_id": "test/27+58", "response": "85"}\n'
                    b'{"problem_id": "test/31+92", "response": "\xff"}\n')
    out = tmp_path / "scored.jsonl"
    message = _main_error(capsys, "score", src, "--env", "arithmetic", "--output", out)
    assert message == f"{src}:2: not UTF-8 text (byte 0xff at byte offset 89 of the file)"
    assert not out.exists() and not (tmp_path / "scored.jsonl.tmp").exists()


def test_score_checks_the_output_before_anything_else(tmp_path, capsys, monkeypatch):
    src = tmp_path / "responses.jsonl"
    src.write_text('{"problem_id": "test/27+58", "response": "85"}\n')

    def no_env(*args, **kwargs):  # the env (data loading, verifier pools, sandboxes) must not even start
        raise AssertionError("the environment was made before --output was checked")

    monkeypatch.setattr("score_rl.envs.make_env", no_env)
    out = tmp_path / "missing_dir" / "scored.jsonl"
    assert _main_error(capsys, "score", src, "--env", "arithmetic", "--output", out) == \
        f"--output {out}: cannot write there (No such file or directory)"
    assert _main_error(capsys, "score", src, "--env", "arithmetic", "--output", tmp_path) == \
        f"--output {tmp_path}: is a directory"
