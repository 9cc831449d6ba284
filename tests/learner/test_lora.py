"""LoRA (model.lora.r > 0): only the adapter trains; the reference is the policy's own base weights with the adapter
disabled (not a second copy); the workers get merged weights; final/ holds the merged model and the adapter."""

from __future__ import annotations

import pytest
import torch

import _dp_updates as dp
from score_rl.learner.learner import Learner
from score_rl.learner.logprobs import token_logprobs
from score_rl.learner.lora import AdapterDisabled
from score_rl.learner.stats import loss_denominator
from score_rl.learner.batch import collate
from score_rl.utils import load_model
from test_loss_mask import dp_port

N = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_path):
    """A LoRA learner after 2 SGD steps (large lr, so the adapter moves the policy visibly)."""
    from score_rl.utils import load_tokenizer
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path_factory.mktemp("lora"), [
        f"model.path={tiny_model_path}", "model.lora.r=4", "model.lora.alpha=8", "learner.optimizer=sgd",
        "learner.lr=0.5", "learner.grad_clip=0", "algo.kl_estimator=k2"])
    learner = Learner(cfg, tiny_model_path, 0, 1, N)
    learner.setup("127.0.0.1", dp_port())
    episodes = dp.make_episodes(len(load_tokenizer(tiny_model_path)), N, seed=7)
    base_before = {k: v.clone() for k, v in learner.engine.module.named_parameters() if "lora_" not in k}
    for _ in range(2):
        learner.train_step(episodes, loss_denominator(episodes, cfg.algo.loss_agg))
    return learner, episodes, base_before, tiny_model_path


def _logp(model, episodes, pad_id):
    b = collate(episodes, pad_id)
    with torch.no_grad():
        return token_logprobs(model, b["input_ids"], b["attention_mask"], 1.0)[0], b["turn"] > 0


def test_only_the_adapter_trains(trained):
    learner, _, base_before, _ = trained
    params = dict(learner.engine.module.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in base_before.items()), "the base weights never change"
    lora_b = [p for k, p in params.items() if "lora_B" in k]
    assert lora_b and all(p.requires_grad for p in lora_b) and any(p.abs().sum() > 0 for p in lora_b)
    assert not any(p.requires_grad for k, p in params.items() if "lora_" not in k)


def test_the_reference_is_the_base_model_without_a_second_copy(trained):
    learner, episodes, _, model_path = trained
    assert isinstance(learner.reference, AdapterDisabled) and learner.reference.model is learner.engine.module
    pad = learner.tokenizer.pad_token_id
    ref, mask = _logp(learner.reference, episodes, pad)
    base, _ = _logp(load_model(model_path), episodes, pad)
    policy, _ = _logp(learner.engine.module, episodes, pad)
    assert torch.allclose(ref[mask], base[mask], atol=1e-5), "adapter disabled = the base model"
    assert (policy[mask] - base[mask]).abs().max() > 1e-3, "while the policy itself has moved"
    # the learner holds one model: the policy's engine (a full-fine-tuning learner also holds the reference model)
    assert [k for k, v in vars(learner).items() if isinstance(v, torch.nn.Module)] == ["engine"]


def test_the_workers_get_the_merged_weights(trained):
    learner, episodes, _, model_path = trained
    weights = learner.state_dict()
    plain = load_model(model_path)
    assert weights.keys() == plain.state_dict().keys(), "a plain model's keys: the workers load it strictly"
    plain.load_state_dict(weights, strict=True)
    pad = learner.tokenizer.pad_token_id
    merged, mask = _logp(plain, episodes, pad)
    policy, _ = _logp(learner.engine.module, episodes, pad)
    assert torch.allclose(merged[mask], policy[mask], atol=1e-5)


def test_final_holds_the_merged_model_and_the_adapter(trained, tmp_path):
    from peft import PeftModel

    learner, episodes, _, model_path = trained
    learner.save_pretrained(str(tmp_path / "final"))
    pad = learner.tokenizer.pad_token_id
    policy, mask = _logp(learner.engine.module, episodes, pad)
    merged, _ = _logp(load_model(str(tmp_path / "final")), episodes, pad)
    with_adapter = PeftModel.from_pretrained(load_model(model_path), str(tmp_path / "final" / "adapter"))
    adapted, _ = _logp(with_adapter, episodes, pad)
    assert torch.allclose(merged[mask], policy[mask], atol=1e-5)
    assert torch.allclose(adapted[mask], policy[mask], atol=1e-5)


def test_lora_on_tied_embeddings_is_a_config_error(tiny_model_path):
    from score_rl.config import ConfigError, LoRAConfig
    from score_rl.learner.lora import with_lora

    model = load_model(tiny_model_path)
    assert model.config.tie_word_embeddings
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        with_lora(model, LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "lm_head"]), seed=0)


def test_lora_with_zero_3_is_a_config_error():
    from score_rl.config import ConfigError, load_config
    from tests.conftest import QUICKSTART

    with pytest.raises(ConfigError, match="model.lora.r"):
        load_config(QUICKSTART, ["model.lora.r=8", "learner.zero_stage=3"])
    with pytest.raises(ConfigError, match="model.lora.r"):
        load_config(QUICKSTART, ["model.lora.r=-1"])


def test_the_adapter_is_drawn_from_the_trainer_seed_not_the_global_generator(tiny_model_path):
    """Ray actors never seed torch's global generator: the adapter must depend on trainer.seed alone."""
    from score_rl.config import LoRAConfig
    from score_rl.learner.lora import with_lora

    def lora_a(seed, global_seed):
        torch.manual_seed(global_seed)
        model = with_lora(load_model(tiny_model_path), LoRAConfig(r=4), seed=seed)
        return torch.cat([p.flatten() for k, p in model.named_parameters() if "lora_A" in k])

    assert torch.equal(lora_a(0, 1), lora_a(0, 2))
    assert not torch.equal(lora_a(0, 1), lora_a(1, 1))
