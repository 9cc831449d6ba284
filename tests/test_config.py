"""Config loading, validation and resume comparison (score_rl/config/) on configs/quickstart.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from score_rl.config import Config, ConfigError, load_config, save_config, to_yaml

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def _error(overrides, path=QUICKSTART) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    msg = str(info.value)
    assert "\n" not in msg, f"a ConfigError message must be one line, got {msg!r}"
    return msg


# --- loading and overrides -------------------------------------------------------------------------------------
def test_quickstart_loads_with_yaml_values():
    cfg = load_config(QUICKSTART)
    assert isinstance(cfg, Config)
    # values from the YAML file win over the schema defaults
    assert cfg.learner.lr == pytest.approx(1e-4) and cfg.rollout.max_new_tokens == 8
    assert cfg.shaping.alpha == 10.0 and cfg.shaping.stage1_steps == 10
    assert cfg.env.params == {"min_operand": 10, "max_operand": 99, "num_test": 500}
    assert "${" not in cfg.trainer.run_dir, "interpolations such as ${now:...} are resolved at load time"


def test_overrides_apply_with_the_schema_type():
    cfg = load_config(QUICKSTART, ["shaping.alpha=5", "algo.advantage=group_norm", "trainer.progress_bar=false",
                                   "rollout.samples_per_problem=8"])
    assert cfg.shaping.alpha == 5.0 and isinstance(cfg.shaping.alpha, float), "shaping.alpha=5 must become 5.0"
    assert cfg.algo.advantage == "group_norm"
    assert cfg.trainer.progress_bar is False
    assert cfg.rollout.samples_per_problem == 8


def test_later_overrides_win():
    assert load_config(QUICKSTART, ["shaping.alpha=5", "shaping.alpha=7"]).shaping.alpha == 7.0


def test_missing_config_file():
    msg = _error([], path="/nonexistent/dir/score.yaml")
    assert "not found" in msg and "/nonexistent/dir/score.yaml" in msg


def test_override_without_equals_sign():
    assert "shaping.alpha" in _error(["shaping.alpha"])


# --- unknown keys ----------------------------------------------------------------------------------------------
def test_unknown_key_override_names_the_key_and_suggests_the_closest():
    msg = _error(["shaping.alpah=3"])
    assert "'shaping.alpah'" in msg, f"the error must name the unknown key: {msg}"
    assert "shaping.alpha" in msg.replace("shaping.alpah", ""), f"the error must suggest 'shaping.alpha': {msg}"


@pytest.mark.parametrize("typo,named,suggestion", [
    ("algo.advantge=rloo", "algo.advantge", "algo.advantage"),
    ("rollout.temprature=0.5", "rollout.temprature", "rollout.temperature"),
    ("shapng.alpha=3", "shapng", "shaping"),  # a misspelt section is reported as the section
    ("beta1=0.1", "beta1", "shaping.beta1"),  # a leaf without its section
])
def test_unknown_key_suggestions(typo, named, suggestion):
    msg = _error([typo])
    assert f"'{named}'" in msg and f"'{suggestion}'" in msg, msg


def test_unknown_top_level_section():
    msg = _error(["foo.bar=1"])
    assert "'foo'" in msg and "unknown" in msg


def test_unknown_key_in_the_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(QUICKSTART.read_text() + "\nshaping_extra:\n  x: 1\n")
    assert "shaping_extra" in _error([], path=path)
    path.write_text("algo:\n  kl_estimater: k2\n")
    msg = _error([], path=path)
    assert "algo.kl_estimater" in msg and "'algo.kl_estimator'" in msg


@pytest.mark.parametrize("text, line_col, problem", [
    (b"shaping:\n  alpha: [1, 2\nlearner:\n  lr: 1\n", ":3:", "did not find expected ',' or ']'"),
    (b"shaping:\n\talpha: 5\n", ":2:1", "found character that cannot start any token"),
    (b"env:\n  name: math\n   seed: 1\n", ":3:", "mapping values are not allowed"),
    (b"shaping:\n  alpha: 1\nshaping:\n  beta1: 1\n", ":3:1", "duplicate key"),
    (b'shaping:\n  alpha: "unterminated\n', ":3:", "found unexpected end of stream"),
])
def test_malformed_yaml_names_the_file_and_the_line(tmp_path, text, line_col, problem):
    """A yaml traceback before this was handled."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    msg = _error([], path=path)
    assert msg.startswith(f"config file {path}{line_col}") and "not valid YAML" in msg and problem in msg, msg


def test_non_utf8_yaml_names_the_file_line_and_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"env:\n  name: math\n# caf\xe9\n")
    assert _error([], path=path) == f"config file {path}:3: not UTF-8 text (byte 0xe9 at byte offset 23 of the file)"


