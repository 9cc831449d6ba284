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
    # the suite's 1-layer model is almost never right: without this every step of its runs would skip its update
    # (tests/train/test_trainer.py tests the rule with it on)
    "algo.skip_no_signal=false",
]


def tiny_config(tmp_path: Path, extra: List[str] = ()):
    from score_rl.config import load_config

    return load_config(QUICKSTART, TINY_OVERRIDES + [f"model.cache_dir={tmp_path / 'cache'}",
                                                     f"trainer.run_dir={tmp_path / 'run'}", *extra])


class UpstreamDeprecation(Exception):
    """transformers said that a call made by score-rl (or a test) uses a deprecated API."""


# deprecation messages of transformers that the suite lets through, each with why (none so far)
_ALLOWED_DEPRECATIONS: tuple = ()


def _check_deprecation(text: str, upstream: bool) -> None:
    """Raise UpstreamDeprecation for a deprecation notice of transformers (``upstream``: it came from transformers'
    code) about a call that came from this repository."""
    import traceback

    if not upstream or "deprecat" not in text.lower() or any(allowed in text for allowed in _ALLOWED_DEPRECATIONS):
        return
    # the call that led into transformers: the first frame outward that is not transformers itself, torch's module
    # call or a pass-through (DeepSpeed's engine); a library calling transformers (PEFT, TRL) is not ours to fix
    for frame in reversed(traceback.extract_stack()[:-1]):
        name = frame.filename
        if name == __file__ or any(part in name for part in _PASS_THROUGH):
            continue
        if name.startswith(str(REPO)) and "site-packages" not in name:
            raise UpstreamDeprecation(f"transformers: {text} (called from {name}:{frame.lineno})")
        return


_PASS_THROUGH = ("/transformers/", "/torch/", "/deepspeed/", "/functools.py", "/contextlib.py", "/logging/",
                 "/warnings.py")


def _raise_on_our_deprecations():
    """transformers announces renames (e.g. past_key_values -> cache in 5.24) through its logger (at any verbosity:
    score-rl sets it to errors only) or as a FutureWarning (which the suite's filters ignore): both raise when the
    call came from this repository, so a test fails on the first such call, not a user's install on the release that
    removes the old name."""
    import logging
    import sys
    import warnings

    logger_warning, warn = logging.Logger.warning, warnings.warn

    def checked_logger_warning(self, msg, *args, **kwargs):
        if self.name.startswith("transformers"):
            try:
                text = logging.LogRecord(self.name, logging.WARNING, "", 0, msg, args, None).getMessage()
            except Exception:  # a malformed message is logging's to report, not ours
                text = str(msg)
            _check_deprecation(text, True)
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1  # the log line names the caller, not this wrapper
        return logger_warning(self, msg, *args, **kwargs)

    def checked_warn(message, category=None, stacklevel=1, *args, **kwargs):
        if isinstance(category, type) and issubclass(category, (DeprecationWarning, FutureWarning)):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            _check_deprecation(str(message), caller.split(".")[0] == "transformers")
        return warn(message, category, stacklevel + 1, *args, **kwargs)

    import transformers.utils.logging  # noqa: F401 - it adds Logger.warning_once, replaced next

    warning_once = logging.Logger.warning_once

    def checked_warning_once(self, *args, **kwargs):
        """transformers says each message once per process: a deprecation notice let through once (a library's own
        call) would hide the same notice about a later call of ours. Those go to the guard every time."""
        if self.name.startswith("transformers") and args and "deprecat" in str(args[0]).lower():
            return self.warning(*args, **kwargs)
        return warning_once(self, *args, **kwargs)

    logging.Logger.warning, warnings.warn = checked_logger_warning, checked_warn
    logging.Logger.warning_once = checked_warning_once


_raise_on_our_deprecations()


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
