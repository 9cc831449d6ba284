"""The training loop in one process (ray.enabled=false): learning signal, logs, reproducibility, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from score_rl.train.trainer import Trainer
from tests.conftest import tiny_config


def _run(tmp_path, tiny_model_path, name, extra=()):
    cfg = tiny_config(tmp_path / name, [f"model.path={tiny_model_path}", "ray.enabled=false", "trainer.steps=5",
                                        "trainer.eval_before_after=false", *extra])
    trainer = Trainer(cfg, log=lambda *_: None)
    trainer.fit()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    return trainer, rows


def _without_timings(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_fit_logs_every_metric_and_saves_the_policy(tmp_path, tiny_model_path):
    trainer, rows = _run(tmp_path, tiny_model_path, "a", ["shaping.stage1_steps=2"])
    assert [r["step"] for r in rows] == list(range(5))
    for key in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "reward_t1", "reward_t2", "kl_turn1",
                "kl_turn2", "loss", "grad_norm", "time/rollout", "time/learn", "time/sync"):
        assert key in rows[0], key
    assert [r["stage"] for r in rows] == [1, 1, 2, 2, 2]
    assert all(r["logprob_mismatch"] < 1e-3 for r in rows[:1]), "rollout and learner disagree on log-probs"
    assert (trainer.run_dir / "final" / "config.json").is_file()
    assert (trainer.run_dir / "config.yaml").is_file()
    assert list((trainer.run_dir / "tensorboard").iterdir())


def test_same_seed_identical_metrics_different_seed_different_samples(tmp_path, tiny_model_path):
    _, a = _run(tmp_path, tiny_model_path, "s1")
    _, b = _run(tmp_path, tiny_model_path, "s2")
    _, c = _run(tmp_path, tiny_model_path, "s3", ["trainer.seed=1"])
    assert _without_timings(a) == _without_timings(b)
    assert _without_timings(a) != _without_timings(c)


def test_resume_continues_from_the_latest_checkpoint(tmp_path, tiny_model_path):
    run = ["trainer.checkpoint_every=2", f"trainer.run_dir={tmp_path / 'resume'}"]
    _run(tmp_path, tiny_model_path, "r", run + ["trainer.steps=3"])
    ckpts = tmp_path / "resume" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_0000002", "step_0000003"]
    assert (ckpts / "latest").read_text() == "step_0000003", "the last step is always checkpointed"
    cfg = tiny_config(tmp_path / "r2", [f"model.path={tiny_model_path}", "ray.enabled=false", "trainer.steps=5",
                                        "trainer.eval_before_after=false", *run])
    trainer = Trainer(cfg, log=lambda *_: None)
    trainer.fit()
    assert trainer.start_step == 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "resume" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]


def test_vllm_engine_without_vllm_is_one_config_error_before_anything_starts(tmp_path, monkeypatch):
    import importlib.util

    from score_rl.config import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    cfg = tiny_config(tmp_path, ["rollout.engine=vllm"])
    with pytest.raises(ConfigError, match="'rollout.engine' is vllm but vLLM is not installed"):
        Trainer(cfg, log=lambda *_: None)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists(), "nothing built, nothing written"


def test_vllm_engine_without_vllm_is_one_config_error_in_eval_too(tmp_path, monkeypatch):
    import importlib.util

    from score_rl.config import ConfigError
    from score_rl.eval.evaluation import make_workers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError, match="'rollout.engine' is vllm"):
        make_workers(tiny_config(tmp_path, ["rollout.engine=vllm", "ray.enabled=false"]), "unused")


def test_lora_on_tied_embeddings_is_one_config_error_before_actors_start(tmp_path, tiny_model_path):
    from score_rl.config import ConfigError

    cfg = tiny_config(tmp_path, [f"model.path={tiny_model_path}", "model.lora.r=4",
                                 "model.lora.target_modules=[q_proj,model.embed_tokens]"])
    with pytest.raises(ConfigError, match=r"'model.lora.target_modules': \['model.embed_tokens'\]") as info:
        Trainer(cfg, log=lambda *_: None)
    assert "\n" not in str(info.value)


def test_batch_not_divisible_by_ranks_is_a_config_error(tmp_path, tiny_model_path):
    from score_rl.config import ConfigError

    cfg = tiny_config(tmp_path, [f"model.path={tiny_model_path}", "rollout.problems_per_step=3",
                                 "rollout.samples_per_problem=3", "learner.num_ranks=2"])
    with pytest.raises(ConfigError, match="divisible"):
        Trainer(cfg, log=lambda *_: None)


@pytest.mark.parametrize("estimator,reference_passes", [("k1", 1), ("k2", 1)])
def test_reference_log_probs_are_computed_once_per_step(tmp_path, tiny_model_path, estimator, reference_passes):
    """k1 in the reward: the reward's KL penalty and the learner share one reference pass over the step's episodes."""
    cfg = tiny_config(tmp_path, [f"model.path={tiny_model_path}", "ray.enabled=false", "trainer.steps=2",
                                 "trainer.eval_before_after=false", f"algo.kl_estimator={estimator}"])
    trainer = Trainer(cfg, log=lambda *_: None)
    learner = trainer.learners.members[0]
    rows = []
    # rows of whole-row or suffix passes; a shared prompt's own pass (logits_to_keep=1, one row per problem) is part
    # of the same pass over the episodes
    learner.reference.register_forward_hook(
        lambda module, args, kwargs, out: rows.append(kwargs["input_ids"].shape[0])
        if kwargs.get("logits_to_keep") != 1 else None, with_kwargs=True)
    trainer.fit()
    episodes = cfg.rollout.problems_per_step * cfg.rollout.samples_per_problem
    assert sum(rows) == reference_passes * episodes * cfg.trainer.steps


def test_steps_logged_after_the_last_checkpoint_are_logged_once_after_resume(tmp_path, tiny_model_path):
    """A process killed after logging step 2 but before checkpointing it: the resumed run redoes step 2, and
    metrics.jsonl holds every step once, in order, with what an uninterrupted run logs."""
    _, straight = _run(tmp_path, tiny_model_path, "straight", ["trainer.steps=4"])
    run = ["trainer.checkpoint_every=2", f"trainer.run_dir={tmp_path / 'killed'}"]
    _run(tmp_path, tiny_model_path, "first", run + ["trainer.steps=3"])
    ckpts = tmp_path / "killed" / "checkpoints"
    (ckpts / "latest").write_text("step_0000002")  # step 3's checkpoint never completed
    metrics = tmp_path / "killed" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 3, "acc_t')  # and a line torn by the kill
    _, resumed = _run(tmp_path, tiny_model_path, "second", run + ["trainer.steps=4"])
    assert [r["step"] for r in resumed] == [0, 1, 2, 3]
    assert _without_timings(resumed) == _without_timings(straight)


def test_resuming_with_a_different_config_is_refused_before_anything_is_rewritten(tmp_path, tiny_model_path):
    from score_rl.config import ConfigError

    run = ["trainer.checkpoint_every=2", f"trainer.run_dir={tmp_path / 'run'}"]
    _run(tmp_path, tiny_model_path, "first", run + ["trainer.steps=2"])
    saved = (tmp_path / "run" / "config.yaml").read_bytes()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    for change, named in [(["shaping.alpha=5"], "'shaping.alpha'"), (["algo.name=ppo"], "'algo.name'"),
                          (["env.seed=1", "learner.lr=1e-3"], "'env.seed', 'learner.lr'")]:
        cfg = tiny_config(tmp_path / "again", [f"model.path={tiny_model_path}", "ray.enabled=false",
                                               "trainer.steps=4", "trainer.eval_before_after=false", *run, *change])
        with pytest.raises(ConfigError, match=f"config keys? {named} differs? from the run being resumed") as info:
            Trainer(cfg, log=lambda *_: None)
        assert "\n" not in str(info.value) and "trainer.allow_config_change" in str(info.value)
        assert (tmp_path / "run" / "config.yaml").read_bytes() == saved, "nothing rewritten before the check"
        assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == metrics
    # run length, logging and placement may change; with the override anything may, and the new config is saved
    _, rows = _run(tmp_path, tiny_model_path, "longer", run + ["trainer.steps=3", "trainer.progress_bar=true"])
    assert [r["step"] for r in rows] == [0, 1, 2]
    _run(tmp_path, tiny_model_path, "override", run + ["trainer.steps=4", "shaping.alpha=5",
                                                       "trainer.allow_config_change=true"])
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "alpha: 5.0" in text and "allow_config_change: false" in text, "the override is used once, not saved"
    # a key the saved file lacks (added to the schema after the run started) counts as its default
    (tmp_path / "run" / "config.yaml").write_text(text.replace("  weight_sync_bucket_mb: 256.0\n", ""))
    _, rows = _run(tmp_path, tiny_model_path, "newer", run + ["trainer.steps=5", "shaping.alpha=5"])
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]


PPO = ["algo.name=ppo", "algo.ppo.epochs=2", "algo.ppo.minibatches=2", "learner.micro_batch_size=2"]


@pytest.mark.parametrize("algo", [[], PPO, ["learner.zero_stage=3", *PPO], ["model.lora.r=4", "learner.lr=1e-3"]],
                         ids=["reinforce", "ppo", "ppo-zero3", "lora"])
def test_a_resumed_run_logs_what_an_uninterrupted_run_logs(tmp_path, tiny_model_path, algo):
    """Resume point invariance: 4 steps straight vs 2 steps, a new process-like Trainer, then 2 more (with gradient
    accumulation: 2 micro-batches a step, so the accumulation boundary must stay aligned after the resume). PPO:
    2 epochs of 2 minibatches (4 updates a step), so the critic and its optimizer must be checkpointed too."""
    _, straight = _run(tmp_path, tiny_model_path, "straight", ["trainer.steps=4", *algo])
    run = [f"trainer.run_dir={tmp_path / 'resumed'}", "trainer.checkpoint_every=2", *algo]
    _run(tmp_path, tiny_model_path, "first", run + ["trainer.steps=2"])
    _, resumed = _run(tmp_path, tiny_model_path, "second", run + ["trainer.steps=4"])
    assert [r["step"] for r in resumed] == [0, 1, 2, 3]
    assert _without_timings(resumed) == _without_timings(straight)
    if "algo.name=ppo" in algo:
        assert all(r["updates"] == 4 and r["ratio_dev_first_update"] == 0.0 for r in resumed)
        assert all(r["ratio_dev"] > 0 and r["value_loss"] > 0 for r in resumed)
        for key in ("clip_frac", "approx_kl", "explained_var_t1", "explained_var_t2", "critic_grad_norm"):
            assert key in resumed[0], key


def test_ppo_minibatches_must_divide_the_step(tmp_path, tiny_model_path):
    from score_rl.config import ConfigError

    with pytest.raises(ConfigError, match=r"learner.num_ranks \* algo.ppo.minibatches = 3"):
        _run(tmp_path, tiny_model_path, "bad", ["algo.name=ppo", "algo.ppo.minibatches=3"])


def test_bfloat16_trains_and_reports_the_sampler_learner_log_prob_gap(tmp_path, tiny_model_path):
    """model.dtype=bfloat16 end to end on CPU (slow where the CPU lacks AVX512-BF16, but correct): sampler, policy and
    reference all in bfloat16; logprob_mismatch reports how far the learner's log-probs are from the sampler's."""
    import torch

    trainer, rows = _run(tmp_path, tiny_model_path, "bf16", ["model.dtype=bfloat16", "trainer.steps=2"])
    worker, learner = trainer.workers.members[0], trainer.learners.members[0]
    for model in (worker.model, learner.engine.module, learner.reference):
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(r["loss"] == r["loss"] and r["grad_norm"] > 0 for r in rows)  # not NaN, and it learns
    # on this CPU a full forward pass and HF generate's cached decoding round alike: the gap is ~1e-7
    assert rows[0]["logprob_mismatch"] < 1e-2, "bfloat16 sampler and learner disagree by more than rounding"


def test_model_dtype_auto_resumes_in_the_dtype_the_run_trained_in(tmp_path, tiny_model_path, monkeypatch):
    """A run saved with float32 (the default before auto) resumes under auto, and keeps float32 even where auto would
    now pick bfloat16 (a requeue onto another node): its checkpoint records the dtype."""
    import torch

    run = [f"trainer.run_dir={tmp_path / 'run'}", "trainer.checkpoint_every=1"]
    _run(tmp_path, tiny_model_path, "first", run + ["trainer.steps=1", "model.dtype=float32"])
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_0000001" / "trainer_state.json").read_text())
    assert state["model_dtype"] == "float32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)  # auto would be bf16
    lines = []
    cfg = tiny_config(tmp_path / "second", [f"model.path={tiny_model_path}", "ray.enabled=false", "trainer.steps=2",
                                            "trainer.eval_before_after=false", "model.dtype=auto", *run])
    assert cfg.model.dtype == "auto"
    trainer = Trainer(cfg, log=lines.append)
    trainer.fit()
    assert trainer.start_step == 1 and trainer.cfg.model.dtype == "float32"
    assert any("the dtype the run being resumed trained in" in line for line in lines)


def test_the_quickstart_model_shares_its_prompt_every_step_without_a_word(tmp_path, tiny_model_path):
    """learner.share_prompt_prefix on the quickstart's model: every row of every step runs with its problem's prompt
    shared (metrics.jsonl's shared_prompt_rows), and nothing is said to be off. This fails when an upstream change
    (e.g. a renamed cache argument) makes the learner fall back to whole rows."""
    lines = []
    cfg = tiny_config(tmp_path, [f"model.path={tiny_model_path}", "ray.enabled=false", "trainer.steps=2",
                                 "trainer.eval_before_after=false"])
    trainer = Trainer(cfg, log=lines.append)
    trainer.fit()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["shared_prompt_rows"] for r in rows] == [8, 8]  # 4 problems x 2 samples, all shared
    assert not [line for line in lines if ": off for" in line], lines


def test_a_model_that_cannot_share_its_prompt_says_so_once_at_start(tmp_path, deeper_model_path):
    """A sliding-window model keeps not every position in its K/V cache: the shared prompt and the turn-2 cache reuse
    are off, the run says so once at start-up naming the model and the reason, and the metric shows 0 rows shared."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from score_rl.utils import load_tokenizer

    config = AutoConfig.from_pretrained(deeper_model_path)
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 4, 0
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    model = AutoModelForCausalLM.from_pretrained(deeper_model_path, config=config)
    path = tmp_path / "sliding"
    model.save_pretrained(path)
    load_tokenizer(deeper_model_path).save_pretrained(path)
    lines = []
    cfg = tiny_config(tmp_path, [f"model.path={path}", "ray.enabled=false", "trainer.steps=2",
                                 "trainer.eval_before_after=false"])
    trainer = Trainer(cfg, log=lines.append)
    trainer.fit()
    off = [line for line in lines if ": off for" in line]
    assert len(off) == 3, lines  # policy, reference, rollout: once each
    assert off[0].startswith("shared prompt: off for the policy model, Qwen2ForCausalLM (")
    assert off[1].startswith("shared prompt: off for the reference model, Qwen2ForCausalLM (")
    assert off[2].startswith("rollout.kv_cache_reuse: off for Qwen2ForCausalLM (")
    assert all("DynamicSlidingWindowLayer" in line for line in off)
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["shared_prompt_rows"] for r in rows] == [0, 0]