# --- wrong types and invalid values ----------------------------------------------------------------------------
def test_wrong_type_names_the_key_and_expected_type():
    assert _error(["rollout.num_workers=abc"]) == "config key 'rollout.num_workers' expects int, got 'abc'"


def test_wrong_float_and_bool():
    assert _error(["learner.lr=abc"]) == "config key 'learner.lr' expects float, got 'abc'"
    assert _error(["shaping.alpha=ten"]) == "config key 'shaping.alpha' expects float, got 'ten'"
    assert "trainer.progress_bar" in _error(["trainer.progress_bar=maybe"])


@pytest.mark.parametrize("override,key", [
    ("algo.advantage=foo", "algo.advantage"),
    ("algo.kl_estimator=k4", "algo.kl_estimator"),
    ("algo.loss_agg=sum", "algo.loss_agg"),
    ("model.dtype=int8", "model.dtype"),
    ("learner.zero_stage=4", "learner.zero_stage"),
    ("algo.name=grpo", "algo.name"),
    ("rollout.engine=sglang", "rollout.engine"),
    ("learner.weight_sync=nccl", "learner.weight_sync"),
])
def test_invalid_choices_name_the_key_and_the_choices(override, key):
    msg = _error([override])
    assert key in msg and override.split("=")[1] in msg, msg


def test_invalid_advantage_lists_the_valid_ones():
    msg = _error(["algo.advantage=foo"])
    for choice in ("rloo", "group_mean", "group_norm", "none"):
        assert choice in msg


def test_k1_in_the_loss_is_rejected():
    msg = _error(["algo.kl_estimator=k1", "algo.kl_in_reward=false"])
    assert "algo.kl_estimator" in msg and "kl_in_reward" in msg


def test_kl_in_reward_requires_k1():
    assert "algo.kl_estimator" in _error(["algo.kl_in_reward=true", "algo.kl_estimator=k2"])
    assert "algo.kl_estimator" in _error(["algo.kl_in_reward=true", "algo.kl_estimator=full"])


def test_default_kl_is_k1_in_the_reward():
    """The placement whose gradient is that of the paper's sequence-level KL (tests/algos/test_kl_gradients.py)."""
    from score_rl.config import Config

    assert Config().algo.kl_estimator == "k1"
    cfg = load_config(QUICKSTART, [])
    assert cfg.algo.kl_estimator == "k1" and cfg.algo.uses_reward_kl() is True


@pytest.mark.parametrize("override,key", [
    ("eval.temperature=-1", "eval.temperature"), ("trainer.eval_problems=-5", "trainer.eval_problems"),
    ("trainer.checkpoint_every=-1", "trainer.checkpoint_every"), ("shaping.beta1=-1", "shaping.beta1"),
    ("shaping.beta2=-0.1", "shaping.beta2"), ("shaping.alpha=nan", "shaping.alpha"), ("learner.lr=-1", "learner.lr"),
    ("learner.lr=inf", "learner.lr"), ("rollout.cpus_per_worker=0", "rollout.cpus_per_worker"),
    ("learner.cpus_per_rank=-1", "learner.cpus_per_rank"), ("shaping.gamma=2", "shaping.gamma"),
    ("learner.weight_decay=-1", "learner.weight_decay"), ("trainer.max_bad_steps=-1", "trainer.max_bad_steps"),
    ("eval.budgets=[4,4]", "eval.budgets"), ("eval.budgets=[0,2]", "eval.budgets"),
    ("eval.scorer=oracle", "eval.scorer"), ("eval.budget_max_turns=0", "eval.budget_max_turns"),
    ("eval.coverage_target=1.0", "eval.coverage_target"),
])
def test_out_of_range_and_non_finite_values_are_one_line_errors_naming_the_key(override, key):
    """Values that used to be accepted silently (or crash a step later: alpha=nan trained on a null loss)."""
    assert f"'{key}'" in _error([override])


@pytest.mark.parametrize("override,key", [
    ("learner.weight_sync_bucket_mb=0", "learner.weight_sync_bucket_mb"),
    ("rollout.vllm.tensor_parallel_size=0", "rollout.vllm.tensor_parallel_size"),
    ("rollout.vllm.kv_cache_mb=0", "rollout.vllm.kv_cache_mb"),
    ("rollout.vllm.gpu_memory_utilization=1.5", "rollout.vllm.gpu_memory_utilization"),
    ("rollout.engine=vllm rollout.vllm.tensor_parallel_size=2", "rollout.vllm.tensor_parallel_size"),
])
def test_engine_and_weight_sync_settings_out_of_range_name_the_key(override, key):
    assert f"'{key}'" in _error(override.split())


