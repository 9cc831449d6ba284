"""selective_log_softmax: log_softmax at the chosen tokens, chunked, for any chunk size and dtype."""

import pytest
import torch

from score_rl.learner.logprobs import selective_log_softmax


def _reference(logits, index):
    return torch.log_softmax(logits.double(), dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("chunk_tokens", [1, 5, 7, 2048])
def test_matches_log_softmax_for_any_chunk_size(chunk_tokens):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 5
    index = torch.randint(0, 11, (3, 7), generator=g)
    out = selective_log_softmax(logits, index, chunk_bytes=chunk_tokens * 11 * 4)
    assert out.shape == index.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _reference(logits, index), rtol=0, atol=1e-5)


def test_gradient_matches_log_softmax_and_chunking_is_invariant():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 9, 13, generator=g, dtype=torch.float64)
    index = torch.randint(0, 13, (2, 9), generator=g)
    weights = torch.randn(2, 9, generator=g, dtype=torch.float64)
    grads = []
    for chunk in (4, 18, 1000):
        logits = base.clone().requires_grad_(True)
        (selective_log_softmax(logits, index, chunk_bytes=chunk * 13 * 8) * weights).sum().backward()
        grads.append(logits.grad)
    logits = base.clone().requires_grad_(True)
    (_reference(logits, index) * weights).sum().backward()
    for grad in grads:
        torch.testing.assert_close(grad, logits.grad, rtol=0, atol=1e-12)
    # d log p(i) / d logit(i) = 1 - p(i) > 0: raising the chosen token's logit raises its log-prob
    assert (logits.grad.gather(-1, index.unsqueeze(-1)).squeeze(-1) * weights.sign() > 0).all()


def test_low_precision_logits_are_upcast():
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(4, 6, 50, generator=g) * 8).to(torch.bfloat16)
    index = torch.randint(0, 50, (4, 6), generator=g)
    out = selective_log_softmax(logits, index, chunk_bytes=5 * 50 * 4)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _reference(logits.float(), index), rtol=0, atol=1e-5)