def test_every_json_file_of_a_run_is_strict_json(tmp_path, tiny_model_path, monkeypatch):
    """An undefined rate (the break rate with no right first attempt) is null in eval_base.json and
    eval_before_after.json, never NaN (which strict parsers, e.g. JavaScript's JSON.parse, refuse); the report and a
    resume read it back as NaN."""
    import math

    import score_rl.train.trainer as trainer_module
    from score_rl.launch.sweep import final_metrics

    real = trainer_module.self_correction_metrics
    monkeypatch.setattr(trainer_module, "self_correction_metrics",
                        lambda episodes: {**real(episodes), "break_rate": float("nan")})
    cfg = tiny_config(tmp_path, [f"model.path={tiny_model_path}", "ray.enabled=false", "trainer.steps=1"])
    trainer = Trainer(cfg, log=lambda *_: None)
    trainer.fit()

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    files = [p for p in trainer.run_dir.rglob("*.json")]
    assert {"eval_base.json", "eval_before_after.json"} <= {p.name for p in files}
    for path in files:
        json.loads(path.read_text(), parse_constant=refuse)
    for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)
    saved = json.loads((trainer.run_dir / "eval_before_after.json").read_text())
    assert saved["base"]["break_rate"] is None and saved["trained"]["break_rate"] is None
    assert math.isnan(trainer._base_results()["break_rate"])
    assert final_metrics(trainer.run_dir)["acc_t2"] == saved["trained"]["acc_t2"]


