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


# --- a truncated attempt gets a well-formed turn boundary (context of turn 2, never part of attempt 1) -------------
# end-of-turn token <|end|> differs from eos_token <|endoftext|>; CHAT_SPACE has text before it (like Llama 2's " </s>")
CHAT_EOT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CHAT_SPACE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }} <|end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _rendered(tokenizer, env, problem, answer: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": env.first_attempt_prompt(problem)}, {"role": "assistant", "content": answer},
         {"role": "user", "content": env.correction_instruction()}], add_generation_prompt=True, tokenize=False)


@pytest.fixture
def eot_builder(cfg, tokenizer, request):
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|end|>"]})
    tokenizer.chat_template = getattr(request, "param", CHAT_EOT)
    env = make_env(cfg.env, cfg.prompt)
    return PromptBuilder(tokenizer, env, use_chat_template=True), env, tokenizer.convert_tokens_to_ids("<|end|>")


@pytest.mark.parametrize("eot_builder,before_eot", [(CHAT_EOT, ""), (CHAT_SPACE, " ")], indirect=["eot_builder"])
def test_chat_template_end_of_turn_token_is_the_templates_not_eos(eot_builder, before_eot, tokenizer):
    builder, env, eot = eot_builder
    assert eot != tokenizer.eos_token_id
    assert builder.turn_end_id == eot
    problem = env.problems("test")[0]
    first = builder.first_attempt(problem)
    # attempt 1 ended with the template's end-of-turn token: it is not repeated
    attempt = tokenizer(" 42" + before_eot, add_special_tokens=False)["input_ids"] + [eot]
    second = builder.correction(first, attempt, problem.id)
    assert second[: len(first) + len(attempt)] == first + attempt
    assert builder.ended_turn(attempt) and second.count(eot) == 3, "ends of: user turn 1, attempt 1, correction"
    expected = _rendered(tokenizer, env, problem, " 42")
    assert tokenizer.decode(second) == expected
    assert tokenizer.decode(second, skip_special_tokens=False) == expected


@pytest.mark.parametrize("eot_builder", [CHAT_EOT, CHAT_SPACE], indirect=True)
def test_truncated_chat_attempt_gets_the_end_of_turn_boundary(eot_builder, tokenizer):
    builder, env, eot = eot_builder
    problem = env.problems("test")[0]
    first = builder.first_attempt(problem)
    attempt = tokenizer(" 42424", add_special_tokens=False)["input_ids"]  # hit max_new_tokens: no end-of-turn token
    assert not builder.ended_turn(attempt)
    second = builder.correction(first, attempt, problem.id)
    assert second[: len(first) + len(attempt)] == first + attempt, "attempt 1's ids stay exactly as sampled"
    inserted = second[len(first) + len(attempt):]
    assert eot in inserted and inserted[-len(builder._correction_ids):] == builder._correction_ids
    # the context reads like a finished turn: "... 42424<|end|>\n<|user|>There might be ..."
    assert tokenizer.decode(second) == _rendered(tokenizer, env, problem, " 42424")


def test_chat_attempt_ending_with_another_stop_token_still_gets_the_templates_boundary(eot_builder, tokenizer):
    builder, env, eot = eot_builder
    problem = env.problems("test")[0]
    first = builder.first_attempt(problem)
    attempt = tokenizer(" 42", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    second = builder.correction(first, attempt, problem.id)
    assert second[: len(first) + len(attempt)] == first + attempt
    assert second[len(first) + len(attempt)] == eot


def test_truncated_plain_attempt_gets_an_eos_boundary(cfg, tokenizer):
    env = make_env(cfg.env, cfg.prompt)
    builder = PromptBuilder(tokenizer, env)
    problem = env.problems("test")[0]
    first = builder.first_attempt(problem)
    truncated = tokenizer(" 42424", add_special_tokens=False)["input_ids"]
    second = builder.correction(first, truncated, problem.id)
    assert second == first + truncated + [tokenizer.eos_token_id] + builder._correction_ids
    finished = truncated + [tokenizer.eos_token_id]
    assert builder.correction(first, finished, problem.id) == first + finished + builder._correction_ids
    # any stop id of the generator ends a plain turn: no EOS is added after it
    other = PromptBuilder(tokenizer, env, stop_ids=[7, tokenizer.eos_token_id])
    assert other.correction(first, truncated + [7], problem.id) == first + truncated + [7] + builder._correction_ids


def test_boundary_ids_are_context_not_attempt1_tokens(cfg, tokenizer, eot_builder):
    """collate trains exactly the sampled ids of each turn: the inserted boundary has turn index 0."""
    from score_rl.episode import Episode, Turn
    from score_rl.learner.batch import collate

    builder, env, eot = eot_builder
    problem = env.problems("test")[0]
    first = builder.first_attempt(problem)
    attempt1 = tokenizer(" 42424", add_special_tokens=False)["input_ids"]
    second = builder.correction(first, attempt1, problem.id)
    attempt2 = tokenizer(" 42", add_special_tokens=False)["input_ids"] + [eot]
    turns = [Turn(first, attempt1, [-1.0] * len(attempt1), "", 0.0, truncated=True),
             Turn(second, attempt2, [-2.0] * len(attempt2), "", 1.0)]
    batch = collate([Episode(problem.id, 0, turns)], tokenizer.pad_token_id)
    turn = batch["turn"][0].tolist()
    targets = batch["input_ids"][0, 1:].tolist()
    assert [t for t, k in zip(targets, turn) if k == 1] == attempt1
    assert [t for t, k in zip(targets, turn) if k == 2] == attempt2
    boundary = len(first) + len(attempt1)
    assert targets[boundary - 1] == eot and turn[boundary - 1] == 0, "the inserted end-of-turn token is not trained"
