"""Operating a run (in-process): stop signals checkpoint at the step boundary and resume exactly, a damaged checkpoint
falls back, a failed start leaves no junk, periodic eval, the best policy, progress lines, W&B offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from score_rl.train.signals import TrainingStopped
from score_rl.train.trainer import Trainer
from tests.conftest import REPO, TINY_OVERRIDES, tiny_config

BASE = ["ray.enabled=false", "trainer.steps=5", "trainer.eval_before_after=false"]


def _cfg(tmp_path, tiny_model_path, run, extra=()):
    return tiny_config(tmp_path / f"cfg-{run}", [f"model.path={tiny_model_path}", *BASE,
                                                 f"trainer.run_dir={tmp_path / run}", *extra])


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _untimed(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _weights(run_dir):
    from score_rl.utils import load_model

    return load_model(str(run_dir / "final")).state_dict()


@pytest.fixture
def reference(tmp_path, tiny_model_path):
    """An uninterrupted 5-step run."""
    trainer = Trainer(_cfg(tmp_path, tiny_model_path, "reference"), log=lambda *_: None)
    trainer.fit()
    trainer.close()
    return trainer.run_dir


def _stop_during(trainer, step, signum):
    """Send ``signum`` (as the handler would receive it) while step ``step`` runs."""
    original = trainer.train_step

    def train_step(s):
        if s == step:
            trainer.stop.request(signum)
        return original(s)
    trainer.train_step = train_step


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_checkpoints_the_step_and_a_restart_resumes_exactly(tmp_path, tiny_model_path, reference,
                                                                         signum):
    cfg = _cfg(tmp_path, tiny_model_path, "stopped")  # checkpoint_every=0: only the signal's checkpoint
    trainer = Trainer(cfg, log=lambda *_: None)
    _stop_during(trainer, 2, signum)
    with pytest.raises(TrainingStopped) as stopped:
        trainer.fit()
    trainer.close()
    assert stopped.value.exit_code == 128 + signum
    assert f"stopped by {signal.Signals(signum).name} after step 3 of 5" in stopped.value.message
    assert "checkpoints/step_0000003" in stopped.value.message and "\n" not in stopped.value.message
    assert (trainer.run_dir / "checkpoints" / "latest").read_text() == "step_0000003"
    assert not (trainer.run_dir / "final").exists()
    resumed = Trainer(_cfg(tmp_path, tiny_model_path, "stopped"), log=lambda *_: None)
    resumed.fit()
    resumed.close()
    assert resumed.start_step == 3
    rows = _rows(trainer.run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4], "each step logged once, in order"
    assert _untimed(rows) == _untimed(_rows(reference)), "the same metrics as the uninterrupted run"
    a, b = _weights(trainer.run_dir), _weights(reference)
    assert all(torch.equal(a[k], b[k]) for k in a), "the same final policy"


def test_a_second_ctrl_c_stops_at_once(tmp_path, tiny_model_path):
    trainer = Trainer(_cfg(tmp_path, tiny_model_path, "twice"), log=lambda *_: None)
    trainer.stop.request(signal.SIGINT)
    trainer.stop.request(signal.SIGTERM)  # a second TERM (SLURM signals every process, our sbatch one more): ignored
    with pytest.raises(KeyboardInterrupt):
        trainer.stop.request(signal.SIGINT)
    trainer.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_score_rl_train_on_a_signal_checkpoints_exits_128_plus_n_with_one_line(tmp_path, tiny_model_path, signum):
    run = tmp_path / "cli"
    cmd = [sys.executable, "-m", "score_rl.cli", "train", str(REPO / "configs" / "quickstart.yaml"), *TINY_OVERRIDES,
           f"model.path={tiny_model_path}", *BASE, "trainer.steps=200", f"trainer.run_dir={run}",
           "trainer.progress_interval_s=0"]
    # SIGINT as a terminal's Ctrl-C delivers it: not ignored (a background job of a non-interactive shell, as CI may
    # run us, inherits SIGINT ignored, and the trainer keeps ignored signals ignored)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # the progress lines (the bar is off): one per step with interval 0
        if line.startswith("step 2/200"):
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"score-rl: stopped by {name} after step ") and "to resume" in last, err
    step = int(last.split("after step ")[1].split()[0])
    assert 2 <= step < 200 and "Traceback" not in err
    assert (run / "checkpoints" / "latest").read_text() == f"step_{step:07d}"
    assert [r["step"] for r in _rows(run)] == list(range(step))


def test_a_damaged_latest_checkpoint_falls_back_and_the_run_still_matches(tmp_path, tiny_model_path, reference):
    cfg = _cfg(tmp_path, tiny_model_path, "damaged", ["trainer.checkpoint_every=2", "trainer.steps=4"])
    Trainer(cfg, log=lambda *_: None).fit()
    newest = tmp_path / "damaged" / "checkpoints" / "step_0000004"
    victim = max((p for p in newest.rglob("*") if p.is_file() and p.suffix == ".pt"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    logs = []
    resumed = Trainer(_cfg(tmp_path, tiny_model_path, "damaged", ["trainer.checkpoint_every=2"]), log=logs.append)
    resumed.fit()
    resumed.close()
    assert resumed.start_step == 2
    assert any("step_0000004 is damaged" in line and "truncated" in line for line in logs), logs
    assert _untimed(_rows(tmp_path / "damaged")) == _untimed(_rows(reference))


def test_keep_checkpoints_prunes(tmp_path, tiny_model_path):
    trainer = Trainer(_cfg(tmp_path, tiny_model_path, "keep", ["trainer.checkpoint_every=1",
                                                                "trainer.keep_checkpoints=2"]), log=lambda *_: None)
    trainer.fit()
    assert sorted(p.name for p in (trainer.run_dir / "checkpoints").iterdir()) == ["latest", "step_0000004",
                                                                                   "step_0000005"]


def test_a_failed_start_leaves_no_junk_run_dir_but_keeps_an_existing_one(tmp_path, tiny_model_path, monkeypatch):
    import score_rl.train.trainer as trainer_module

    def broken(*args):
        raise RuntimeError("actors failed to start")

    monkeypatch.setattr(trainer_module, "start_actors", broken)
    with pytest.raises(RuntimeError):
        Trainer(_cfg(tmp_path, tiny_model_path, "junk"), log=lambda *_: None)
    assert not (tmp_path / "junk").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    with pytest.raises(RuntimeError):
        Trainer(_cfg(tmp_path, tiny_model_path, "mine"), log=lambda *_: None)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "the user's"


def test_a_read_only_run_dir_is_one_line(tmp_path, tiny_model_path):
    from score_rl.config import ConfigError

    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(tmp_path)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        with pytest.raises(ConfigError, match="trainer.run_dir.*(Read-only file system|cannot create)"):
            Trainer(_cfg(tmp_path.parent / "cfgs", tiny_model_path, "x", [f"trainer.run_dir={tmp_path / 'run'}"]),
                    log=lambda *_: None)
    finally:
        subprocess.run(["umount", str(tmp_path)], check=True)


def test_eval_every_logs_held_out_metrics_and_best_keeps_the_best_policy(tmp_path, tiny_model_path):
    trainer = Trainer(_cfg(tmp_path, tiny_model_path, "best", ["trainer.eval_every=2", "trainer.best_metric=reward_t2",
                                                                "trainer.eval_problems=4"]), log=lambda *_: None)
    trainer.fit()
    rows = _rows(trainer.run_dir)
    assert [("eval/acc_t2" in r) for r in rows] == [False, True, False, True, False], "after steps 2 and 4, not 5"
    best = json.loads((trainer.run_dir / "best" / "best.json").read_text())
    values = [r["reward_t2"] for r in rows]
    assert best["value"] == max(values) and best["step"] == values.index(max(values)) + 1
    assert (trainer.run_dir / "best" / "config.json").is_file()
    marker = json.loads((trainer.run_dir / "best" / "score_rl_run.json").read_text())
    assert marker["steps"] == best["step"]


def test_progress_lines_when_the_bar_is_off(tmp_path):
    from score_rl.train.run_log import RunLogger

    printed = []
    logger = RunLogger(tmp_path, 3, 0, progress_bar=False, progress_interval_s=3600, print_fn=printed.append)
    for step in range(3):
        logger.log(step, {"stage": 1, "acc_t1": 0.25, "acc_t2": 0.5})
    logger.close()
    assert len(printed) == 2, "the first and the last step; the interval suppresses the one between"
    assert printed[0].startswith("step 1/3 (33%)") and "ETA" in printed[0] and "t2 0.50" in printed[0]
    assert printed[1].startswith("step 3/3 (100%)")


def test_wandb_offline_logs_the_run(tmp_path, tiny_model_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is part of .[dev]")
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = Trainer(_cfg(tmp_path, tiny_model_path, "wandb", ["trainer.steps=2", "logging.wandb=true",
                                                                 "logging.wandb_mode=offline"]), log=lambda *_: None)
    trainer.fit()
    runs = list((trainer.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, "one offline W&B run in run_dir/wandb"
    data = runs[0].read_bytes()  # protobuf records: keys as strings, values as JSON text (wandb 0.31 has no reader)
    for row in _rows(trainer.run_dir):
        for key in ("acc_t2", "loss", "grad_norm"):
            assert key.encode() in data and json.dumps(row[key]).encode() in data, (row["step"], key)
    assert (trainer.run_dir / "wandb_id").read_text().strip() in runs[0].name, "resumable under the same id"


def test_the_base_model_build_and_the_eval_report_progress_without_a_terminal(tmp_path, tiny_model_path, capsys):
    from score_rl.train.base_model import resolve_model_path

    logs = []
    resolve_model_path(tiny_config(tmp_path, ["model.tiny.warmup_examples=64"]), log=logs.append)  # stderr: no tty
    assert any(line.startswith("warm-up step 1/") and "loss" in line and "ETA" in line for line in logs), logs
    trainer = Trainer(_cfg(tmp_path, tiny_model_path, "eval-progress", ["trainer.eval_problems=4"]),
                      log=lambda *_: None)
    capsys.readouterr()
    trainer.evaluate()
    trainer.close()
    assert "held-out eval: problem 4/4 (100%)" in capsys.readouterr().out


def test_a_signal_during_start_up_stops_before_the_first_step(tmp_path, tiny_model_path):
    trainer = Trainer(_cfg(tmp_path, tiny_model_path, "early", ["trainer.eval_before_after=true"]),
                      log=lambda *_: None)
    trainer.stop.request(signal.SIGTERM)  # e.g. while the actors were starting
    with pytest.raises(TrainingStopped, match="after step 0 of 5; no step was finished"):
        trainer.fit()
    trainer.close()
    assert not (tmp_path / "early").exists(), "nothing was computed: the run dir this start created is removed"


def test_score_rl_train_handlers_survive_ray_init(tmp_path, tiny_model_path):
    """ray.init installs a SIGTERM handler of its own (a stack dump and exit); the trainer puts its own back."""
    import ray

    from score_rl.train.signals import StopRequest

    stop = StopRequest().install()
    try:
        trainer = Trainer(tiny_config(tmp_path, [f"model.path={tiny_model_path}", "ray.enabled=true", "ray.num_cpus=2",
                                                 "rollout.cpus_per_worker=0.5", "learner.cpus_per_rank=0.5"]),
                          log=lambda *_: None, stop=stop)
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        trainer.close()
    finally:
        stop.restore()
        ray.shutdown()


def test_a_signal_during_the_final_evaluation_stops_it_between_chunks(tmp_path, tiny_model_path, monkeypatch):
    import score_rl.rollout.worker as worker_module

    trainer = Trainer(_cfg(tmp_path, tiny_model_path, "final-eval",
                           ["trainer.steps=2", "trainer.eval_before_after=true", "trainer.eval_problems=100"]),
                      log=lambda *_: None)
    evaluate, run_sharded = trainer.evaluate, worker_module.run_sharded
    calls = {"evaluate": 0}

    def signalled_run_sharded(*args, **kwargs):  # SIGTERM while the final eval's first chunk (of 2) runs
        trainer.stop.request(signal.SIGTERM)
        return run_sharded(*args, **kwargs)

    def counted_evaluate():
        calls["evaluate"] += 1
        if calls["evaluate"] == 2:
            monkeypatch.setattr(worker_module, "run_sharded", signalled_run_sharded)
        return evaluate()

    trainer.evaluate = counted_evaluate
    with pytest.raises(TrainingStopped, match="after training all 2 steps .* the final evaluation was skipped"):
        trainer.fit()
    trainer.close()
    monkeypatch.setattr(worker_module, "run_sharded", run_sharded)
    assert ((trainer.run_dir / "final" / "config.json").is_file()
            and not (trainer.run_dir / "run_complete.json").exists())
    again = Trainer(_cfg(tmp_path, tiny_model_path, "final-eval", ["trainer.steps=2", "trainer.eval_before_after=true",
                                                                    "trainer.eval_problems=100"]), log=lambda *_: None)
    results = again.fit()  # nothing left to train: evaluates and completes
    again.close()
    assert set(results) == {"base", "trained"} and (again.run_dir / "run_complete.json").is_file()


def test_the_best_policy_is_the_one_as_of_the_resumed_checkpoint(tmp_path, tiny_model_path):
    extra = ["trainer.checkpoint_every=2", "trainer.keep_checkpoints=0", "trainer.best_metric=reward_t1",
             "trainer.best_mode=min"]
    Trainer(_cfg(tmp_path, tiny_model_path, "best-resume", [*extra, "trainer.steps=4"]), log=lambda *_: None).fit()
    ckpts = tmp_path / "best-resume" / "checkpoints"
    at_2 = json.loads((ckpts / "step_0000002" / "trainer_state.json").read_text())["best"]
    assert at_2["step"] <= 2 and (ckpts / "step_0000002" / "best" / "best.json").is_file()
    (ckpts / "step_0000004" / "trainer_state.json").write_text("")  # damaged: the resume goes back to step 2
    trainer = Trainer(_cfg(tmp_path, tiny_model_path, "best-resume", [*extra, "trainer.steps=5"]), log=lambda *_: None)
    trainer.resume()
    best = trainer.run_dir / "best"
    assert trainer.start_step == 2 and trainer.best == at_2
    assert json.loads((best / "best.json").read_text()) == at_2, "not a best found after the checkpoint"
    weights = next(best.glob("*.safetensors"))
    assert os.path.samefile(weights, ckpts / "step_0000002" / "best" / weights.name), "restored from the checkpoint"
    trainer.close()


def test_a_best_metric_the_run_does_not_log_is_said(tmp_path, tiny_model_path):
    from score_rl.config import ConfigError

    logs = []
    Trainer(_cfg(tmp_path, tiny_model_path, "typo", ["trainer.steps=3", "trainer.best_metric=reward_T2"]),
            log=logs.append).fit()  # said after 3 steps without it
    assert any("'trainer.best_metric' is 'reward_T2', which this run does not log" in line for line in logs), logs
    with pytest.raises(ConfigError, match="trainer.best_metric.*set trainer.eval_every"):
        _cfg(tmp_path, tiny_model_path, "noeval", ["trainer.best_metric=eval/acc_t2"])


# --- resumes that cannot mix runs ---------------------------------------------------------------------------------
def test_a_deleted_config_yaml_does_not_license_a_change(tmp_path, tiny_model_path):
    from score_rl.config import ConfigError

    Trainer(_cfg(tmp_path, tiny_model_path, "no-yaml", ["trainer.steps=2"]), log=lambda *_: None).fit()
    (tmp_path / "no-yaml" / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"^config key 'learner.lr' is 0.001 but checkpoint \S*step_0000002 was "
                                          r"trained with 0.0001 \(and 1 more key\);"):
        Trainer(_cfg(tmp_path, tiny_model_path, "no-yaml", ["trainer.steps=3", "learner.lr=1e-3",
                                                             "shaping.alpha=2.0"]), log=lambda *_: None)


def test_a_checkpoint_of_another_run_is_refused(tmp_path, tiny_model_path):
    import shutil

    from score_rl.config import ConfigError

    Trainer(_cfg(tmp_path, tiny_model_path, "mine", ["trainer.steps=1"]), log=lambda *_: None).fit()
    Trainer(_cfg(tmp_path, tiny_model_path, "other", ["trainer.steps=2", "learner.lr=1e-3", "trainer.seed=5"]),
            log=lambda *_: None).fit()
    shutil.rmtree(tmp_path / "mine" / "checkpoints")
    shutil.copytree(tmp_path / "other" / "checkpoints", tmp_path / "mine" / "checkpoints")
    with pytest.raises(ConfigError, match=r"^config key 'learner.lr' is 0.0001 but checkpoint \S*step_0000002 was "
                                          r"trained with 0.001 \(and 1 more key\)"):
        Trainer(_cfg(tmp_path, tiny_model_path, "mine", ["trainer.steps=3"]), log=lambda *_: None)


def test_a_resume_with_allow_config_change_trains_with_the_new_optimizer_settings(tmp_path, tiny_model_path):
    Trainer(_cfg(tmp_path, tiny_model_path, "new-lr", ["trainer.steps=1"]), log=lambda *_: None).fit()
    logs = []
    trainer = Trainer(_cfg(tmp_path, tiny_model_path, "new-lr", [
        "trainer.steps=2", "learner.lr=1e-3", "learner.weight_decay=0.5", "learner.adam_betas=[0.8,0.9]",
        "trainer.allow_config_change=true"]), log=logs.append)
    trainer.resume()
    groups = trainer.learners.members[0].engine.optimizer.param_groups
    assert trainer.start_step == 1 and groups
    assert all(g["lr"] == 1e-3 and g["weight_decay"] == 0.5 and tuple(g["betas"]) == (0.8, 0.9) for g in groups)
    assert any(line.startswith("warning: config key 'learner.adam_betas'") for line in logs), logs
    trainer.close()


def test_an_unreadable_metrics_line_is_dropped_with_one_warning(tmp_path):
    from score_rl.train.run_log import RunLogger

    rows = [json.dumps({"step": s, "loss": 0.5}).encode() for s in range(4)]
    (tmp_path / "metrics.jsonl").write_bytes(b"\n".join([rows[0], rows[1][:9] + b"\xff" + rows[1][9:], b"{not json",
                                                         rows[2], rows[3][:7]]))  # the last one torn by a kill
    printed = []
    RunLogger(tmp_path, 5, 3, progress_bar=False, print_fn=printed.append).close()
    assert [r["step"] for r in _rows(tmp_path)] == [0, 2]
    warnings = [line for line in printed if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 unreadable line(s) dropped" in warnings[0] and "line 2" in warnings[0], printed


# --- divergence ---------------------------------------------------------------------------------------------------
def _nan_loss_at(monkeypatch, steps):
    """The learner's loss is NaN in the updates of ``steps`` (0-based), as a diverged model gives it."""
    import score_rl.learner.learner as learner_module

    make_objective, calls = learner_module.make_objective, {"update": -1}

    def objective_with_nan(name, cfg):
        objective = make_objective(name, cfg)
        losses = objective.losses
        calls["update"] += 1
        bad = calls["update"] in steps

        def nan_losses(passes, values):
            out, parts = losses(passes, values)
            return ([loss * float("nan") for loss in out] if bad else out), parts
        objective.losses = nan_losses
        return objective

    monkeypatch.setattr(learner_module, "make_objective", objective_with_nan)