def test_dumps_json_writes_null_for_non_finite_floats():
    import math

    from score_rl.utils import dumps_json, nan_for_none

    text = dumps_json({"break_rate": float("nan"), "x": [float("inf"), 1.5, (2, -float("inf"))], "k": 3})
    assert json.loads(text) == {"break_rate": None, "x": [None, 1.5, [2, None]], "k": 3}
    assert math.isnan(nan_for_none(json.loads(text))["break_rate"])


def test_the_start_up_probes_change_nothing_a_run_samples_or_trains(tmp_path, tiny_model_path, monkeypatch):
    """The shared-prompt and KV-reuse probes run forward passes and a greedy generation at start-up: a run with them
    logs exactly what a run without them logs (same samples, same updates)."""
    probed = _run(tmp_path, tiny_model_path, "probed", ["trainer.steps=3"])[1]
    import score_rl.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "say_what_is_off", lambda *args: None)
    unprobed = _run(tmp_path, tiny_model_path, "unprobed", ["trainer.steps=3"])[1]
    assert _without_timings(probed) == _without_timings(unprobed)


def _zero_rewards(monkeypatch, calls=None):
    """Every shaped reward 0 (on the first ``calls`` steps; None: on every step): a batch with nothing to learn."""
    import score_rl.train.methods as methods_module

    real, seen = methods_module.shape_episodes, []

    def shape(episodes, stage, shaping):
        real(episodes, stage, shaping)
        seen.append(stage)
        if calls is None or len(seen) <= calls:
            for ep in episodes:
                for turn in ep.turns:
                    turn.shaped_reward = 0.0

    monkeypatch.setattr(methods_module, "shape_episodes", shape)


