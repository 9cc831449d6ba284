"""``score-rl sweep``: the plan (run ids, overrides, errors), the statistics (against numpy / scipy on fixed
numbers), the report, the SLURM array script (and one of its tasks against stand-ins for SLURM and Ray), and a real
sweep interrupted with Ctrl-C and re-run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from score_rl.errors import ConfigError
from score_rl.launch import sweep as sw
from score_rl.launch.sweep import mean_ci, paired_difference, write_report
from tests.conftest import QUICKSTART, REPO, TINY_OVERRIDES


def _write(tmp_path: Path, **spec) -> Path:
    body = {"name": "t", "base": str(QUICKSTART), "out_dir": str(tmp_path / "out"), **spec}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# --- the plan ---------------------------------------------------------------------------------------------------------
def test_plan_is_variants_times_grid_times_seeds_with_deterministic_run_dirs(tmp_path):
    path = _write(tmp_path, seeds=[0, 3], variants={"score": {"method": "score"},
                                                    "plain": {"method": "multi_turn_rl",
                                                              "overrides": ["shaping.beta1=0.05"]}},
                  grid={"learner.lr": [1e-4, 3e-4]}, eval=["eval.temperature=0.0"], reference="score")
    plan = sw.load_sweep(path)
    ids = [r.run_id for r in plan.runs]
    assert ids == [f"{v}__learner.lr={lr}__seed{s}" for v in ("score", "plain") for lr in ("0.0001", "0.0003")
                   for s in (0, 3)]
    assert [r.run_dir for r in plan.runs] == [r.run_dir for r in sw.load_sweep(path).runs]
    run = next(r for r in plan.runs if r.run_id == "plain__learner.lr=0.0003__seed3")
    assert run.run_dir == str(tmp_path / "out" / "runs" / run.run_id) and run.group == "plain__learner.lr=0.0003"
    from score_rl.config import load_config

    cfg = load_config(plan.base, run.overrides)
    assert (cfg.shaping.alpha, cfg.shaping.stage1_steps, cfg.shaping.beta1) == (0.0, 0, 0.05)
    assert (cfg.learner.lr, cfg.trainer.seed, cfg.trainer.run_dir) == (3e-4, 3, run.run_dir)
    assert cfg.eval.temperature == 0.0 and cfg.trainer.checkpoint_every == 10


@pytest.mark.parametrize("spec, message", [
    ({"variants": {"a": {"method": "scor"}}}, "sweep variant 'a': unknown method 'scor' (did you mean 'score'?)"),
    ({"variants": {"a": {"overrides": ["shaping.alpah=1"]}}},
     "sweep run 'a__seed0': unknown config key 'shaping.alpah'"),
    ({"variants": {"a": {}}, "seedz": [1]}, "key 'seedz'"),
    ({"variants": {"a": {}}, "reference": "b"}, "'reference': 'b' is not a variant"),
    ({"variants": {"a": {}}, "eval": ["learner.lr=1"]}, "not an override of the end-of-run evaluation"),
    ({"variants": {"a": {}}, "eval": ["eval.num_turns=3"]}, "not an override of the end-of-run evaluation"),
    ({"variants": {"a": {"method": "no_shaping"}}, "grid": {"shaping.alpha": [1, 2]}},
     "'grid.shaping.alpha' would undo what variant 'a' (method 'no_shaping') sets"),
    ({"variants": {"a": {}}, "grid": {"model.cache_dir": ["/tmp/c a", "/tmp/c_a"]}}, None),
    ({"variants": {"a": {"overrides": ["shaping.alpha=5.0"]}}, "grid": {"shaping.alpha": [1.0, 2.0]}},
     "sweep variant 'a' sets 'shaping.alpha', which the grid also sets"),
    ({"variants": {"a": {"overrides": ["eval.temperature=0.7"]}}, "eval": ["eval.temperature=0.0"]},
     "sets 'eval.temperature', which the sweep sets itself (the eval list)"),
    ({"variants": {"a": {}}, "overrides": ["trainer.checkpoint_every=3"]},
     "sweep key 'overrides' sets 'trainer.checkpoint_every', which the sweep sets itself (per run)"),
    ({"variants": {}}, "names no variant"),
    ({"variants": {"a__b": {}}}, "must use letters"),
    ({"variants": {"a": {}}, "backend": {"name": "k8s"}}, "must be local, ray or slurm"),
])
def test_bad_sweep_files_fail_with_one_line_naming_the_problem(tmp_path, spec, message):
    if message is None:  # values that sanitise alike still get distinct run directories
        runs = sw.load_sweep(_write(tmp_path, **spec)).runs
        assert len({r.run_dir for r in runs}) == 2
        return
    with pytest.raises(ConfigError) as err:
        sw.load_sweep(_write(tmp_path, **spec))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_presets_define_their_variant_over_the_sweeps_common_overrides(tmp_path):
    from score_rl.config import load_config

    plan = sw.load_sweep(_write(tmp_path, overrides=["shaping.alpha=5.0", "method.name=star"],
                                variants={"score": {}, "flat": {"method": "no_shaping"},
                                          "flat2": {"method": "no_shaping", "overrides": ["shaping.alpha=2.0"]}}))
    cfgs = {r.variant: load_config(plan.base, r.overrides) for r in plan.runs}
    assert (cfgs["score"].shaping.alpha, cfgs["score"].method.name) == (5.0, "score")
    assert cfgs["flat"].shaping.alpha == 0.0, "the sweep-wide alpha must not undo the no_shaping preset"
    assert cfgs["flat2"].shaping.alpha == 2.0, "a variant's own overrides refine its preset"


def test_a_run_directory_started_with_another_config_is_refused(tmp_path):
    path = _write(tmp_path, variants={"a": {}})
    run = sw.load_sweep(path).runs[0]
    Path(run.run_dir).mkdir(parents=True)
    from score_rl.config import load_config, save_config

    save_config(load_config(sw.load_sweep(path).base, run.overrides + ["shaping.beta1=0.5"]),
                Path(run.run_dir) / "config.yaml")
    with pytest.raises(ConfigError, match="was started with a different config .first difference: 'shaping.beta1'"):
        sw.load_sweep(path)


# --- statistics ----------------------------------------------------------------------------------------------------
def test_mean_and_ci_match_numpy_and_scipy():
    x = [0.31, 0.42, 0.38, 0.29, 0.45]
    s = mean_ci(x)
    assert s.n == 5 and s.mean == pytest.approx(np.mean(x)) and s.std == pytest.approx(np.std(x, ddof=1))
    low, high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert (s.ci_low, s.ci_high) == (pytest.approx(low), pytest.approx(high))
    # by hand: t(0.975, 4) = 2.7764451
    assert s.ci_high - s.mean == pytest.approx(2.7764451 * np.std(x, ddof=1) / math.sqrt(5), rel=1e-6)
    one = mean_ci([0.5])
    assert one.mean == 0.5 and math.isnan(one.std) and math.isnan(one.ci_low)


def test_paired_difference_matches_scipy_ttest_rel():
    variant = {0: 0.62, 1: 0.55, 2: 0.71, 5: 0.40}
    reference = {0: 0.58, 1: 0.57, 2: 0.60, 7: 0.99}  # seeds 5 and 7 are not shared: left out
    s = paired_difference(variant, reference)
    a, b = [0.62, 0.55, 0.71], [0.58, 0.57, 0.60]
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert s.n == 3 and s.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert (s.ci_low, s.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))


# --- the report ------------------------------------------------------------------------------------------------------
def _fake_run(run_dir: Path, acc1: float, acc2: float, unchanged: float, steps: int = 3):
    run_dir.mkdir(parents=True)
    m = {"acc_t1": acc1, "acc_t2": acc2, "delta": acc2 - acc1, "delta_i2c": max(acc2 - acc1, 0),
         "delta_c2i": max(acc1 - acc2, 0), "unchanged": unchanged}
    base = {"acc_t1": 0.5, "acc_t2": 0.45, "delta": -0.05, "delta_i2c": 0.02, "delta_c2i": 0.07, "unchanged": 0.6}
    (run_dir / "eval_before_after.json").write_text(json.dumps({"base": base, "trained": m}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, **m}) + "\n" for s in range(steps)))
    (run_dir / "run_complete.json").write_text("{}")


def test_report_pairs_each_grid_point_with_the_reference_at_that_point(tmp_path):
    path = _write(tmp_path, seeds=[0, 1], variants={"score": {}, "plain": {"method": "multi_turn_rl"}},
                  grid={"learner.lr": [0.0001, 0.0003]}, reference="score")
    plan = sw.load_sweep(path)
    sw.write_plan(plan)
    for run in plan.runs:  # plain beats score by 0.1 Acc@t1 at lr 1e-4 and by 0.2 at 3e-4
        lr_bonus = 0.1 if "0.0001" in run.run_id else 0.2
        _fake_run(Path(run.run_dir), 0.5 + (lr_bonus if run.variant == "plain" else 0.0) + 0.01 * run.seed, 0.6, 0.5)
    write_report(plan.out_dir, log=lambda *_: None)
    paired = [line.split(",") for line in (plan.out_dir / "report" / "paired.csv").read_text().splitlines()[1:]]
    acc1 = {(p[0], p[1]): float(p[4]) for p in paired if p[2] == "acc_t1"}
    assert acc1 == {("plain__learner.lr=0.0001", "score__learner.lr=0.0001"): pytest.approx(0.1),
                    ("plain__learner.lr=0.0003", "score__learner.lr=0.0003"): pytest.approx(0.2)}


def test_report_tables_and_plots_from_run_directories(tmp_path):
    path = _write(tmp_path, seeds=[0, 1, 2], variants={"score": {}, "plain": {"method": "multi_turn_rl"}},
                  reference="score")
    plan = sw.load_sweep(path)
    sw.write_plan(plan)
    numbers = {"score": [(0.5, 0.6, 0.4), (0.52, 0.64, 0.3), (0.48, 0.55, 0.5)],
               "plain": [(0.7, 0.7, 1.0), (0.69, 0.71, 0.9)]}  # plain seed 2 unfinished
    for run in plan.runs:
        vals = numbers[run.variant]
        if run.seed < len(vals):
            _fake_run(Path(run.run_dir), *vals[run.seed])
    md = write_report(plan.out_dir, log=lambda *_: None).read_text()
    assert "Unfinished runs (not in the table): plain__seed2" in md
    rows = {(r[0], r[1]): r for r in (line.split(",") for line in
                                        (plan.out_dir / "report" / "summary.csv").read_text().splitlines()[1:])}
    delta = [a2 - a1 for a1, a2, _ in numbers["score"]]
    assert float(rows[("score", "delta")][3]) == pytest.approx(np.mean(delta))
    assert float(rows[("score", "edit_rate")][3]) == pytest.approx(1 - np.mean([u for *_, u in numbers["score"]]))
    assert rows[("plain", "acc_t1")][2] == "2"
    paired = [line.split(",") for line in (plan.out_dir / "report" / "paired.csv").read_text().splitlines()[1:]]
    acc1 = next(p for p in paired if p[2] == "acc_t1")
    assert acc1[:2] == ["plain", "score"] and acc1[3] == "2"
    ci = stats.ttest_rel([0.7, 0.69], [0.5, 0.52]).confidence_interval()
    assert (float(acc1[6]), float(acc1[7])) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert "| score | 3 |" in md and "| plain − score | 2 |" in md and "base model (untrained)" in md
    assert (plan.out_dir / "report" / "bars.png").stat().st_size > 0
    assert (plan.out_dir / "report" / "curves.png").stat().st_size > 0


# --- SLURM -----------------------------------------------------------------------------------------------------------
def test_slurm_dry_run_writes_an_array_script_that_passes_bash_n_and_shellcheck(tmp_path):
    path = _write(tmp_path, seeds=[0, 1], variants={"score": {}, "single": {"method": "single_turn_rl"}},
                  backend={"name": "slurm", "slurm": {"throttle": 3, "partition": "cpu",
                                                       "setup": ["source .venv/bin/activate"]}})
    finished = sw.load_sweep(path).runs[0]
    Path(finished.run_dir).mkdir(parents=True)
    (Path(finished.run_dir) / sw.COMPLETE).write_text("{}")
    printed = []
    sw.run_sweep(path, dry_run=True, log=printed.append)
    script = tmp_path / "out" / "slurm" / "t.sbatch"
    text = script.read_text()
    assert "#SBATCH --array=0-2%3" in text and "#SBATCH --partition=cpu" in text
    # slurm/score_rl.sbatch's directives for stop signals and requeue; not its whole node per task
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=B:USR1@300" in text and "--exclusive" not in text
    assert text.index("source .venv/bin/activate") < text.index("set -eo pipefail")  # the body's first line
    assert "requeue_or_stop" in text, "each task runs the body of slurm/score_rl.sbatch"
    for run in sw.load_sweep(path).runs[1:]:
        assert f"# {run.run_id}" in text and f"RUN_ID={run.run_id}" in text
        assert f"export SCORE_RL_RUN_DIR={run.run_dir}" in text
    assert "trainer.run_dir=" not in text.split("set -eo pipefail")[0], "the body sets it from SCORE_RL_RUN_DIR"
    assert finished.run_id not in text, "a finished run is left out of the array"
    assert any("sbatch" in line for line in printed)
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("slurm, message", [
    ({"partition": "cpu\ntouch /tmp/owned"}, "backend.slurm.partition"),
    ({"mem": "8G; rm -rf ~"}, "backend.slurm.mem"),
    ({"sbatch_args": ["--qos=high --exclusive"]}, "backend.slurm.sbatch_args"),
])
def test_slurm_values_cannot_inject_shell(tmp_path, slurm, message):
    path = _write(tmp_path, variants={"a": {}}, backend={"name": "slurm", "slurm": slurm})
    with pytest.raises(ConfigError, match=message):
        sw.run_sweep(path, dry_run=True, log=lambda *_: None)


def test_slurm_python_may_be_a_command(tmp_path):
    path = _write(tmp_path, variants={"a": {}}, backend={"name": "slurm", "slurm": {"python": "uv run python"}})
    sw.run_sweep(path, dry_run=True, log=lambda *_: None)
    assert "export SCORE_RL_PYTHON='uv run python'" in (tmp_path / "out" / "slurm" / "t.sbatch").read_text()


def test_a_slurm_array_task_runs_its_run_through_the_sbatch_body(tmp_path):
    """One task of the array against stand-ins for srun, scontrol, ray and score-rl (tests/test_docs.py): it trains
    its own run with the sbatch's arguments and its own local Ray (tasks share nodes: no cluster, no `ray stop`), and
    SIGUSR1 before the time limit requeues it."""
    from tests.test_docs import BASH, _read, _simulated_job

    path = _write(tmp_path, seeds=[0, 1], variants={"a": {}}, backend={"name": "slurm"})
    sw.run_sweep(path, dry_run=True, log=lambda *_: None)
    run = sw.load_sweep(path).runs[1]
    stub = tmp_path / "job"
    stub.mkdir()
    env, _ = _simulated_job(stub, ["n1"], {"SLURM_ARRAY_TASK_ID": "1", "STUB_TRAIN_SECONDS": "60",
                                           "STUB_CHECKPOINT_STEP": "2"})
    proc = subprocess.Popen([BASH, str(tmp_path / "out" / "slurm" / "t.sbatch")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (stub / "driver_ready").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    argv = (stub / "argv").read_bytes().decode().split("\0")[:-1]
    own = [o for o in run.overrides if not o.startswith(("trainer.run_dir=", "trainer.progress_bar="))]
    assert argv == ["train", sw.load_sweep(path).base, "trainer.progress_bar=false",
                    f"trainer.run_dir={run.run_dir}", *own]
    assert not (stub / "ray_start").exists() and not (stub / "ray_stop").exists()
    assert f"score-rl sweep: run {run.run_id}" in stderr
    assert "scontrol requeue 4242" in _read(stub / "calls") and "resumes from step 2" in stderr
    assert len(_read(Path(run.run_dir) / "slurm" / "restarts.log")) == 1


# --- a real sweep: Ctrl-C, then re-run --------------------------------------------------------------------------------
def _tiny_sweep(tmp_path, tiny_model_path, variants, **extra) -> Path:
    overrides = [o for o in TINY_OVERRIDES if not o.startswith(("model.tiny", "trainer.progress_bar"))] + [
        f"model.path={tiny_model_path}", "ray.enabled=false", "trainer.steps=6"]
    return _write(tmp_path, seeds=[0], variants={v: {} for v in variants}, overrides=overrides, checkpoint_every=2,
                  **extra)


def _sweep_cmd(path, *args):
    return [sys.executable, "-m", "score_rl.cli", "sweep", str(path), *args]


def test_interrupted_sweep_reruns_only_what_is_unfinished(tmp_path, tiny_model_path):
    path = _tiny_sweep(tmp_path, tiny_model_path, ["a", "b", "c"])
    runs = {r.variant: Path(r.run_dir) for r in sw.load_sweep(path).runs}
    log = open(tmp_path / "first.log", "w")
    # SIGINT back to its default in the child: a suite started in the background by a non-interactive shell inherits
    # it ignored, and the sweep (rightly) leaves an ignored SIGINT alone, as under nohup
    proc = subprocess.Popen(_sweep_cmd(path), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while "start  b__seed0" not in (tmp_path / "first.log").read_text():  # a is finished and b is running
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()
        time.sleep(0.2)
    assert (runs["a"] / sw.COMPLETE).is_file()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends to the sweep's process group
    assert proc.wait(timeout=120) == 130
    first = (tmp_path / "first.log").read_text()
    assert "stopped b" in first and "start  c" not in first
    assert not (runs["b"] / sw.COMPLETE).is_file() and not runs["c"].exists()
    done_a = (runs["a"] / sw.COMPLETE).stat().st_mtime_ns
    # the two unfinished runs side by side (--parallel 2: what is run is the sweep's choice, whatever the parallelism)
    again = subprocess.run(_sweep_cmd(path, "--parallel", "2"), cwd=REPO, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 runs, 1 finished, 2 to run" in again.stdout
    assert "start  a" not in again.stdout and "start  b" in again.stdout and "start  c" in again.stdout
    assert (runs["a"] / sw.COMPLETE).stat().st_mtime_ns == done_a, "a finished run is never redone"
    assert all((d / sw.COMPLETE).is_file() for d in runs.values())
    steps = [json.loads(line)["step"] for line in (runs["c"] / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(6))
    assert "| a | 1 |" in again.stdout and (tmp_path / "out" / "report" / "summary.csv").is_file()


@pytest.fixture(scope="module")
def ok_and_broken(tmp_path_factory, tiny_model_path):
    """A local sweep of a run that trains (ok) and one that fails when it runs (broken): its directory and log. Its ok
    run is also the local counterpart of the Ray backend's runs (test_ray_backend_runs_each_run_as_a_job_on_a_running_
    cluster): _tiny_sweep's runs, variant {}, seed 0, all have the same config but for their run directory."""
    tmp_path = tmp_path_factory.mktemp("failed_sweep")
    path = _tiny_sweep(tmp_path, tiny_model_path, ["ok"])
    spec = yaml.safe_load(path.read_text())
    spec["variants"]["broken"] = {"overrides": [f"model.path={tmp_path / 'no-such-model'}"]}  # fails when it runs
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = []
    sw.run_sweep(path, log=out.append)
    return tmp_path, "\n".join(out)