def test_non_contiguous_and_any_rank():
    """The learner passes logits[:, :-1] (non-contiguous); 2-d and 4-d inputs work too."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 8, 17, generator=g)[:, :-1]
    index = torch.randint(0, 17, (3, 7), generator=g)
    assert not logits.is_contiguous()
    for chunk_bytes in (4 * 17 * 3, 4 * 17 * 7 * 2, 1 << 20):
        torch.testing.assert_close(selective_log_softmax(logits, index, chunk_bytes).double(),
                                   _reference(logits, index), rtol=0, atol=1e-5)
    torch.testing.assert_close(selective_log_softmax(logits[0], index[0]).double(), _reference(logits[0], index[0]),
                               rtol=0, atol=1e-5)
    four = logits.reshape(1, 3, 7, 17)
    torch.testing.assert_close(selective_log_softmax(four, index.view(1, 3, 7)).double(),
                               _reference(four, index.view(1, 3, 7)), rtol=0, atol=1e-5)


def test_empty_and_mismatched_inputs():
    logits = torch.zeros(2, 0, 5, requires_grad=True)
    empty = selective_log_softmax(logits, torch.zeros(2, 0, dtype=torch.long))
    assert empty.shape == (2, 0)
    empty.sum().backward()  # like any other result
    with pytest.raises(ValueError, match="do not match index"):
        selective_log_softmax(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def _trimmed_batch(tiny_model_path, first=9):
    from score_rl.utils import load_model

    model = load_model(tiny_model_path)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, 40, (3, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0  # a right-padded row
    turn = torch.zeros(3, 15, dtype=torch.long)
    turn[0, first:12], turn[1, first + 2:12], turn[2, first + 1:15] = 1, 2, 1
    return model, ids, mask, turn


def test_logits_before_the_first_response_token_are_not_computed(tiny_model_path):
    """Skipping the prompt's logits (logits_to_keep) changes no response token's log-prob, nor its gradient."""
    from score_rl.learner.logprobs import first_response_target, token_logprobs

    model, ids, mask, turn = _trimmed_batch(tiny_model_path)
    first = first_response_target(turn)
    assert first == 9
    calls = []
    model.register_forward_hook(lambda mod, args, kwargs, out: calls.append(kwargs.get("logits_to_keep")),
                                with_kwargs=True)
    full, _ = token_logprobs(model, ids, mask, 0.7)
    (full * (turn > 0)).sum().backward()
    full_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    trimmed, _ = token_logprobs(model, ids, mask, 0.7, first_target=first)
    (trimmed * (turn > 0)).sum().backward()
    assert calls == [None, 16 - 9]
    assert trimmed.shape == full.shape and (trimmed[:, :first] == 0).all()
    torch.testing.assert_close(trimmed[:, first:], full[:, first:], rtol=0, atol=1e-5)
    for p, grad in zip(model.parameters(), full_grads):
        torch.testing.assert_close(p.grad, grad, rtol=1e-4, atol=1e-6)
    # the full-KL estimator needs every position's logits: no trimming with return_logits
    logp, logits = token_logprobs(model, ids, mask, 1.0, return_logits=True, first_target=first)
    assert logits.shape[1] == 15 and calls[-1] is None


def test_models_without_logits_to_keep_get_every_position(tiny_model_path):
    from score_rl.learner.logprobs import accepts, token_logprobs

    model, ids, mask, turn = _trimmed_batch(tiny_model_path)

    class Plain(torch.nn.Module):  # a custom model whose forward has no logits_to_keep
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    class Wrapper(torch.nn.Module):  # like a DeepSpeed engine: the model is its `module`
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **kwargs):
            return self.module(**kwargs)

    assert accepts(model, "logits_to_keep") and accepts(Wrapper(model), "logits_to_keep")
    assert not accepts(Plain(), "logits_to_keep") and not accepts(Wrapper(Plain()), "logits_to_keep")
    with torch.no_grad():
        plain, _ = token_logprobs(Wrapper(Plain()), ids, mask, 1.0, first_target=9)
        full, _ = token_logprobs(model, ids, mask, 1.0)
    torch.testing.assert_close(plain, full, rtol=0, atol=0)


def test_peft_models_are_trimmed_through_the_wrapper(tiny_model_path):
    from peft import LoraConfig, get_peft_model

    from score_rl.learner.lora import AdapterDisabled

    from score_rl.learner.logprobs import accepts, token_logprobs

    model, ids, mask, turn = _trimmed_batch(tiny_model_path)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert accepts(peft_model, "logits_to_keep")
    assert accepts(AdapterDisabled(peft_model), "logits_to_keep")  # the LoRA reference: the adapter switched off
    with torch.no_grad():
        full, _ = token_logprobs(peft_model, ids, mask, 1.0)
        trimmed, _ = token_logprobs(peft_model, ids, mask, 1.0, first_target=9)
    torch.testing.assert_close(trimmed[:, 9:], full[:, 9:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("lora", [False, True])
def test_the_learner_skips_the_prompt_logits_of_policy_and_reference(tmp_path, tiny_model_path, lora):
    """Through the real wrappers (the DeepSpeed engine, PEFT, the LoRA reference with its adapter off), the policy's
    and the reference's forward passes get logits_to_keep = L - the micro-batch's first response target."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import _dp_updates as dp
    from test_loss_mask import dp_port

    from score_rl.learner.batch import collate
    from score_rl.learner.learner import Learner
    from score_rl.learner.logprobs import first_response_target
    from score_rl.learner.stats import loss_denominator
    from score_rl.utils import load_tokenizer
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path, [f"model.path={tiny_model_path}", "algo.kl_estimator=k3", "learner.micro_batch_size=4",
                                 *(["model.lora.r=4"] if lora else [])])
    learner = Learner(cfg, tiny_model_path, 0, 1, 8)
    learner.setup("127.0.0.1", dp_port())
    episodes = dp.make_episodes(len(load_tokenizer(tiny_model_path)), 8, seed=3)
    seen = []
    base = learner.engine.module.get_base_model() if lora else learner.engine.module
    base.register_forward_hook(lambda mod, args, kwargs, out: seen.append(kwargs.get("logits_to_keep")),
                               with_kwargs=True)
    if not lora:  # a separate reference model
        learner.reference.register_forward_hook(
            lambda mod, args, kwargs, out: seen.append(("ref", kwargs.get("logits_to_keep"))), with_kwargs=True)
    learner.train_step(episodes, loss_denominator(episodes, cfg.algo.loss_agg))
    expected = []
    for chunk in (episodes[:4], episodes[4:]):
        b = collate(chunk, learner.tokenizer.pad_token_id)
        keep = b["input_ids"].shape[1] - first_response_target(b["turn"])
        assert keep <= b["input_ids"].shape[1] - 2, "every prompt has 3-6 tokens: at least 2 positions are skipped"
        expected += [keep, keep] if lora else [keep, ("ref", keep)]  # policy pass, then the reference's
    assert seen == expected


