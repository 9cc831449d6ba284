"""HFGenerator.generate(..., keep_cache=True) keeps the batch's KV cache, and the next call (turn 2) prefills only what
follows each row's cached turn-1 prompt + attempt: it samples and scores exactly what a full prefill does. Anything
the cache cannot serve (other rows, another order, new weights) is a full prefill with the same result."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from score_rl.rollout.engines.hf import HFGenerator
from score_rl.rollout.worker import RolloutWorker

V, EOS, PAD = 48, 1, 0
MAX_NEW = 6
PROMPT_LENGTHS = [3, 7, 5, 9, 4, 6, 8, 2, 5, 5]


def _tiny_qwen2(attn: str = "sdpa", eos_bias: float = 2.0):
    """A random 2-layer Qwen2 (grouped-query attention) whose EOS bias makes some rows stop after 1 to 5 tokens and
    others run to max_new_tokens under greedy decoding."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=EOS,
                         initializer_range=0.2, tie_word_embeddings=False, attn_implementation=attn)
    model = Qwen2ForCausalLM(config).eval()
    head = torch.nn.Linear(32, V, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[EOS] = eos_bias
        head.bias[PAD] = -100.0  # never sampled: a pad in a response would be ambiguous
    model.lm_head = head
    return model


def _engine(model, batch_size: int = 256) -> HFGenerator:
    return HFGenerator(model, SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD), MAX_NEW, batch_size)


def _prompts(lengths=PROMPT_LENGTHS, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, V, (n,), generator=g).tolist() for n in lengths]


