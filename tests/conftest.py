"""Shared fixtures: the quickstart config shrunk for tests and a tiny base model built in seconds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import pytest

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


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """A tiny base model (tokenizer + 1-layer Qwen2 + a few warm-up steps), built once per test session."""
    from score_rl.train.base_model import resolve_model_path
    from score_rl.utils import quiet_libraries

    quiet_libraries()
    root = tmp_path_factory.mktemp("tiny")
    return resolve_model_path(tiny_config(root), log=lambda *_: None)


@pytest.fixture
def cfg(tmp_path, tiny_model_path):
    """The shrunk quickstart config pointing at the session's tiny model."""
    return tiny_config(tmp_path, [f"model.path={tiny_model_path}"])
