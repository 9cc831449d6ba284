"""What counts as a bad update (score_rl/train/divergence.py), how many are skipped, and that the count survives a
resume. Plain objects: milliseconds."""

import math

import pytest

from score_rl.config import ConfigError, load_config, validate_training
from score_rl.train.divergence import BadSteps, TrainingDiverged
from score_rl.train.state import RunConfig, state_of


def test_a_non_finite_update_is_skipped_up_to_the_limit_then_the_run_stops(tmp_path):
    logs = []
    bad = BadSteps(2, tmp_path, logs.append)
    assert bad.applied(0, 9, {"loss": 0.5, "grad_norm": 1.0})
    assert not bad.applied(1, 9, {"loss": math.nan, "grad_norm": 1.0})
    assert not bad.applied(2, 9, {"loss": 0.5, "grad_norm": math.inf})
    with pytest.raises(TrainingDiverged, match=r"step 4 of 9: loss is nan .* no checkpoint was written yet"):
        bad.applied(3, 9, {"loss": math.nan})
    assert len(logs) == 2 and "2 bad step(s) in a row" in logs[1]


def test_a_finite_update_resets_the_count(tmp_path):
    bad = BadSteps(1, tmp_path, lambda *_: None)
    assert not bad.applied(0, 9, {"loss": math.nan})
    assert bad.applied(1, 9, {"loss": 0.1})
    assert not bad.applied(2, 9, {"loss": math.nan}), "one in a row again, within the limit"


def test_in_float16_a_loss_scale_overflow_is_not_divergence(tmp_path):
    """DeepSpeed's loss scaling skips a float16 step whose gradients overflow (an inf norm) and lowers the scale."""
    assert BadSteps(0, tmp_path, pytest.fail, "float16").applied(0, 9, {"loss": 0.5, "grad_norm": math.inf})
    with pytest.raises(TrainingDiverged):
        BadSteps(0, tmp_path, pytest.fail, "float32").applied(0, 9, {"loss": 0.5, "grad_norm": math.inf})
    with pytest.raises(TrainingDiverged):
        BadSteps(0, tmp_path, pytest.fail, "float16").applied(0, 9, {"loss": math.nan, "grad_norm": math.inf})


def test_the_count_in_a_row_is_part_of_the_checkpoint():
    assert state_of(3, {}, "m", None, 2, "float32", {}, bad_steps_in_a_row=1)["bad_steps_in_a_row"] == 1


def test_ppo_cannot_skip_bad_steps():
    cfg = load_config("configs/quickstart.yaml", ["algo.name=ppo", "algo.kl_estimator=k1", "trainer.max_bad_steps=1"])
    with pytest.raises(ConfigError, match="trainer.max_bad_steps"):
        validate_training(cfg)


def test_a_non_finite_env_param_does_not_make_a_checkpoint_look_like_another_runs(tmp_path):
    """trainer_state.json is strict JSON (inf is null): the run's recorded tree is compared in the same form."""
    cfg = load_config("configs/quickstart.yaml", ["env.params.tolerance=.inf"])
    run = RunConfig(cfg, tmp_path, pytest.fail)
    assert run.tree["env"]["params"]["tolerance"] is None
    run.check(tmp_path / "step_0000001", {"config": run.tree})  # the same run: no refusal