def _finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_a_non_finite_update_stops_the_run_naming_the_step_and_the_last_checkpoint(tmp_path, tiny_model_path,
                                                                                 monkeypatch):
    from score_rl.launch.faults import TrainingAborted

    _nan_loss_at(monkeypatch, {2})
    trainer = Trainer(_cfg(tmp_path, tiny_model_path, "nan", ["trainer.checkpoint_every=1"]), log=lambda *_: None)
    with pytest.raises(TrainingAborted) as diverged:
        trainer.fit()
    message = str(diverged.value)
    assert message.startswith("training diverged at step 3 of 5: loss is nan (not finite)") and "\n" not in message
    assert "the last intact checkpoint is " in message and message.count("step_0000002") == 1, message
    learner, worker = trainer.learners.members[0], trainer.workers.members[0]
    assert trainer.updates == 2 and trainer.pool.version == 2, "the bad update was not pushed"
    assert _finite(learner.engine.module) and _finite(worker.model), "no NaN weights, on the ranks or the workers"
    trainer.close()


def test_max_bad_steps_skips_a_non_finite_update_with_a_warning(tmp_path, tiny_model_path, monkeypatch):
    _nan_loss_at(monkeypatch, {1})
    logs = []
    trainer = Trainer(_cfg(tmp_path, tiny_model_path, "skip", ["trainer.steps=3", "trainer.max_bad_steps=1"]),
                      log=logs.append)
    module, update, changed = trainer.learners.members[0].engine.module, trainer.algorithm.update, []

    def watched_update(*args):
        before = {k: v.clone() for k, v in module.state_dict().items()}
        stats = update(*args)
        changed.append(any(not torch.equal(before[k], v) for k, v in module.state_dict().items()))
        return stats
    trainer.algorithm.update = watched_update
    trainer.fit()
    trainer.close()
    assert changed == [True, False, True], "the bad update changed no weight"
    assert trainer.updates == 2 and trainer.pool.version == 2 and _finite(trainer.workers.members[0].model)
    assert [line for line in logs if line.startswith("warning: step 2 of 3: loss is nan")], logs
    assert _rows(trainer.run_dir)[1]["loss"] is None, "the skipped step is logged, its loss null"