def _grouped_episodes(seed: int = 0):
    """A problem's samples share their turn-1 prompt; prompts of different problems differ in length; responses
    and corrections of any length (one empty)."""
    import random

    from score_rl.episode import Episode, Turn

    rng = random.Random(seed)
    episodes = []
    for problem, (prompt_len, samples) in enumerate([(5, 3), (2, 2), (8, 1), (4, 4)]):
        prompt = [rng.randint(2, 40) for _ in range(prompt_len)]
        for k in range(samples):
            a1 = [rng.randint(2, 40) for _ in range(rng.randint(0 if k == 1 else 1, 6))]
            a2 = [rng.randint(2, 40) for _ in range(rng.randint(1, 6))]
            correction = [rng.randint(2, 40) for _ in range(3)]
            turns = [Turn(prompt_ids=list(prompt), response_ids=a1, sampling_logprobs=[-1.0] * len(a1),
                          response_text="", reward=0.0),
                     Turn(prompt_ids=prompt + a1 + correction, response_ids=a2, sampling_logprobs=[-1.0] * len(a2),
                          response_text="", reward=0.0)]
            episodes.append(Episode(problem_id=str(problem), sample_index=k, turns=turns))
    rng.shuffle(episodes)  # group members need not be adjacent
    return episodes


def test_shared_prefix_groups_the_samples_of_a_problem():
    from score_rl.learner.logprobs import SharedPrefix

    episodes = _grouped_episodes()
    shared = SharedPrefix.of(episodes)
    for r, ep in enumerate(episodes):
        g = int(shared.group[r])
        assert int(shared.length[g]) == len(ep.turns[0].prompt_ids) - 1
        assert episodes[int(shared.rows[g])].turns[0].prompt_ids == ep.turns[0].prompt_ids
    assert len(shared.length) == 4
    assert SharedPrefix.of(episodes[:1]) is None  # nothing shared
    alone = SharedPrefix.of(episodes[:1], singletons=True)  # ZeRO 3 ranks all run the same passes
    assert alone.group.tolist() == [0] and alone.rows.tolist() == [0]
    assert SharedPrefix.of([ep for ep in episodes if ep.problem_id == "1"]) is not None


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_shared_prompt_gives_the_log_probs_and_gradients_of_whole_rows(deeper_model_path, temperature, attention):
    """Each problem's prompt run once and its K/V cache extended by every sample: every response token's log-prob
    and the gradient of any weighted sum of them equal those of running each row whole (up to float rounding: a
    3-layer model, where the two differ in the last bits)."""
    from transformers import AutoModelForCausalLM

    from score_rl.learner.batch import collate
    from score_rl.learner.logprobs import SharedPrefix, token_logprobs

    model = AutoModelForCausalLM.from_pretrained(deeper_model_path, attn_implementation=attention)
    episodes = _grouped_episodes()
    b = collate(episodes, pad_id=1)
    mask = (b["turn"] > 0).float()
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0)) * mask
    calls = []
    model.register_forward_hook(lambda mod, args, kwargs, out: calls.append(kwargs["input_ids"].shape),
                                with_kwargs=True)
    grads, logps = [], []
    for shared in (None, SharedPrefix.of(episodes)):
        model.zero_grad()
        logp, _ = token_logprobs(model, b["input_ids"], b["attention_mask"], temperature, shared=shared)
        (logp * weights).sum().backward()
        logps.append(logp * mask)
        grads.append([p.grad.clone() for p in model.parameters()])
    assert logps[1].shape == logps[0].shape
    assert logps[0].abs().max() > 1  # peaked distributions, not uniform ones
    torch.testing.assert_close(logps[1], logps[0], rtol=0, atol=2e-5)
    for shared_grad, whole_grad in zip(*grads):  # float32 rounding, relative to each tensor's scale (up to ~46 here)
        torch.testing.assert_close(shared_grad, whole_grad, rtol=1e-3, atol=1e-5 * float(whole_grad.abs().max()))
    assert any(not torch.equal(g1, g0) for g1, g0 in zip(*grads)), "two computations: rounding differs somewhere"
    # one whole pass, then the 4 prompts once (up to the longest shared part, 7) and every row's own tokens
    assert calls[0] == b["input_ids"].shape and calls[1] == (4, 7)
    assert calls[2][0] == len(episodes) and calls[2][1] < b["input_ids"].shape[1]


