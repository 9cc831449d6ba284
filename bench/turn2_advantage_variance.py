"""Turn-2 advantages with independent episodes versus conditional groups (rollout.corrections_per_attempt), at the
same number of second attempts per problem.

    python bench/turn2_advantage_variance.py [--config configs/ablation_testbed.yaml] [--problems 256] [--samples 8]

Samples the config's base model on train problems with layouts (first attempts × corrections) = (8 × 1), (4 × 2),
(2 × 4), shapes them as SCoRe's Stage II (α from the config) and computes RLOO advantages. Prints, per layout, the
mean square of turn-2 advantages (a proxy for the noise multiplying each token's score function, not the gradient
variance itself), their correlation with r1 (a first attempt's correctness is fixed when attempt 2 is sampled: any
part of A2 that r1 predicts is noise for turn 2's gradient), and the mean square after removing that r1-predictable
part. The r1-predictable part is the *net* effect of the bonus's −α·r1 and +α·r2 terms, not the −α·r1 term alone.
A benchmark: it prints what it measures in one run, nothing is asserted.
"""

from __future__ import annotations

import argparse

import numpy as np

from score_rl.algos.advantages import compute_advantages
from score_rl.config import load_config
from score_rl.rollout.worker import RolloutWorker
from score_rl.shaping import STAGE_II, shape_episodes
from score_rl.train.base_model import resolve_model_path
from score_rl.utils import quiet_libraries


def measure(worker, problems, firsts: int, corrections: int, cfg, seed: int):
    episodes = worker.run_episodes(problems, firsts, cfg.rollout.temperature, seed, 2, corrections)
    shape_episodes(episodes, STAGE_II, cfg.shaping)
    compute_advantages(episodes, "rloo", cfg.shaping.gamma)
    a2 = np.array([ep.turns[1].advantage for ep in episodes])
    r1 = np.array([ep.turns[0].reward for ep in episodes])
    corr = float(np.corrcoef(a2, r1)[0, 1]) if r1.std() > 0 and a2.std() > 0 else 0.0
    slope = np.polyfit(r1, a2, 1)[0] if r1.std() > 0 else 0.0
    residual = a2 - slope * (r1 - r1.mean())
    return float((a2 ** 2).mean()), corr, float((residual ** 2).mean()), len(episodes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/ablation_testbed.yaml")
    ap.add_argument("--problems", type=int, default=256)
    ap.add_argument("--samples", type=int, default=8, help="second attempts per problem in every layout")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    quiet_libraries()
    cfg = load_config(args.config, ["ray.enabled=false"])
    worker = RolloutWorker(cfg, resolve_model_path(cfg))
    problems = worker.env.problems("train")[:args.problems]
    print(f"{args.config}: {len(problems)} train problems, {args.samples} second attempts each, Stage II shaping "
          f"α = {cfg.shaping.alpha}, RLOO, base model at T = {cfg.rollout.temperature}")
    print("| first attempts × corrections | episodes | mean A2² | corr(A2, r1) | "
          "mean A2² without the r1-predictable part |")
    print("|---|---:|---:|---:|---:|")
    rows = {}
    for corrections in (1, 2, 4):
        firsts = args.samples // corrections
        if firsts < 2:
            continue
        rows[corrections] = measure(worker, problems, firsts, corrections, cfg, args.seed)
        ms, corr, resid, n = rows[corrections]
        print(f"| {firsts} × {corrections} | {n} | {ms:.2f} | {corr:+.3f} | {resid:.2f} |")
    base = rows[1][0]
    print("ratios of mean A2² to independent episodes: " +
          ", ".join(f"{args.samples // m} × {m}: {rows[m][0] / base:.2f}" for m in rows if m > 1))


if __name__ == "__main__":
    main()
