"""Dropout is off in every forward pass of the learner, whatever the model's config says: the distribution trained on
is the one sampled from. Checked end to end (the sampler/learner log-prob gap of a training step) on tiny random
models of the architectures users bring, built locally with the quickstart's tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from score_rl.train.trainer import Trainer
from tests.conftest import tiny_config

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, head_dim=8)
ARCHITECTURES = {
    "llama": ("LlamaConfig", {}),
    "llama-untied": ("LlamaConfig", {"tie_word_embeddings": False}),
    "qwen2": ("Qwen2Config", {}),
    "mistral-sliding": ("MistralConfig", {"sliding_window": 16}),
    "gemma2": ("Gemma2Config", {"sliding_window": 16}),
    "gemma3": ("Gemma3TextConfig", {"sliding_window": 16}),
    # GPT-2's config keeps dropout 0.1 on attention, residuals and embeddings
    "gpt2": ("GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256}),
}


def _tiny_random(tmp_path, tiny_model_path, name):
    import transformers

    from score_rl.utils import load_tokenizer

    cls, extra = ARCHITECTURES[name]
    tokenizer = load_tokenizer(tiny_model_path)
    common = {} if cls == "GPT2Config" else dict(SMALL)
    config = getattr(transformers, cls)(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                        **common, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    path = tmp_path / name
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


def test_disable_dropout_switches_off_modules_and_kernel_arguments(tmp_path, tiny_model_path):
    from score_rl.utils import disable_dropout

    _, model = _tiny_random(tmp_path, tiny_model_path, "gpt2")
    model.train()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, model(ids).logits), "dropout 0.1 on: two passes differ"
        assert disable_dropout(model) > 0
        assert torch.equal(model(ids).logits, model(ids).logits)
        assert torch.allclose(model(ids).logits, model.eval()(ids).logits, atol=1e-6)  # train mode = eval mode
    assert disable_dropout(model) == 0  # nothing left


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_a_training_step_trains_on_the_sampled_distribution(tmp_path, tiny_model_path, name):
    path, _ = _tiny_random(tmp_path, tiny_model_path, name)
    cfg = tiny_config(tmp_path, [f"model.path={path}", "ray.enabled=false", "trainer.steps=1",
                                 "trainer.eval_before_after=false", "rollout.max_new_tokens=6"])
    trainer = Trainer(cfg, log=lambda *_: None)
    trainer.fit()
    row = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert row["tokens"] > 0
    assert row["logprob_mismatch"] < 1e-4, f"{name}: sampler and learner disagree by {row['logprob_mismatch']:.2e}"


def test_disable_dropout_also_zeroes_a_rate_read_from_the_config_at_forward_time():
    """Some layers read the rate from the model config in forward() rather than keeping it as an attribute."""
    import transformers

    from score_rl.utils import disable_dropout

    class ReadsTheConfig(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config

        def forward(self, x):
            return torch.nn.functional.dropout(x, p=self.config.attention_dropout, training=self.training)

    layer = ReadsTheConfig(transformers.LlamaConfig(attention_dropout=0.5)).train()
    x = torch.ones(1000)
    assert not torch.equal(layer(x), x)
    assert disable_dropout(layer) == 1 and layer.config.attention_dropout == 0.0
    assert torch.equal(layer(x), x)