def test_models_without_a_shareable_cache_run_every_row_whole(tiny_model_path, monkeypatch):
    """A cache that is not a plain DynamicCache (e.g. sliding windows): the rows run whole, same result."""
    import weakref

    from score_rl.learner import logprobs
    from score_rl.learner.batch import collate
    from score_rl.utils import load_model

    model = load_model(tiny_model_path)
    episodes = _grouped_episodes(1)
    b = collate(episodes, pad_id=1)
    monkeypatch.setattr(logprobs, "cache_gap", lambda cache: "a sliding window")
    monkeypatch.setattr(logprobs, "_NO_SHARED_CACHE", weakref.WeakKeyDictionary())
    assert logprobs.shared_prompt_off(model) is None
    with torch.no_grad():
        whole, _ = logprobs.token_logprobs(model, b["input_ids"], b["attention_mask"], 1.0)
        fallback, _ = logprobs.token_logprobs(model, b["input_ids"], b["attention_mask"], 1.0,
                                              shared=logprobs.SharedPrefix.of(episodes))
    torch.testing.assert_close(fallback, whole, rtol=0, atol=0)
    assert model in logprobs._NO_SHARED_CACHE  # not tried again (this model; another of its class still is)
    assert logprobs.shared_prompt_off(model) == "a sliding window"  # the reason the run's start-up line gives


@pytest.mark.parametrize("share", [True, False])
def test_the_learner_runs_a_shared_prompt_once_when_asked(tmp_path, tiny_model_path, share):
    """learner.share_prompt_prefix: the policy's and the reference's passes run each problem's prompt once (a pass
    over one row per problem, then one over every sample's own tokens); off, every row runs whole."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import _dp_updates as dp
    from test_loss_mask import dp_port

    from score_rl.learner.learner import Learner
    from score_rl.learner.stats import loss_denominator
    from score_rl.utils import load_tokenizer
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path, [f"model.path={tiny_model_path}", "algo.kl_estimator=k3", "learner.micro_batch_size=8",
                                 f"learner.share_prompt_prefix={str(share).lower()}"])
    learner = Learner(cfg, tiny_model_path, 0, 1, 8)
    learner.setup("127.0.0.1", dp_port())
    episodes = dp.make_episodes(len(load_tokenizer(tiny_model_path)), 8, seed=4, shared_prompts=True)
    rows = []
    for model in (learner.engine.module, learner.reference):
        model.register_forward_hook(lambda mod, args, kwargs, out: rows.append(kwargs["input_ids"].shape[0]),
                                    with_kwargs=True)
    stats = learner.train_step(episodes, loss_denominator(episodes, cfg.algo.loss_agg))
    assert rows == ([4, 8, 4, 8] if share else [8, 8])  # 4 problems x 2 samples
    assert stats["tokens"] > 0


def test_length_dependent_rotary_embeddings_run_every_row_whole(deeper_model_path):
    """Dynamic-NTK / LongRoPE pick their frequencies from a call's longest position: a prompt run on its own would get
    other ones than inside the whole row, so such models never share it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from score_rl.learner.batch import collate
    from score_rl.learner.logprobs import SharedPrefix, token_logprobs

    config = AutoConfig.from_pretrained(deeper_model_path)
    config.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    config.max_position_embeddings = 8  # shorter than the rows: the frequencies change with the length
    model = AutoModelForCausalLM.from_pretrained(deeper_model_path, config=config)
    episodes = _grouped_episodes(2)
    b = collate(episodes, pad_id=1)
    calls = []
    model.register_forward_hook(lambda mod, args, kwargs, out: calls.append(kwargs["input_ids"].shape),
                                with_kwargs=True)
    with torch.no_grad():
        whole, _ = token_logprobs(model, b["input_ids"], b["attention_mask"], 1.0)
        shared, _ = token_logprobs(model, b["input_ids"], b["attention_mask"], 1.0, shared=SharedPrefix.of(episodes))
    assert calls == [b["input_ids"].shape] * 2
    torch.testing.assert_close(shared, whole, rtol=0, atol=0)


def test_rows_that_do_not_share_their_prefix_are_an_error(tiny_model_path):
    from score_rl.learner.batch import collate
    from score_rl.learner.logprobs import SharedPrefix, token_logprobs
    from score_rl.utils import load_model

    episodes = _grouped_episodes(3)
    shared = SharedPrefix.of(episodes)
    b = collate(episodes, pad_id=1)
    ids = b["input_ids"].clone()
    ids[int(shared.rows[0]), 0] += 1  # one member's prompt no longer matches its group's
    with torch.no_grad(), pytest.raises(ValueError, match="do not begin with the same tokens"):
        token_logprobs(load_model(tiny_model_path), ids, b["attention_mask"], 1.0, shared=shared)
