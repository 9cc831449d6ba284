"""PPO's critic: a value model beside the policy (same ranks, ZeRO stage and micro-batches).

    V[:, p] = value of the state before target token p + 1, i.e. aligned with the targets like the log-probs: [B, L-1]
"""

from __future__ import annotations

from typing import Dict

import torch

from score_rl.utils import disable_dropout


def load_critic(path: str, dtype: str = "float32"):
    """A value model: the backbone of the model at ``path`` with a scalar head on its last hidden state
    (``AutoModelForTokenClassification`` with one label, no dropout). A head missing from ``path`` (a causal LM)
    starts at zero, so every initial value is 0 and the same on every rank."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    from score_rl.utils import DTYPES

    config = AutoConfig.from_pretrained(path, num_labels=1)
    config.classifier_dropout = 0.0  # set after loading: the config class may drop unknown keyword arguments
    model, info = AutoModelForTokenClassification.from_pretrained(
        path, config=config, dtype=DTYPES[dtype], output_loading_info=True
    )
    disable_dropout(model)  # the head's and the backbone's: values must be deterministic
    if any(key.startswith("score.") for key in info["missing_keys"]):
        with torch.no_grad():
            model.score.weight.zero_()
            if model.score.bias is not None:
                model.score.bias.zero_()
    return model


def critic_values(critic, b: Dict[str, torch.Tensor]) -> torch.Tensor:
    """V(state before each target token) of a collated batch, aligned with the targets like the log-probs: [B, L-1]."""
    return critic(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1, 0].float()
