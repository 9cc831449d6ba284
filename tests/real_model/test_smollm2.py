"""A real pretrained model end to end: SmolLM2-135M-Instruct (``score-rl get-model smollm2-135m-instruct`` first;
.ci/run does). Run with ``pytest -m real_model``: the default suite deselects these (they need the 0.5 GB model)."""

from __future__ import annotations

import json

import pytest

from score_rl.train.pretrained import MODELS, default_dest, greedy_answer

pytestmark = pytest.mark.real_model
NAME = "smollm2-135m-instruct"
CONFIG = "configs/smollm2_arithmetic.yaml"


@pytest.fixture(scope="module")
def model_dir():
    path = default_dest(NAME)
    if not (path / "config.json").is_file():
        pytest.fail(f"{path} is missing: run `score-rl get-model {NAME}` first")
    return str(path)


@pytest.fixture(scope="module")
def prompts(model_dir):
    from score_rl.config import load_config
    from score_rl.envs import make_env
    from score_rl.prompting import PromptBuilder
    from score_rl.rollout.engines.base import load_generation_config, stop_token_ids
    from score_rl.utils import load_tokenizer

    cfg = load_config(CONFIG)
    tokenizer = load_tokenizer(model_dir)
    env = make_env(cfg.env, cfg.prompt)
    stops = stop_token_ids(load_generation_config(model_dir), tokenizer)
    return PromptBuilder(tokenizer, env, True, 1024, stop_ids=stops), env, tokenizer


def test_the_cached_model_is_the_verified_conversion(model_dir):
    from score_rl.utils import load_model, load_tokenizer

    source = json.loads((default_dest(NAME) / "score_rl_source.json").read_text())
    assert source["gguf_sha256"] == MODELS[NAME].sha256 and source["dtype"] == "float32"
    model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
    got = greedy_answer(model, tokenizer, MODELS[NAME].check_prompt, len(MODELS[NAME].check_tokens))
    assert got == list(MODELS[NAME].check_tokens)


def test_chat_template_turn_boundaries(prompts):
    """Attempt 1 is an assistant turn ending at <|im_end|>; the correction is a user turn; attempt 2 starts an
    assistant turn. A truncated attempt gets the boundary inserted; turn 2's prompt extends turn 1's token for token."""
    builder, env, tokenizer = prompts
    problem = env.problems("test")[0]
    first = builder.first_attempt(problem)
    assert tokenizer.decode(first).endswith("<|im_start|>assistant\n")
    assert tokenizer.convert_ids_to_tokens(builder.turn_end_id) == "<|im_end|>"
    attempt = tokenizer(" 5", add_special_tokens=False)["input_ids"] + [builder.turn_end_id]  # a finished attempt
    second = builder.correction(first, attempt, problem.id)
    assert second[:len(first) + len(attempt)] == first + attempt  # ids extended, never re-tokenised
    tail = tokenizer.decode(second[len(first) + len(attempt):])
    assert tail.startswith("\n<|im_start|>user\n") and tail.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert env.correction_instruction().strip() in tail
    cut = tokenizer(" 5", add_special_tokens=False)["input_ids"]  # truncated: no <|im_end|> sampled
    second_cut = builder.correction(first, cut, problem.id)
    assert second_cut[len(first) + len(cut)] == builder.turn_end_id
    assert second_cut[len(first) + len(cut) + 1:] == second[len(first) + len(attempt):]


def test_two_training_steps_on_the_sampled_distribution(tmp_path, model_dir):
    """Two SCoRe steps in float32 (in-process, small batch): the learner's log-probs match the sampler's to < 1e-4
    per token, and the check measures something (a gap > 0: two computations, KV cache vs whole rows)."""
    from score_rl.config import load_config
    from score_rl.train.trainer import Trainer

    cfg = load_config(CONFIG, [f"model.path={model_dir}", "model.dtype=float32", "ray.enabled=false",
                               "trainer.steps=2", "trainer.eval_before_after=false", "rollout.problems_per_step=2",
                               "rollout.samples_per_problem=2", "rollout.max_new_tokens=16",
                               "learner.micro_batch_size=4", "trainer.progress_bar=false",
                               # the check needs the learner's pass on every step: update even on a batch that is
                               # all wrong (4 episodes of a 135M model often are; algo.skip_no_signal would skip it)
                               "algo.skip_no_signal=false", f"trainer.run_dir={tmp_path / 'run'}"])
    lines = []
    trainer = Trainer(cfg, log=lines.append)
    trainer.fit()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["tokens"] > 0
        assert 0 < row["logprob_mismatch"] < 1e-4, row["logprob_mismatch"]
        assert row["shared_prompt_rows"] == 4  # both problems' samples share their prompt
    assert not [line for line in lines if ": off for" in line], lines