def test_bad_steps_in_a_row_count_on_across_a_resume(tmp_path, tiny_model_path, monkeypatch):
    """max_bad_steps=1, non-finite updates at steps 2 and 3: the run stops at step 3 whether it ran whole or was
    stopped after step 2 (a checkpoint between the two bad steps) and resumed, with the same rows logged."""
    from score_rl.launch.faults import TrainingAborted

    extra = ["trainer.max_bad_steps=1", "trainer.checkpoint_every=1"]
    _nan_loss_at(monkeypatch, {1, 2})
    whole = Trainer(_cfg(tmp_path, tiny_model_path, "whole", [*extra, "trainer.steps=4"]), log=lambda *_: None)
    with pytest.raises(TrainingAborted, match="^training diverged at step 3 of 4: loss is nan"):
        whole.fit()
    whole.close()
    monkeypatch.undo()
    _nan_loss_at(monkeypatch, {1, 2})  # counts updates afresh, across both trainers below
    first = Trainer(_cfg(tmp_path, tiny_model_path, "parts", [*extra, "trainer.steps=2"]), log=lambda *_: None)
    first.fit()
    first.close()
    second = Trainer(_cfg(tmp_path, tiny_model_path, "parts", [*extra, "trainer.steps=4"]), log=lambda *_: None)
    with pytest.raises(TrainingAborted, match="^training diverged at step 3 of 4: loss is nan"):
        second.fit()
    second.close()
    assert second.start_step == 2, "resumed after step 2"
    assert _untimed(_rows(tmp_path / "parts")) == _untimed(_rows(tmp_path / "whole"))


def test_score_rl_train_stops_a_diverging_run_with_one_line(tmp_path, tiny_model_path):
    """At learner.lr=1e12 the suite's model makes a finite first update whose weights overflow when sampled."""
    run = tmp_path / "diverging"
    cmd = [sys.executable, "-m", "score_rl.cli", "train", str(REPO / "configs" / "quickstart.yaml"), *TINY_OVERRIDES,
           f"model.path={tiny_model_path}", *BASE, "trainer.steps=8", f"trainer.run_dir={run}", "learner.lr=1e12",
           "trainer.checkpoint_every=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("score-rl: error: training diverged: sampling after step 1 of 8 failed"), proc.stderr[-3000:]
    assert "the last intact checkpoint is " in last and last.count("step_0000001") == 1, last
    assert "Traceback" not in proc.stderr
