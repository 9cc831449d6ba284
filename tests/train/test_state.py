"""The trainer state in a checkpoint (score_rl/train/state.py): a round trip through save_checkpoint and load_newest,
the pending batch, damaged checkpoints, the resumed dtype. No model, no Ray: milliseconds."""

import json
import math
from pathlib import Path

import pytest

from score_rl.episode import Episode, Turn
from score_rl.train import state as trainer_state
from score_rl.train.checkpoint import CheckpointError, save_checkpoint


def _episode(i: int) -> Episode:
    turns = [Turn(prompt_ids=[1, 2], response_ids=[3, 4], sampling_logprobs=[-0.5, -1.25], response_text="4",
                  reward=1.0, info={"answer": "4"}, shaped_reward=0.5, kl_coef=0.1, advantage=-0.25),
             Turn(prompt_ids=[1, 2, 3, 4, 9], response_ids=[5], sampling_logprobs=[-2.0], response_text="5",
                  reward=0.0, truncated=True, ref_logprobs=[-1.5])]
    return Episode(problem_id=f"p{i}", sample_index=i, turns=turns, reference="4", first_attempt_id=i // 2)


def _save(run_dir, step, pending=None, learner_files=("learner/state.pt",), state=None):
    def save(directory, tag):
        for name in learner_files:
            path = Path(directory) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"weights")
        if pending is not None:
            trainer_state.write_pending(Path(directory), pending)

    state = state or trainer_state.state_of(step, {"epoch": 1, "position": 3}, "/models/m", None, step - 1,
                                            "bfloat16")
    save_checkpoint(run_dir / "checkpoints", step, state, save)


def test_the_state_and_the_pending_batch_round_trip(tmp_path):
    batch = [_episode(i) for i in range(3)]
    _save(tmp_path, 4, trainer_state.Pending(4, batch, 12.5))
    loaded = []
    found = trainer_state.load_newest(tmp_path, loaded.append, log=pytest.fail)
    assert found.step == 4 and found.updates == 3 and found.state["sampler"] == {"epoch": 1, "position": 3}
    assert loaded == [str(found.path)], "the learner state is loaded from the same checkpoint"
    assert found.pending.step == 4 and found.pending.seconds == 12.5
    assert found.pending.episodes == batch, "every field of every turn survives the round trip"
    assert trainer_state.resumed_dtype(tmp_path) == "bfloat16"


def test_a_non_finite_log_prob_in_the_pending_batch_is_written_as_null(tmp_path):
    ep = _episode(0)
    ep.turns[0].sampling_logprobs = [-math.inf, -1.0]
    _save(tmp_path, 1, trainer_state.Pending(1, [ep], 1.0))
    text = next((tmp_path / "checkpoints").glob("step_*/pending_batch.json")).read_text()
    json.loads(text, parse_constant=pytest.fail)  # strict JSON


def test_a_run_without_checkpoints_resumes_nothing(tmp_path):
    assert trainer_state.load_newest(tmp_path, pytest.fail, log=pytest.fail) is None
    assert trainer_state.resumed_dtype(tmp_path) is None
    assert trainer_state.newest_checkpoint(tmp_path) is None


def test_a_checkpoint_whose_learner_state_fails_to_load_falls_back_to_the_one_before(tmp_path):
    _save(tmp_path, 2)
    _save(tmp_path, 4)
    warnings = []

    def load(path):
        if path.endswith("step_0000004"):
            raise RuntimeError("torn tensor file")

    found = trainer_state.load_newest(tmp_path, load, warnings.append)
    assert found.step == 2 and found.pending is None
    assert len(warnings) == 1 and "step_0000004" in warnings[0] and "torn tensor file" in warnings[0]


def test_no_loadable_checkpoint_is_one_clear_error(tmp_path):
    _save(tmp_path, 2)

    def load(path):
        raise OSError("unreadable")

    with pytest.raises(CheckpointError, match="no checkpoint in .* could be loaded"):
        trainer_state.load_newest(tmp_path, load, lambda *_: None)