@pytest.mark.parametrize("estimator", ["k2", "k3", "full"])
def test_loss_side_estimators_are_accepted(estimator):
    """Naming a loss-side estimator is enough: the placement follows from it (algo.kl_in_reward: null)."""
    cfg = load_config(QUICKSTART, [f"algo.kl_estimator={estimator}"])
    assert cfg.algo.kl_estimator == estimator and cfg.algo.uses_reward_kl() is False


def test_a_saved_config_keeps_the_kl_placement_derived(tmp_path):
    """config.yaml keeps algo.kl_in_reward: null, so an ablation on a run's saved config can switch the estimator."""
    save_config(load_config(QUICKSTART, []), tmp_path / "config.yaml")
    cfg = load_config(tmp_path / "config.yaml", ["algo.kl_estimator=k2"])
    assert cfg.algo.kl_in_reward is None and cfg.algo.uses_reward_kl() is False


def test_training_in_float16_with_zero_0_is_rejected():
    from score_rl.config import validate_training

    cfg = load_config(QUICKSTART, ["model.dtype=float16"])  # fine for evaluation
    with pytest.raises(ConfigError) as info:
        validate_training(cfg)
    assert "model.dtype" in str(info.value) and "zero_stage" in str(info.value)
    validate_training(load_config(QUICKSTART, ["model.dtype=float16", "learner.zero_stage=1"]))


def test_negative_grad_clip_is_rejected():
    assert "learner.grad_clip" in _error(["learner.grad_clip=-1"])


def test_k1_in_reward_is_accepted():
    cfg = load_config(QUICKSTART, ["algo.kl_estimator=k1", "algo.kl_in_reward=true"])
    assert cfg.algo.kl_in_reward is True and cfg.algo.kl_estimator == "k1"


@pytest.mark.parametrize("override,key", [
    ("rollout.samples_per_problem=1", "rollout.samples_per_problem"),  # RLOO needs >= 2 samples
    ("rollout.num_turns=3", "rollout.num_turns"),
    ("rollout.temperature=0", "rollout.temperature"),
    ("shaping.stage1_steps=-1", "shaping.stage1_steps"),
    ("trainer.steps=0", "trainer.steps"),
    ("prompt.first_attempt=no placeholder", "prompt.first_attempt"),
])
def test_cross_field_checks_name_the_key(override, key):
    assert key in _error([override])


@pytest.mark.parametrize("override,key", [
    (["method.name=star"], "algo.name"),  # PPO trains the RL methods only
    (["method.name=pair_sft"], "algo.name"),
    (["algo.ppo.epochs=0"], "algo.ppo.epochs"),
    (["algo.ppo.minibatches=0"], "algo.ppo.minibatches"),
    (["algo.ppo.clip_eps=-0.1"], "algo.ppo.clip_eps"),
    (["algo.ppo.clip_eps=1.0"], "algo.ppo.clip_eps"),
    (["algo.ppo.value_clip=-1"], "algo.ppo.value_clip"),
    (["algo.ppo.lam=1.5"], "algo.ppo.lam"),
    (["algo.critic.lr=-1"], "algo.critic.lr"),
    (["algo.ppo.lamda=0.9"], "algo.ppo.lam"),  # a typo names the closest key
])
def test_ppo_checks_name_the_key(override, key):
    assert key in _error(["algo.name=ppo", *override])


def test_the_step_must_split_into_ppo_minibatches_on_every_rank():
    """Checked by validate_training, which a sweep runs on every run before starting any."""
    from score_rl.config import ConfigError, validate_training

    cfg = load_config(QUICKSTART, ["algo.name=ppo", "rollout.problems_per_step=3", "rollout.samples_per_problem=2"])
    with pytest.raises(ConfigError, match=r"6 episodes .* divisible by learner.num_ranks \* algo.ppo.minibatches = 4"):
        validate_training(cfg)
    validate_training(load_config(QUICKSTART, ["algo.name=ppo", "rollout.problems_per_step=3",
                                               "rollout.samples_per_problem=2", "algo.ppo.minibatches=3"]))
    validate_training(load_config(QUICKSTART, ["rollout.problems_per_step=3", "rollout.samples_per_problem=2"]))


def test_ppo_needs_no_group_of_samples():
    """PPO's baseline is its critic: one sample per problem is fine (RLOO's >= 2 check is REINFORCE's)."""
    cfg = load_config(QUICKSTART, ["algo.name=ppo", "rollout.samples_per_problem=1"])
    assert cfg.algo.name == "ppo" and cfg.algo.advantage == "rloo"
    assert load_config(QUICKSTART, []).algo.name == "reinforce", "REINFORCE stays the default"