def test_a_failed_run_is_reported_and_does_not_stop_the_others(ok_and_broken):
    tmp_path, text = ok_and_broken
    assert "FAILED broken__seed0" in text and "done   ok__seed0" in text
    failed = json.loads((tmp_path / "out" / "runs" / "broken__seed0" / sw.FAILED).read_text())
    assert failed["returncode"] == 2 and "no-such-model" in failed["log_tail"]
    assert "Failed runs (failed.json in their directories): broken__seed0" in text


# --- Ray: each run a job on a real cluster started with `ray start --head` --------------------------------------------
@pytest.fixture
def ray_head(tmp_path):
    """A real single-node Ray cluster with its dashboard (the Jobs API), stopped afterwards whatever happens."""
    import socket

    def port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    ray_bin = str(Path(sys.executable).parent / "ray")
    gcs, dashboard = port(), port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run([ray_bin, "start", "--head", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
                              "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats"],
                             capture_output=True, text=True, env=env, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_ray_backend_runs_each_run_as_a_job_on_a_running_cluster(tmp_path, tiny_model_path, ok_and_broken, ray_head):
    path = _tiny_sweep(tmp_path, tiny_model_path, ["a", "b"],
                       backend={"name": "ray", "parallel": 2, "ray": {"address": ray_head, "poll_s": 0.5}})
    out = []
    sw.run_sweep(path, log=out.append)
    text = "\n".join(out)
    assert text.count("as Ray job") == 2 and "done   a__seed0" in text and "done   b__seed0" in text, text
    from ray.job_submission import JobSubmissionClient

    jobs = [j for j in JobSubmissionClient(ray_head).list_jobs() if (j.metadata or {}).get("sweep") == "t"]
    assert sorted(j.metadata["run"] for j in jobs) == ["a__seed0", "b__seed0"]
    assert all(str(j.status) == "SUCCEEDED" for j in jobs)
    for run in sw.load_sweep(path).runs:
        assert (Path(run.run_dir) / sw.COMPLETE).is_file()
        assert "final policy saved" in (Path(run.run_dir) / "train.log").read_text()
    assert "| a | 1 |" in text
    # the backend changes where a run runs, not what it computes: the same run on the local backend gives the same
    # numbers (ok_and_broken's ok run: a and b's config but for the run directory, trained by `score-rl sweep` locally)
    local = ok_and_broken[0] / "out" / "runs" / "ok__seed0"
    own = [o for o in sw.load_sweep(ok_and_broken[0] / "sweep.yaml").runs[0].overrides
           if not o.startswith("trainer.run_dir=")]
    for run in sw.load_sweep(path).runs:
        assert [o for o in run.overrides if not o.startswith("trainer.run_dir=")] == own, run.run_id
        on_ray, here = (json.loads((d / "eval_before_after.json").read_text()) for d in (Path(run.run_dir), local))
        assert on_ray == here, run.run_id
        rows = [[{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
                 for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (Path(run.run_dir), local)]
        assert rows[0] == rows[1], f"{run.run_id}: training metrics differ between the Ray and the local backend"
