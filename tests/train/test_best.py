"""The best policy by trainer.best_metric (score_rl/train/best.py): which steps win, what a checkpoint carries, what a
resume restores. The policy writer is a stub that writes one file: milliseconds, no model."""

import json
import math
import shutil

import pytest

from score_rl.train.best import BestPolicy


def _best(tmp_path, key="reward_t2", mode="max", logs=None):
    saved = []

    def save_policy(directory, info):  # as the trainer's: written aside, then renamed into place (never in place)
        tmp = directory.with_name(".tmp")
        tmp.mkdir()
        (tmp / "weights.bin").write_text(f"policy of step {info['steps']}")
        shutil.rmtree(directory, ignore_errors=True)
        tmp.replace(directory)
        saved.append(info["steps"])

    return BestPolicy(tmp_path, key, mode, save_policy, (logs if logs is not None else []).append), saved


@pytest.mark.parametrize("mode, values, winners", [
    ("max", [0.1, 0.3, 0.2, 0.3, 0.5], [1, 2, 5]),  # a tie does not replace the best
    ("min", [0.5, 0.2, 0.4, 0.1], [1, 2, 4]),
])
def test_only_a_strictly_better_step_replaces_the_best(tmp_path, mode, values, winners):
    best, saved = _best(tmp_path, mode=mode)
    for step, value in enumerate(values, start=1):
        best.update(step, {"reward_t2": value})
    assert saved == winners
    assert best.value == {"metric": "reward_t2", "mode": mode, "value": values[winners[-1] - 1], "step": winners[-1]}
    assert json.loads((tmp_path / "best" / "best.json").read_text()) == best.value
    assert (tmp_path / "best" / "weights.bin").read_text() == f"policy of step {winners[-1]}"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, None])
def test_an_undefined_or_infinite_value_never_wins(tmp_path, value):
    best, saved = _best(tmp_path, mode="min" if value == -math.inf else "max")
    best.update(1, {"reward_t2": value})
    assert saved == [] and best.value is None


def test_a_metric_the_run_never_logs_is_said_once_after_three_steps(tmp_path):
    logs = []
    best, saved = _best(tmp_path, key="reward_t9", logs=logs)
    for step in range(1, 7):
        best.update(step, {"reward_t1": 0.1, "time/step": 1.0})
    assert saved == [] and len(logs) == 1 and "'reward_t9'" in logs[0] and "reward_t1" in logs[0]
    assert "time/step" not in logs[0]


def test_steps_without_an_update_are_not_misses(tmp_path):
    logs = []
    best, _ = _best(tmp_path, logs=logs)
    for step in range(1, 5):
        best.update(step, {"update_skipped": 1.0})
    assert logs == []


def test_no_best_metric_keeps_nothing(tmp_path):
    best, saved = _best(tmp_path, key=None)
    best.update(1, {"reward_t2": 1.0})
    assert saved == [] and not (tmp_path / "best").exists()


def test_a_checkpoint_carries_the_best_as_of_its_step_and_a_resume_restores_it(tmp_path):
    best, _ = _best(tmp_path)
    best.update(1, {"reward_t2": 0.4})
    ckpt = tmp_path / "checkpoints" / "step_0000002"
    ckpt.mkdir(parents=True)
    best.link_into(ckpt)
    state = {"step": 2, "best": dict(best.value)}
    best.update(3, {"reward_t2": 0.9})  # found after the checkpoint: belongs to steps a resume redoes
    assert (tmp_path / "best" / "weights.bin").read_text() == "policy of step 3"
    assert (ckpt / "best" / "weights.bin").read_text() == "policy of step 1", "the checkpoint's copy did not change"

    resumed, _ = _best(tmp_path)
    resumed.restore(ckpt, state)
    assert resumed.value["step"] == 1 and resumed.value["value"] == 0.4
    assert (tmp_path / "best" / "weights.bin").read_text() == "policy of step 1"


def test_a_best_found_after_the_checkpoint_is_dropped_when_the_checkpoint_had_none(tmp_path):
    best, _ = _best(tmp_path)
    best.update(3, {"reward_t2": 0.9})
    ckpt = tmp_path / "checkpoints" / "step_0000002"
    ckpt.mkdir(parents=True)
    resumed, _ = _best(tmp_path)
    resumed.restore(ckpt, {"step": 2, "best": None})
    assert resumed.value is None and not (tmp_path / "best").exists()


def test_a_best_recorded_under_another_metric_is_forgotten(tmp_path):
    best, saved = _best(tmp_path)
    best.value = {"metric": "reward_t1", "mode": "max", "value": 10.0, "step": 1}
    best.update(2, {"reward_t2": 0.1})
    assert saved == [2] and best.value["metric"] == "reward_t2"