def test_a_critic_missing_from_the_checkpoint_is_a_config_error_not_damage(tmp_path):
    from score_rl.errors import ConfigError

    _save(tmp_path, 2)

    def load(path):
        raise RuntimeError("Traceback...\nthe checkpoint has no critic: it was written by algo.name=reinforce")

    with pytest.raises(ConfigError, match="has no critic"):
        trainer_state.load_newest(tmp_path, load, pytest.fail)


def test_an_earlier_versions_pending_batch_inside_the_trainer_state_is_read_without_its_time(tmp_path):
    from dataclasses import asdict

    batch = [_episode(0)]
    state = {"step": 3, "sampler": {"epoch": 0, "position": 0}, "pending": [asdict(ep) for ep in batch]}
    _save(tmp_path, 3, state=state)
    found = trainer_state.load_newest(tmp_path, lambda path: None, pytest.fail)
    assert found.pending.episodes == batch and found.pending.seconds is None
    assert found.updates == 3, "older checkpoints counted every step as an update"


# --- the config a checkpoint was trained with ---------------------------------------------------------------------
def _config(extra=()):
    from score_rl.config import load_config
    from tests.conftest import QUICKSTART

    return load_config(QUICKSTART, list(extra))


def _save_trained_with(run_dir, step, cfg):
    from score_rl.config import config_tree

    _save(run_dir, step, state=trainer_state.state_of(step, {"epoch": 0, "position": 0}, "/models/m", None, step,
                                                      "float32", config_tree(cfg)))


def test_a_checkpoint_trained_with_another_config_is_refused_naming_the_key_and_the_checkpoint(tmp_path):
    from score_rl.errors import ConfigError

    _save_trained_with(tmp_path, 2, _config(["learner.lr=1e-4", "trainer.seed=1"]))
    assert not (tmp_path / "config.yaml").exists(), "no config.yaml: the checkpoint's record still holds"
    with pytest.raises(ConfigError) as refused:
        trainer_state.RunConfig(_config(["learner.lr=1e-3", "trainer.seed=1", "trainer.steps=9"]), tmp_path,
                                pytest.fail)
    message = str(refused.value)
    assert message.startswith("config key 'learner.lr' is 0.001 but checkpoint ") and "step_0000002" in message
    assert "trainer.allow_config_change=true" in message and "\n" not in message
    warnings = []
    changed = _config(["learner.lr=1e-3", "trainer.seed=2", "trainer.allow_config_change=true"])
    allowed = trainer_state.RunConfig(changed, tmp_path, warnings.append)
    assert len(warnings) == 1 and warnings[0].startswith("warning: config key 'learner.lr'"), warnings
    assert "(and 1 more key)" in warnings[0]
    found = trainer_state.load_newest(tmp_path, lambda path: None, pytest.fail, allowed.check)
    assert found.step == 2 and len(warnings) == 1, "the checkpoint checked at start-up is not said twice"
    trainer_state.RunConfig(_config(["learner.lr=1e-4", "trainer.seed=1", "trainer.steps=9", "logging.wandb=true"]),
                            tmp_path, pytest.fail)  # what a resume may change


def test_load_newest_does_not_take_a_refused_checkpoint_for_damage(tmp_path):
    from score_rl.errors import ConfigError

    _save(tmp_path, 2)
    _save_trained_with(tmp_path, 4, _config(["trainer.seed=1"]))
    run = trainer_state.RunConfig(_config(["trainer.seed=1", "trainer.allow_config_change=true"]), tmp_path,
                                  pytest.fail)

    def refuse(path, state):
        raise ConfigError("config key 'trainer.seed' differs")

    with pytest.raises(ConfigError, match="trainer.seed"):
        trainer_state.load_newest(tmp_path, pytest.fail, pytest.fail, refuse)
    assert trainer_state.load_newest(tmp_path, lambda path: None, pytest.fail, run.check).step == 4


def test_a_checkpoint_written_before_the_record_resumes_as_before(tmp_path):
    _save(tmp_path, 3)  # no "config" in its trainer state
    run = trainer_state.RunConfig(_config(["shaping.alpha=7"]), tmp_path, pytest.fail)
    assert trainer_state.load_newest(tmp_path, lambda path: None, pytest.fail, run.check).step == 3
