"""Where a turn ends: every EOS id of the model's generation config (and a chat template's end-of-turn token) stops
a turn, and a truncated attempt 1 is closed by boundary ids that are context of turn 2, never trained as attempt 1."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch

from score_rl.learner.batch import collate
from score_rl.learner.logprobs import token_logprobs
from score_rl.rollout.engines.base import stop_token_ids
from score_rl.rollout.worker import RolloutWorker
from score_rl.utils import load_model, load_tokenizer

EOT = "<|eot|>"
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}" + EOT + "\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _model_with_eot(src: str, dst, generation_eos, chat_template=None) -> int:
    """A copy of the tiny model whose tokenizer has an end-of-turn token <|eot|> (not its eos_token) and whose
    generation_config.json lists ``generation_eos(eot, eos)`` as EOS ids. Returns the id of <|eot|>."""
    from transformers import GenerationConfig

    shutil.copytree(src, dst)
    tokenizer = load_tokenizer(src)
    tokenizer.add_special_tokens({"additional_special_tokens": [EOT]})
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(dst)
    eot, eos = tokenizer.convert_tokens_to_ids(EOT), tokenizer.eos_token_id
    assert eot != eos
    model = load_model(src, "float32")
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.save_pretrained(dst)
    GenerationConfig(eos_token_id=generation_eos(eot, eos), pad_token_id=tokenizer.pad_token_id, do_sample=True,
                     top_k=3, repetition_penalty=1.3).save_pretrained(dst)
    return eot


def _favour(model, biases) -> None:
    """Add biases[token] to the token's logit everywhere (an untied lm_head with a bias): > 0 the model emits it
    often, -100 never."""
    old = model.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        for token, bias in biases.items():
            head.bias[token] = bias
    model.set_output_embeddings(head)


def _check_spans_and_logprobs(worker, episodes, temperature=1.0):
    """Each turn's trained positions are exactly its sampled ids (stop token included), and the learner's
    log-probs at them equal the sampler's."""
    batch = collate(episodes, worker.tokenizer.pad_token_id)
    targets = batch["input_ids"][:, 1:]
    for i, ep in enumerate(episodes):
        for t, turn in enumerate(ep.turns, start=1):
            assert targets[i][batch["turn"][i] == t].tolist() == turn.response_ids
    with torch.no_grad():
        logp, _ = token_logprobs(worker.model, batch["input_ids"], batch["attention_mask"], temperature)
    mask = batch["turn"] > 0
    assert torch.allclose(logp[mask], batch["sampling_logprobs"][mask], atol=1e-4)


def test_stop_token_ids_is_the_union_of_generation_config_and_tokenizer_eos():
    tok = SimpleNamespace(eos_token_id=2)
    model = lambda eos: SimpleNamespace(eos_token_id=eos)  # noqa: E731  (a generation config)
    assert stop_token_ids(model([7, 2]), tok) == [7, 2]
    assert stop_token_ids(model([7, 8]), tok) == [7, 8, 2]
    assert stop_token_ids(model(7), tok) == [7, 2]
    assert stop_token_ids(model(None), tok) == [2]
    assert stop_token_ids(model([7]), tok, extra=[9, 7]) == [7, 2, 9]
    with pytest.raises(ValueError, match="EOS"):
        stop_token_ids(model(None), SimpleNamespace(eos_token_id=None))


