"""Closing an in-process trainer (ray.enabled=false) frees its DeepSpeed engines: a process that builds several
trainers one after another (bench/device_check.py) must not keep every earlier one's weights and optimizer state."""

from __future__ import annotations

import gc
import weakref

import pytest

from score_rl.train.trainer import Trainer
from tests.conftest import tiny_config


def _live_engines() -> list:
    from deepspeed.runtime.engine import DeepSpeedEngine

    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, DeepSpeedEngine)]


@pytest.mark.parametrize("algo", ["reinforce", "ppo"])
def test_closing_an_in_process_zero2_trainer_frees_its_deepspeed_engines(tmp_path, tiny_model_path, algo):
    """ZeRO 1/2 optimizers hook every parameter's gradient accumulator: the hooks keep the engine alive from autograd
    objects the garbage collector cannot see, until Learner.close (called by Trainer.close) destroys the engine."""
    before = weakref.WeakSet(_live_engines())  # any an earlier test of the session left behind
    cfg = tiny_config(tmp_path, [f"model.path={tiny_model_path}", "ray.enabled=false", "trainer.steps=1",
                                 "learner.zero_stage=2", "trainer.eval_before_after=false", f"algo.name={algo}"])
    trainer = Trainer(cfg, log=lambda *_: None)
    trainer.fit()
    learners = trainer.learners.members
    engines = [weakref.ref(e) for m in learners for e in (m.engine, m.critic) if e is not None]
    assert len(engines) == (2 if algo == "ppo" else 1)
    trainer.close()
    assert [e for e in _live_engines() if e not in before] == []  # though the learner objects are still referenced
    assert all(ref() is None for ref in engines)
    for learner in learners:
        learner.close()  # idempotent
