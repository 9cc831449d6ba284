"""Shared fixtures: the quickstart config shrunk for tests and a tiny base model built in seconds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import pytest
import torch.nn.functional

_TORCH_LINEAR = torch.nn.functional.linear  # as torch defines it, before any test built a ZeRO 3 engine

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"

TINY_OVERRIDES = [
    "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.num_layers=1",
    "model.tiny.num_heads=2", "model.tiny.warmup_examples=256", "model.tiny.warmup_epochs=1",
    "rollout.problems_per_step=4", "rollout.samples_per_problem=2", "trainer.eval_problems=8",
    "trainer.progress_bar=false", "learner.micro_batch_size=4",
]


def tiny_config(tmp_path: Path, extra: List[str] = ()):
    from score_rl.config import load_config

    return load_config(QUICKSTART, TINY_OVERRIDES + [f"model.cache_dir={tmp_path / 'cache'}",
                                                     f"trainer.run_dir={tmp_path / 'run'}", *extra])


@pytest.fixture(autouse=True)
def _restore_torch_linear():
    """A ZeRO 3 engine built in the test process (the in-process backend) replaces torch.nn.functional.linear
    process-wide with DeepSpeed's memory-efficient version, whose float rounding differs: later tests that compare
    an in-process run bit for bit with Ray actors (fresh processes) would see it. Each test gets the original back."""
    yield
    torch.nn.functional.linear = _TORCH_LINEAR  # not captured per test: a module-scoped fixture may build the engine


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """A tiny base model (tokenizer + 1-layer Qwen2 + a few warm-up steps), built once per test session."""
    from score_rl.train.base_model import resolve_model_path
    from score_rl.utils import quiet_libraries

    quiet_libraries()
    root = tmp_path_factory.mktemp("tiny")
    return resolve_model_path(tiny_config(root), log=lambda *_: None)


@pytest.fixture(scope="session")
def deeper_model_path(tmp_path_factory, tiny_model_path) -> str:
    """The tiny model's tokenizer with a random 3-layer Qwen2 of wider layers: deep enough that two ways of computing
    the same log-probs (e.g. a shared prompt vs whole rows) differ by float rounding, where the 1-layer tiny model
    often agrees bit for bit."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from score_rl.utils import load_tokenizer

    config = AutoConfig.from_pretrained(tiny_model_path)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 3, 96, 256
    config.layer_types = ["full_attention"] * 3
    config.initializer_range = 0.2  # larger weights: peaked distributions and gradients worth comparing
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    out = tmp_path_factory.mktemp("deeper")
    model.save_pretrained(out)
    load_tokenizer(tiny_model_path).save_pretrained(out)
    return str(out)


@pytest.fixture
def cfg(tmp_path, tiny_model_path):
    """The shrunk quickstart config pointing at the session's tiny model."""
    return tiny_config(tmp_path, [f"model.path={tiny_model_path}"])