def _suffixes(n: int, seed: int = 2):
    """Per row a suffix of 1 to 4 ids (rows of different suffix lengths)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, V, (1 + i % 4,), generator=g).tolist() for i in range(n)]


def _extend(contexts, gens, suffixes):
    return [c + g.response_ids + s for c, g, s in zip(contexts, gens, suffixes)]


class _Prefills:
    """The width of every forward that feeds more than one position (the prefills of generate)."""

    def __init__(self, model):
        self.widths = []
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 1:
            self.widths.append(ids.shape[1])

    def last(self, n: int = 1):
        return self.widths[-n:]


def _assert_same(got, want, atol=1e-5):
    assert [g.response_ids for g in got] == [w.response_ids for w in want]
    assert [g.truncated for g in got] == [w.truncated for w in want]
    for g, w in zip(got, want):
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(w.logprobs), atol=atol, rtol=0)


def _tail_width(contexts, gens, next_contexts):
    """The widest uncached tail of a reusing call: the suffix, and the response's last token where generate never
    fed it (the rows that ran the whole call's length)."""
    steps = max(len(g.response_ids) for g in gens)
    return max(len(n) - len(c) - len(g.response_ids) + (len(g.response_ids) == steps)
               for c, g, n in zip(contexts, gens, next_contexts))


def _full_logprobs(model, context, response, temperature):
    """log_softmax(logits / T) of a plain forward over context + response (no cache, no padding) at the response."""
    ids = torch.tensor([context + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(context) - 1:-1].float()
    return torch.log_softmax(logits / temperature, dim=-1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_greedy_turns_with_reuse_equal_a_full_prefill(attn):
    model = _tiny_qwen2(attn)
    engine, prefills = _engine(model), _Prefills(model)
    ctx1 = _prompts()
    turn1 = engine.generate(ctx1, 0.0, keep_cache=True)
    lengths = [len(g.response_ids) for g in turn1]
    assert any(g.truncated for g in turn1), "some rows run to max_new_tokens"
    assert any(not g.truncated and n < MAX_NEW - 1 for g, n in zip(turn1, lengths)), "some rows stop early at EOS"
    assert len(set(lengths)) > 2

    ctx2 = _extend(ctx1, turn1, _suffixes(len(ctx1)))
    turn2 = engine.generate(ctx2, 0.0, keep_cache=True)
    assert prefills.last() == [_tail_width(ctx1, turn1, ctx2)], "only the uncached tails are prefilled"
    assert prefills.last()[0] < max(map(len, ctx2)) // 2
    _assert_same(turn2, _engine(model).generate(ctx2, 0.0))

    # a third turn goes on from turn 2's cache (which holds turn 1's) the same way
    ctx3 = _extend(ctx2, turn2, _suffixes(len(ctx2), seed=3))
    turn3 = engine.generate(ctx3, 0.0)
    assert prefills.last() == [_tail_width(ctx2, turn2, ctx3)]
    _assert_same(turn3, _engine(model).generate(ctx3, 0.0))
    assert engine._kept is None, "a call without keep_cache keeps nothing"


def test_rows_that_all_stop_before_max_new_tokens():
    """No row truncated: the call ran fewer steps than max_new_tokens, and every row's response is cached whole."""
    model = _tiny_qwen2(eos_bias=3.0)
    engine = _engine(model)
    ctx1 = _prompts()
    turn1 = engine.generate(ctx1, 0.0, keep_cache=True)
    assert not any(g.truncated for g in turn1) and max(len(g.response_ids) for g in turn1) < MAX_NEW
    ctx2 = _extend(ctx1, turn1, _suffixes(len(ctx1)))
    _assert_same(engine.generate(ctx2, 0.0), _engine(model).generate(ctx2, 0.0))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_turn2_with_reuse_is_the_full_prefill_sample_and_scores_as_the_learner(temperature):
    model = _tiny_qwen2()
    engine, prefills = _engine(model), _Prefills(model)
    ctx1 = _prompts()
    torch.manual_seed(5)
    turn1 = engine.generate(ctx1, temperature, keep_cache=True)
    assert len({len(g.response_ids) for g in turn1}) > 1
    ctx2 = _extend(ctx1, turn1, _suffixes(len(ctx1)))
    torch.manual_seed(7)
    turn2 = engine.generate(ctx2, temperature)
    assert prefills.last()[0] < max(map(len, ctx2))
    torch.manual_seed(7)
    full = _engine(model).generate(ctx2, temperature)
    # same seed, same random draws: the same tokens as a full prefill
    _assert_same(turn2, full)
    # and the log-probs reported for them are those of a plain forward over the turn-2 context (what the learner
    # computes)
    for context, gen in zip(ctx2, turn2):
        want = _full_logprobs(model, context, gen.response_ids, temperature)
        assert torch.allclose(torch.tensor(gen.logprobs), want, atol=1e-5, rtol=0)


def _turn1(model, batch_size=256, temperature=0.0):
    engine = _engine(model, batch_size)
    ctx1 = _prompts()
    torch.manual_seed(5)
    turn1 = engine.generate(ctx1, temperature, keep_cache=True)
    return engine, ctx1, turn1


def test_a_row_that_does_not_extend_its_cached_row_gets_the_full_prefill_result():
    """Such a row goes on from what its context shares with its cached row (its other cached positions masked)."""
    model = _tiny_qwen2()
    engine, ctx1, turn1 = _turn1(model)
    prefills = _Prefills(model)
    ctx2 = _extend(ctx1, turn1, _suffixes(len(ctx1)))
    ctx2[3] = ctx2[3][:2] + [(ctx2[3][2] + 1) % (V - 2) + 2] + ctx2[3][3:]  # another token inside its turn-1 prompt
    ctx2[5] = ctx2[5][:len(ctx1[5])]  # only its turn-1 prompt (shorter than what is cached)
    got = engine.generate(ctx2, 0.0)
    assert prefills.last() == [len(ctx2[3]) - 2] and len(ctx2[3]) - 2 < max(map(len, ctx2)), "the cache was used"
    _assert_same(got, _engine(model).generate(ctx2, 0.0))


@pytest.mark.parametrize("change", ["new prompts", "fewer rows", "reversed rows", "no keep_cache", "new weights"])
def test_what_the_cache_cannot_serve_is_a_full_prefill(change):
    model = _tiny_qwen2()
    engine, ctx1, turn1 = _turn1(model)
    prefills = _Prefills(model)
    ctx2 = _extend(ctx1, turn1, _suffixes(len(ctx1)))
    if change == "new prompts":
        ctx2 = _prompts(seed=11)
    elif change == "fewer rows":
        ctx2 = ctx2[:-1]
    elif change == "reversed rows":
        ctx2 = ctx2[::-1]
    elif change == "no keep_cache":
        engine.generate(ctx1, 0.0)
        assert engine._kept is None
    else:
        engine.load_weights({name: value + 0.01 for name, value in model.state_dict().items()
                             if name.endswith("mlp.up_proj.weight")})
        assert engine._kept is None
    got = engine.generate(ctx2, 0.0)
    assert prefills.last() == [max(map(len, ctx2))], "a full prefill"
    _assert_same(got, _engine(model).generate(ctx2, 0.0))


def test_generation_batches_reuse_their_own_cache():
    """generation_batch_size splits the call: each batch continues from the cache it kept."""
    model = _tiny_qwen2()
    engine, ctx1, turn1 = _turn1(model, batch_size=4)
    prefills = _Prefills(model)
    ctx2 = _extend(ctx1, turn1, _suffixes(len(ctx1)))
    got = engine.generate(ctx2, 0.0)
    assert len(prefills.widths) == 3
    for start, width in zip(range(0, len(ctx2), 4), prefills.widths):
        assert width < max(map(len, ctx2[start:start + 4]))
    _assert_same(got, _engine(model, batch_size=4).generate(ctx2, 0.0))


@pytest.mark.parametrize("batch_size", [256, 8])
def test_m_corrections_of_each_attempt_share_its_cache(batch_size):
    """corrections_per_attempt = m: each turn-1 row is continued by m consecutive turn-2 contexts."""
    model = _tiny_qwen2()
    engine, ctx1, turn1 = _turn1(model, batch_size=batch_size, temperature=1.0)
    prefills = _Prefills(model)
    m = 3
    suffixes = _suffixes(len(ctx1) * m)
    ctx2 = [c + g.response_ids + suffixes[i * m + j] for i, (c, g) in enumerate(zip(ctx1, turn1)) for j in range(m)]
    torch.manual_seed(9)
    got = engine.generate(ctx2, 1.0)
    assert all(w < max(map(len, ctx2)) for w in prefills.widths)
    torch.manual_seed(9)
    _assert_same(got, _engine(model, batch_size=batch_size).generate(ctx2, 1.0))


def _full_prefill_only(engine):
    def generate(prompts, temperature, seeds=None, keep_cache=False):
        return HFGenerator.generate(engine, prompts, temperature, seeds)
    return generate


@pytest.mark.parametrize("temperature,corrections,batch_size", [(0.0, 1, 256), (1.0, 1, 256), (1.0, 3, 256),
                                                                 (1.0, 2, 5)])
def test_run_episodes_with_reuse_equal_run_episodes_with_full_prefills(cfg, tiny_model_path, monkeypatch, temperature,
                                                                       corrections, batch_size):
    cfg.rollout.generation_batch_size = batch_size
    cfg.model.dtype = "float32"  # compared to 1e-5 (model.dtype auto may pick bfloat16)
    worker = RolloutWorker(cfg, tiny_model_path)
    prefills = _Prefills(worker.model)
    problems = worker.env.problems("train")[:6]
    reuse = worker.run_episodes(problems, 2, temperature, seed=3, corrections_per_attempt=corrections)
    turn2_width = max(len(ep.turns[1].prompt_ids) for ep in reuse)
    assert max(prefills.widths) < turn2_width, "turn 2 reused turn 1's cache"
    monkeypatch.setattr(worker.engine, "generate", _full_prefill_only(worker.engine))
    full = worker.run_episodes(problems, 2, temperature, seed=3, corrections_per_attempt=corrections)
    assert max(prefills.widths) == turn2_width
    for a, b in zip(reuse, full):
        for ta, tb in zip(a.turns, b.turns):
            assert ta.prompt_ids == tb.prompt_ids and ta.response_ids == tb.response_ids
            assert ta.truncated == tb.truncated
            assert torch.allclose(torch.tensor(ta.sampling_logprobs), torch.tensor(tb.sampling_logprobs), atol=1e-5,
                                  rtol=0)
