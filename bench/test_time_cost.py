"""The test-time compute study's sampling cost: generations sampled (one set of chains reused by every cell, plus the
difficulty samples) vs the largest cell alone vs every cell sampled on its own; optionally the study timed on a model.

    .venv/bin/python bench/test_time_cost.py                         # the arithmetic, for a few grids (instant)
    .venv/bin/python bench/test_time_cost.py --run MODEL_DIR [--problems 300]   # also time a real study (minutes)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from score_rl.eval.test_time import chain_plan, grid  # noqa: E402


def per_problem(budgets, max_turns, difficulty_samples=8):
    plan = chain_plan(budgets, max_turns)
    reused = sum(length * count for length, count in plan)
    separate = sum(n * len(cells) for n, cells in grid(budgets, max_turns).items())
    return plan, reused, reused + difficulty_samples, max(budgets), separate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a model directory: time `score-rl eval` with eval.budgets on it")
    ap.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    ap.add_argument("--problems", type=int, default=300)
    args = ap.parse_args()
    print("| budgets | max turns | chains sampled (length x count) | chains | + difficulty (8) | largest cell | "
          "every cell on its own | reused / separate |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for budgets, turns in (([1, 2, 4, 8, 16], 16), ([2, 4, 8, 16], 8), ([1, 2, 4, 8, 16, 32], 32),
                           ([4, 16, 64], 16)):
        plan, reused, total, largest, separate = per_problem(budgets, turns)
        shown = ", ".join(f"{length}x{count}" for length, count in plan)
        print(f"| {budgets} | {turns} | {shown} | {reused} | {total} | {largest} | {separate} | "
              f"x{reused / separate:.2f} |")
    if args.run:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "score_rl.cli", "eval", args.config,
                            f"eval.num_problems={args.problems}", "eval.budgets=[1,2,4,8,16]", "ray.enabled=false",
                            "--model", args.run, "--output", out], check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            line = next(x for x in Path(out, "compute_optimal.md").read_text().splitlines()
                        if x.startswith("Generations sampled"))
        print(f"\nstudy on {args.run}, {args.problems} problems, budgets 1..16: {wall:.0f} s wall; {line}")


if __name__ == "__main__":
    main()