def test_one_sample_is_fine_without_rloo():
    cfg = load_config(QUICKSTART, ["rollout.samples_per_problem=1", "algo.advantage=none"])
    assert cfg.rollout.samples_per_problem == 1


# --- save / reload ---------------------------------------------------------------------------------------------
def test_save_config_round_trips_through_load_config(tmp_path):
    cfg = load_config(QUICKSTART, ["shaping.alpha=5", "algo.advantage=group_norm", "eval.model_paths=[a,b]",
                                   "env.params.num_test=20", "algo.kl_estimator=k1", "algo.kl_in_reward=true"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg, "a saved config must load back identically (prompts, nulls, lists, env params)"
    assert to_yaml(again) == to_yaml(cfg) == path.read_text()


def test_saved_config_keeps_the_resolved_run_dir(tmp_path):
    cfg = load_config(QUICKSTART)
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert load_config(path).trainer.run_dir == cfg.trainer.run_dir, "reloading must not re-resolve ${now:...}"


# --- the method registry drives the method checks ----------------------------------------------------------------
def test_method_choices_and_messages_come_from_the_registry():
    from score_rl.algos.methods import METHODS, method_names

    msg = _error(["method.name=sft"])
    assert msg == f"config key 'method.name' must be one of {list(METHODS)}, got 'sft'"
    assert method_names() == ("score", "single_turn_rl", "star", "pair_sft", "self_refine")
    assert _error(["algo.name=ppo", "method.name=star"]).startswith(
        "config key 'algo.name': ppo trains the RL methods (score, single_turn_rl); method 'star'")
    assert "'pair_sft' does not sample second attempts" in _error(["method.name=pair_sft",
                                                                   "rollout.corrections_per_attempt=2"])


def test_off_policy_steps_and_episodes_per_step_follow_the_registry():
    from score_rl.config import episodes_per_step, validate_training

    with pytest.raises(ConfigError, match=r"policy-gradient loss \(score, single_turn_rl\), got method.name=star"):
        validate_training(load_config(QUICKSTART, ["method.name=star", "trainer.off_policy_steps=1"]))
    validate_training(load_config(QUICKSTART, ["method.name=self_refine", "trainer.off_policy_steps=1"]))
    two = ["rollout.corrections_per_attempt=2", "rollout.problems_per_step=3", "rollout.samples_per_problem=2"]
    assert episodes_per_step(load_config(QUICKSTART, two)) == 12
    assert episodes_per_step(load_config(QUICKSTART, two[1:] + ["method.name=single_turn_rl"])) == 6


# --- comparing a config with a run's saved config ----------------------------------------------------------------
def test_run_config_changes_ignores_placement_and_what_the_caller_names(tmp_path):
    from score_rl.config import RESUMABLE_KEYS, run_config_changes

    saved = tmp_path / "config.yaml"
    assert run_config_changes(load_config(QUICKSTART), saved) == [], "no saved config: nothing to compare"
    save_config(load_config(QUICKSTART, ["model.dtype=float32"]), saved)
    cfg = load_config(QUICKSTART, ["model.dtype=auto", "trainer.steps=7", "shaping.alpha=3", "ray.address=auto",
                                   "trainer.allow_config_change=true"])
    old_alpha = load_config(QUICKSTART).shaping.alpha
    old_steps = load_config(QUICKSTART).trainer.steps
    assert run_config_changes(cfg, saved) == [("shaping.alpha", old_alpha, 3.0), ("trainer.steps", old_steps, 7)]
    assert run_config_changes(cfg, saved, RESUMABLE_KEYS) == [("shaping.alpha", old_alpha, 3.0)]
    tree = OmegaConf.to_container(OmegaConf.create(to_yaml(cfg)))
    assert run_config_changes(tree, saved, ["shaping"]) == [("trainer.steps", old_steps, 7)]
    assert tree["model"]["dtype"] == "auto", "a tree passed in is not changed"


def test_check_resume_config_names_the_changed_keys(tmp_path):
    from score_rl.config import check_resume_config

    saved = tmp_path / "config.yaml"
    save_config(load_config(QUICKSTART), saved)
    check_resume_config(load_config(QUICKSTART, ["trainer.steps=3", "eval.num_problems=5"]), saved)
    with pytest.raises(ConfigError, match=r"^config key 'shaping.alpha' differs from the run being resumed in "):
        check_resume_config(load_config(QUICKSTART, ["shaping.alpha=3"]), saved)
    check_resume_config(load_config(QUICKSTART, ["shaping.alpha=3", "trainer.allow_config_change=true"]), saved)
    saved.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="unreadable"):
        check_resume_config(load_config(QUICKSTART), saved)