def _rewards_to_learn_from(monkeypatch):
    """The first sample of every problem right, the others wrong: every group has an advantage."""
    import score_rl.train.methods as methods_module

    real = methods_module.shape_episodes

    def shape(episodes, stage, shaping):
        first = set()
        for ep in episodes:
            for turn in ep.turns:
                turn.reward = float(ep.problem_id not in first)
            first.add(ep.problem_id)
        real(episodes, stage, shaping)

    monkeypatch.setattr(methods_module, "shape_episodes", shape)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


@pytest.mark.parametrize("skip_rule", [True, False])
def test_a_step_without_learning_signal_makes_no_optimizer_step(tmp_path, tiny_model_path, monkeypatch, skip_rule):
    """Every reward 0 before the policy has moved: the gradient is only sampler/learner rounding inside the KL terms,
    and one AdamW step would turn it into a full-size update. The step makes none and says so; the next step, which
    has rewards to learn from, updates. (With the rule switched off, the same step moves every weight: the check can
    fail.)"""
    import torch

    _zero_rewards(monkeypatch, calls=1)
    trainer, rows = _run(tmp_path, tiny_model_path, "one", ["trainer.steps=1", f"algo.skip_no_signal={skip_rule}"])
    base, after = _weights(tiny_model_path), _weights(trainer.run_dir / "final")
    changed = [k for k in base if not torch.equal(base[k], after[k])]
    if skip_rule:
        assert rows[0]["update_skipped"] == 1.0 and "grad_norm" not in rows[0] and "loss" not in rows[0]
        assert changed == [], "a step without learning signal moved the policy"
        assert json.loads((trainer.run_dir / "run_complete.json").read_text())["updates"] == 0
        _rewards_to_learn_from(monkeypatch)
        _, rows = _run(tmp_path, tiny_model_path, "two", ["algo.skip_no_signal=true", "trainer.steps=2"])
        assert [r["update_skipped"] for r in rows] == [0.0, 0.0] and rows[0]["grad_norm"] > 0
    else:
        assert rows[0]["update_skipped"] == 0.0 and rows[0]["grad_norm"] < 1e-3
        assert len(changed) > len(base) // 2, "the zero-signal AdamW step should move the weights"


