"""Weight sync learner -> rollout workers: the bucketed sync (any bucket size) leaves a worker with exactly the
learner's weights, the same as the full state-dict sync; buckets respect their size; with LoRA only the adapted
layers travel, and the worker then samples with the merged policy."""

from __future__ import annotations

import pytest
import torch

from score_rl.launch.distributed import ActorGroup
from score_rl.launch.weight_sync import BucketedSync, ObjectStoreSync
from score_rl.learner.learner import Learner, loss_denominator, merged_model
from score_rl.rollout.worker import RolloutWorker
from tests.learner import _dp_updates as dp

N = 8


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group(*members) -> ActorGroup:
    group = ActorGroup.__new__(ActorGroup)  # in-process members that already exist
    group.use_ray, group.members = False, list(members)
    return group


def _trained_learner(cfg, model_path, steps=2):
    from score_rl.utils import load_tokenizer

    learner = Learner(cfg, model_path, 0, 1, N)
    learner.setup("127.0.0.1", _free_port())
    episodes = dp.make_episodes(len(load_tokenizer(model_path)), N, seed=3)
    for _ in range(steps):
        learner.train_step(episodes, loss_denominator(episodes, cfg.algo.loss_agg))
    return learner


@pytest.fixture(scope="module")
def full_ft(tmp_path_factory, tiny_model_path):
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path_factory.mktemp("sync"), [
        f"model.path={tiny_model_path}", "learner.optimizer=sgd", "learner.lr=0.5", "learner.grad_clip=0"])
    return cfg, _trained_learner(cfg, tiny_model_path)


@pytest.mark.parametrize("bucket_mb", [0.001, 0.05, 1024.0])
def test_bucketed_sync_gives_the_worker_the_learners_weights_at_any_bucket_size(full_ft, tiny_model_path, bucket_mb):
    cfg, learner = full_ft
    worker = RolloutWorker(cfg, tiny_model_path)
    learned = learner.state_dict()
    assert any(not torch.equal(worker.state_dict()[k], v) for k, v in learned.items()), "the learner has moved"
    BucketedSync(bucket_mb).push(_group(learner), _group(worker))
    got = worker.state_dict()
    assert got.keys() == learned.keys() and all(torch.equal(got[k], learned[k]) for k in learned)
    full = RolloutWorker(cfg, tiny_model_path)  # the old whole-state-dict sync gives the same weights
    ObjectStoreSync().push(_group(learner), _group(full))
    assert all(torch.equal(full.state_dict()[k], got[k]) for k in got)


def test_buckets_cover_every_weight_once_and_respect_their_size(full_ft):
    _, learner = full_ft
    module = learner.engine.module
    bucket = 4_000
    plan = learner.weight_sync_plan(bucket)
    names = [n for b in plan for n in b]
    assert len(names) == len(set(names)), "no weight twice"
    # tied embeddings: one tensor under two names is sent once; every distinct tensor is sent
    storages = {t.data_ptr() for t in module.state_dict().values()}
    assert len(names) == len(storages) and set(names) <= set(module.state_dict())
    sizes = {k: v.numel() * v.element_size() for k, v in module.state_dict().items()}
    assert len(plan) > 3
    for b in plan:
        assert len(b) == 1 or sum(sizes[n] for n in b) <= bucket, "a bucket exceeds its size with several tensors"


def test_lora_sync_sends_only_the_adapted_layers_merged(tmp_path, tiny_model_path):
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path, [
        f"model.path={tiny_model_path}", "model.lora.r=4", "model.lora.alpha=8", "learner.optimizer=sgd",
        "learner.lr=0.5", "learner.grad_clip=0", "algo.kl_estimator=k2"])
    learner = _trained_learner(cfg, tiny_model_path)
    plan = learner.weight_sync_plan(2**30)
    sent = [n for b in plan for n in b]
    targets = list(cfg.model.lora.target_modules)
    assert sent and all(any(f".{t}.weight" in n for t in targets) for n in sent), sent
    merged = merged_model(learner.engine.module).state_dict()
    layers = learner.engine.module.config.num_hidden_layers
    assert set(sent) < set(merged) and len(sent) == layers * len(targets)  # one per adapted projection
    worker = RolloutWorker(cfg, tiny_model_path)
    BucketedSync(0.01).push(_group(learner), _group(worker))
    got = worker.state_dict()
    assert all(torch.allclose(got[k], merged[k], atol=1e-6) for k in merged), "worker = merged policy, every weight"
    assert any(not torch.equal(got[k], RolloutWorker(cfg, tiny_model_path).state_dict()[k]) for k in sent)


def test_lora_sync_for_vllm_sends_every_weight_merged(tmp_path, tiny_model_path):
    """vLLM re-processes a fused layer (qkv_proj) only once all its weights and biases have arrived: with LoRA it
    gets every weight (the adapted ones merged), each tensor once."""
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path, [
        f"model.path={tiny_model_path}", "model.lora.r=4", "model.lora.alpha=8", "learner.optimizer=sgd",
        "learner.lr=0.5", "learner.grad_clip=0", "algo.kl_estimator=k2", "rollout.engine=vllm"])
    learner = _trained_learner(cfg, tiny_model_path)
    plan = learner.weight_sync_plan(5_000)
    sent = {k: v for names in plan for k, v in learner.weight_bucket(names).items()}
    merged = merged_model(learner.engine.module)
    expected = {k: v for k, v in merged.state_dict().items() if k != "lm_head.weight"}  # tied to embed_tokens
    assert merged.config.tie_word_embeddings and sent.keys() == expected.keys()
    assert all(torch.allclose(sent[k], expected[k], atol=1e-6) for k in expected)
