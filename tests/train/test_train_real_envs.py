"""Two training steps on the real-task environments with the tiny model (plumbing, not learning)."""

from __future__ import annotations

import json

import pytest

from score_rl.train.trainer import Trainer
from tests.conftest import tiny_config


MBPP_ROWS = [
    {"task_id": i, "text": f"Write a function that returns the sum of a list plus {i}.",
     "code": f"def add_{i}(xs):\n    return sum(xs) + {i}\n",
     "test_list": [f"assert add_{i}([1, 2]) == {3 + i}", f"assert add_{i}([]) == {i}"]}
    for i in range(10)
]


@pytest.mark.parametrize("env_name, params", [
    ("math", {"num_test": 4, "workers": 1}),
    ("code", {"test_fraction": 0.3, "workers": 2, "timeout_s": 5.0}),
], ids=["math", "code"])
def test_two_training_steps(tmp_path, tiny_model_path, env_name, params):
    if env_name == "code":
        mbpp = tmp_path / "mbpp.jsonl"
        mbpp.write_text("".join(json.dumps(r) + "\n" for r in MBPP_ROWS))
        params = {**params, "dataset": str(mbpp)}
    cfg = tiny_config(tmp_path, [f"model.path={tiny_model_path}", "ray.enabled=false", "trainer.steps=2",
                                 "trainer.eval_problems=2", "rollout.max_new_tokens=12", f"env.name={env_name}"])
    cfg.env.params = params  # replace (not merge with) the quickstart's arithmetic parameters
    trainer = Trainer(cfg, log=lambda *_: None)
    try:
        results = trainer.fit()
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert all(0.0 <= r["acc_t1"] <= 1.0 and r["tokens"] > 0 for r in rows)
    assert set(results) == {"base", "trained"}
