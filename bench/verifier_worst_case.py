"""Worst-case verifier time per kB of response, per env, over the adversarial set of tests/envs/test_hostile_outputs.py.

    python bench/verifier_worst_case.py

Times each env's ``verify_batch`` (what the rollout worker calls) on each hostile response, one at a time: arithmetic
(both answer modes), math (its math-verify pool started before timing; an answer that reaches math-verify is bounded
by its ``timeout_s`` there), code (extraction only: a stand-in sandbox fails every program at once, as the real one is
bounded by its own deadline). Prints one table, measured in one run on this machine (a benchmark, not a test).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cases():
    spec = importlib.util.spec_from_file_location("hostile", ROOT / "tests" / "envs" / "test_hostile_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    from score_rl.config import PromptConfig
    from score_rl.envs.arithmetic import ArithmeticEnv
    from score_rl.envs.code import CodeEnv
    from score_rl.envs.math import MathEnv

    hostile = _cases()
    cases = hostile.hostile_cases()
    math_env = MathEnv({"workers": 1, "timeout_s": 3.0})
    math_env.verify_batch(["\\boxed{1}"], ["2"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mbpp.jsonl"
        rows = [{"task_id": i, "text": "Square a number.", "code": "def sq(x):\n    return x * x\n",
                 "test_list": ["assert sq(3) == 9"]} for i in (1, 2)]
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        code_env = CodeEnv({"dataset": str(path), "test_fraction": 0.5})
        code_env._sandbox = hostile._NoSandbox()
        code_ref = code_env.problems("test")[0].reference
        envs = [("arithmetic (first)", ArithmeticEnv({}, PromptConfig(), seed=0), 42),
                ("arithmetic (final)", ArithmeticEnv({"answer": "final"}, PromptConfig(), seed=0), 42),
                ("math", math_env, "42"), ("code", code_env, code_ref)]
        print(f"{len(cases)} hostile responses, {min(len(t) for _, t in cases):,} to {max(len(t) for _, t in cases):,} "
              "characters; seconds of one verify_batch call each")
        print(f"{'env':<20} {'worst s/kB':>11}  {'case':<36} {'worst s':>8}  {'case':<36} {'total s':>8}")
        for name, env, reference in envs:
            timings = []
            for case, text in cases:
                start = time.monotonic()
                verdict = env.verify_batch([text], [reference])[0]
                seconds = time.monotonic() - start
                if verdict.reason == "timeout":  # math-verify's deadline: restart its pool outside the timing
                    env.verify_batch(["\\boxed{1}"], ["2"])
                timings.append((seconds / (len(text) / 1000), seconds, case))
            per_kb = max(timings)
            worst = max(timings, key=lambda t: t[1])
            print(f"{name:<20} {per_kb[0]:>11.2e}  {per_kb[2][:36]:<36} {worst[1]:>8.3f}  {worst[2][:36]:<36} "
                  f"{sum(t[1] for t in timings):>8.2f}")
            sys.stdout.flush()
    math_env.close()


if __name__ == "__main__":
    main()