def test_every_generation_config_eos_id_ends_a_turn(cfg, tiny_model_path, tmp_path):
    """generation_config eos_token_id = [<|eot|>, eos] with <|eot|> != tokenizer.eos_token (a Qwen / Llama 3 instruct
    model): a turn ends at <|eot|>, is not truncated, and its span and log-probs include <|eot|>. The generation
    config's other settings (top_k, repetition_penalty) still do not reach the sampler."""
    path = tmp_path / "model"
    eot = _model_with_eot(tiny_model_path, path, lambda eot, eos: [eot, eos])
    worker = RolloutWorker(cfg, str(path))
    eos = worker.tokenizer.eos_token_id
    assert set(worker.engine.eos_ids) == {eot, eos}
    assert worker.model.generation_config.eos_token_id == worker.engine.eos_ids
    _favour(worker.model, {eot: 5.0})  # <|eot|> likely, but not certain: turns of several lengths
    episodes = worker.run_episodes(worker.env.problems("train")[:8], 2, 1.0, seed=0)
    turns = [turn for ep in episodes for turn in ep.turns]
    at_eot = [turn for turn in turns if turn.response_ids[-1] == eot]
    assert len(at_eot) > len(turns) // 2 and any(len(turn.response_ids) > 1 for turn in at_eot)
    for turn in turns:
        assert not {eot, eos} & set(turn.response_ids[:-1]), "a turn ends at its first stop token"
        assert turn.truncated == (turn.response_ids[-1] not in (eot, eos))
        assert len(turn.sampling_logprobs) == len(turn.response_ids)
    for ep in episodes:  # plain prompts: <|eot|> closed attempt 1, so no EOS is added after it
        t1, t2 = ep.turns
        boundary = [] if t1.response_ids[-1] in (eot, eos) else [eos]
        assert t2.prompt_ids == t1.prompt_ids + t1.response_ids + boundary + worker.prompts._correction_ids
    _check_spans_and_logprobs(worker, episodes)


def test_truncated_plain_attempt_is_closed_by_an_untrained_eos(cfg, tiny_model_path):
    cfg.rollout.max_new_tokens = 2
    worker = RolloutWorker(cfg, tiny_model_path)
    _favour(worker.model, {worker.tokenizer.eos_token_id: -100.0})  # never ends: every attempt is truncated
    episodes = worker.run_episodes(worker.env.problems("train")[:4], 2, 1.0, seed=0)
    eos = worker.tokenizer.eos_token_id
    for ep in episodes:
        t1, t2 = ep.turns
        assert t1.truncated and len(t1.response_ids) == 2 and eos not in t1.response_ids
        assert t2.prompt_ids == t1.prompt_ids + t1.response_ids + [eos] + worker.prompts._correction_ids
    _check_spans_and_logprobs(worker, episodes)  # the inserted EOS is not a turn-1 (or turn-2) target


def test_chat_template_end_of_turn_ends_turns_and_closes_truncated_ones(cfg, tiny_model_path, tmp_path):
    """A chat template whose end-of-turn token is not eos_token and not in the generation config's EOS ids: turns
    still end at it; a truncated attempt 1 gets it inserted as turn-2 context (not trained), a finished one does
    not repeat it, and turn 2's context decodes to the rendered conversation."""
    path = tmp_path / "model"
    eot = _model_with_eot(tiny_model_path, path, lambda eot, eos: [eos], chat_template=CHAT)
    cfg.prompt.use_chat_template = True
    cfg.rollout.max_new_tokens = 3
    worker = RolloutWorker(cfg, str(path))
    assert worker.prompts.turn_end_id == eot and eot in worker.engine.eos_ids
    _favour(worker.model, {eot: 5.0, worker.tokenizer.eos_token_id: -100.0})
    env, tok = worker.env, worker.tokenizer
    problems = env.problems("train")[:8]
    episodes = worker.run_episodes(problems, 2, 1.0, seed=0)
    first_turns = [ep.turns[0] for ep in episodes]
    assert any(t.truncated for t in first_turns) and any(not t.truncated for t in first_turns)
    by_id = {p.id: p for p in problems}
    for ep in episodes:
        t1, t2 = ep.turns
        assert t1.truncated == (t1.response_ids[-1] != eot)
        boundary = [eot] if t1.truncated else []
        assert t2.prompt_ids == t1.prompt_ids + t1.response_ids + boundary + worker.prompts._correction_ids
        answer = tok.decode(t1.response_ids if t1.truncated else t1.response_ids[:-1])
        expected = tok.apply_chat_template(
            [{"role": "user", "content": env.first_attempt_prompt(by_id[ep.problem_id])},
             {"role": "assistant", "content": answer}, {"role": "user", "content": env.correction_instruction()}],
            add_generation_prompt=True, tokenize=False)
        assert tok.decode(t2.prompt_ids) == expected
    _check_spans_and_logprobs(worker, episodes)
