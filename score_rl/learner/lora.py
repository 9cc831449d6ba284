"""LoRA on the policy (model.lora.r > 0): the adapter trains, the reference is the base with the adapter switched off.

    W_merged = W + (alpha / r) · B A        (B = 0 at first: the policy starts as the base model)
"""

from __future__ import annotations

import torch

from score_rl.errors import ConfigError


def check_lora_targets(lora, model_config) -> None:
    """LoRA on the embedding or output head of a model that ties them (one weight, two layers) would change both."""
    tied = sorted(t for t in lora.target_modules if t.split(".")[-1] in ("lm_head", "embed_tokens"))
    if lora.r > 0 and tied and getattr(model_config, "tie_word_embeddings", False):
        raise ConfigError(f"config key 'model.lora.target_modules': {tied} of a model with tied input / output "
                          f"embeddings (one weight, two layers): adapting one would change both; leave them out")


def with_lora(model, lora, seed: int):
    """``model`` with peft LoRA adapters on ``lora.target_modules`` (B = 0: at first the policy is the base model).
    A is drawn from a generator seeded by ``seed`` (peft draws from torch's global one, which a Ray actor never seeds:
    the same trainer.seed must give the same adapter in every process)."""
    from peft import LoraConfig, get_peft_model

    check_lora_targets(lora, model.config)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def merged_model(peft_model):
    """A plain Hugging Face model with W + (alpha / r) · B A in every adapted layer (a copy: the policy keeps training
    its adapter)."""
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()


def merged_weight(layer) -> torch.Tensor:
    """W + (alpha / r) · B A of one peft LoRA layer, with its active adapter."""
    return layer.base_layer.weight + layer.get_delta_weight(layer.active_adapters[0])


class AdapterDisabled:
    """The reference model of a LoRA policy: the policy's own base weights with the adapter switched off (peft's
    ``disable_adapter``), so the reference is not a second copy of the weights. Called like a model, without grad."""

    def __init__(self, peft_model):
        self.model = peft_model

    def __call__(self, **inputs):
        with torch.no_grad(), self.model.disable_adapter():
            return self.model(**inputs)