def test_the_no_signal_rule_survives_a_resume(tmp_path, tiny_model_path, monkeypatch):
    """The count of applied updates is in the checkpoint: a run resumed after skipped steps still knows its policy is
    the reference (and a run resumed after an update knows it is not)."""
    _zero_rewards(monkeypatch)
    run = ["trainer.checkpoint_every=1", f"trainer.run_dir={tmp_path / 'r'}", "algo.skip_no_signal=true"]
    _run(tmp_path, tiny_model_path, "a", run + ["trainer.steps=2"])
    state = json.loads((tmp_path / "r" / "checkpoints" / "step_0000002" / "trainer_state.json").read_text())
    assert state["updates"] == 0
    lines = []
    cfg = tiny_config(tmp_path / "b", [f"model.path={tiny_model_path}", "ray.enabled=false", "trainer.steps=3",
                                       "trainer.eval_before_after=false", *run])
    Trainer(cfg, log=lines.append).fit()
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update_skipped"] for r in rows] == [1.0, 1.0, 1.0]
    assert "3 of 3 steps made no optimizer step (no learning signal, or nothing kept); warning: the policy was never " \
           "updated: final/ is the base model" in lines


def _signal_from_step(monkeypatch, first: int):
    """Steps before ``first``: every reward 0 (nothing to learn); from it on, the first sample of each problem right.
    Keyed on the step number, so a resumed process sees the same rewards as an uninterrupted one."""
    import score_rl.train.methods as methods_module

    real_stage, real_shape, current = methods_module.stage_at, methods_module.shape_episodes, {}

    def stage(step, shaping):
        current["step"] = step
        return real_stage(step, shaping)

    def shape(episodes, stage, shaping):
        seen = set()
        for ep in episodes:
            for turn in ep.turns:
                turn.reward = float(current["step"] >= first and ep.problem_id not in seen)
            seen.add(ep.problem_id)
        real_shape(episodes, stage, shaping)

    monkeypatch.setattr(methods_module, "stage_at", stage)
    monkeypatch.setattr(methods_module, "shape_episodes", shape)


@pytest.mark.parametrize("mode", [[], ["trainer.off_policy_steps=1"]], ids=["on-policy", "off-policy"])
def test_a_run_that_skipped_its_first_step_resumes_as_if_uninterrupted(tmp_path, tiny_model_path, monkeypatch, mode):
    """Resume point invariance with the no-signal rule on: step 0 is skipped, steps 1-2 update; resumed after step 1
    (the checkpoint holds 0 updates, and off-policy also the batch of step 1 sampled by the base model), the run logs
    exactly what a run of 3 steps straight logs."""
    _signal_from_step(monkeypatch, first=1)
    common = ["algo.skip_no_signal=true", *mode]
    _, straight = _run(tmp_path, tiny_model_path, "straight", ["trainer.steps=3", *common])
    assert [r["update_skipped"] for r in straight] == [1.0, 0.0, 0.0]
    run = [f"trainer.run_dir={tmp_path / 'resumed'}", "trainer.checkpoint_every=1", *common]
    _run(tmp_path, tiny_model_path, "first", run + ["trainer.steps=1"])
    _, resumed = _run(tmp_path, tiny_model_path, "second", run + ["trainer.steps=3"])
    assert _without_timings(resumed) == _without_timings(straight)
