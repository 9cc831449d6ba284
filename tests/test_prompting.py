"""PromptBuilder: turn-2 context = turn-1 ids + attempt-1 ids + correction ids, for plain and chat-template prompts."""

from __future__ import annotations

import pytest

from score_rl.config import ConfigError
from score_rl.envs import make_env
from score_rl.prompting import PromptBuilder
from score_rl.utils import load_tokenizer

CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture
def tokenizer(tiny_model_path):
    return load_tokenizer(tiny_model_path)


def test_plain_prompts_render_the_configured_templates(cfg, tokenizer):
    env = make_env(cfg.env, cfg.prompt)
    builder = PromptBuilder(tokenizer, env)
    problem = env.problems("test")[0]
    first = builder.first_attempt(problem)
    assert tokenizer.decode(first) == cfg.prompt.first_attempt.replace("{problem}", problem.text)
    attempt = tokenizer(" 42", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    second = builder.correction(first, attempt, problem.id)
    assert second[: len(first) + len(attempt)] == first + attempt
    assert tokenizer.decode(second[len(first) + len(attempt):]) == cfg.prompt.correction


def test_chat_template_turn2_equals_the_rendered_conversation(cfg, tokenizer):
    tokenizer.chat_template = CHAT
    env = make_env(cfg.env, cfg.prompt)
    builder = PromptBuilder(tokenizer, env, use_chat_template=True)
    problem = env.problems("test")[0]
    first = builder.first_attempt(problem)
    attempt = tokenizer(" 42", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    second = builder.correction(first, attempt, problem.id)
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": env.first_attempt_prompt(problem)}, {"role": "assistant", "content": " 42"},
         {"role": "user", "content": env.correction_instruction()}], add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(second) == expected


def test_chat_template_requested_but_missing_is_a_config_error(cfg, tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="use_chat_template"):
        PromptBuilder(tokenizer, make_env(cfg.env, cfg.prompt), use_chat_template=True)
