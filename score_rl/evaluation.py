"""Two-turn evaluation: greedy (or sampled) episodes on a held-out split → self-correction metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

from score_rl.config import Config
from score_rl.distributed import ActorGroup, shard
from score_rl.envs import Problem
from score_rl.episode import Episode
from score_rl.metrics import HEADLINE, format_table, self_correction_metrics


def run_eval_episodes(workers: ActorGroup, problems: Sequence[Problem], cfg: Config, seed: int) -> List[Episode]:
    shards = shard(problems, len(workers))
    args = [(s, 1, cfg.rollout.eval_temperature, seed + i, cfg.rollout.num_turns) for i, s in enumerate(shards)]
    return [ep for part in workers.call("run_episodes", args) for ep in part]


def eval_problems(problems: Sequence[Problem], limit: int) -> List[Problem]:
    return list(problems[:limit]) if limit > 0 else list(problems)


def episode_record(model: str, ep: Episode) -> Dict:
    return {
        "model": model, "problem_id": ep.problem_id, "reference": ep.reference,
        "attempts": [t.response_text for t in ep.turns], "rewards": [t.reward for t in ep.turns],
        "reasons": [t.reason for t in ep.turns],
    }


def write_eval_outputs(out_dir: Path, results: Dict[str, Dict[str, float]], episodes: Dict[str, List[Episode]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "episodes.jsonl", "w") as f:
        for name, eps in episodes.items():
            for ep in eps:
                f.write(json.dumps(episode_record(name, ep)) + "\n")
    (out_dir / "summary.json").write_text(json.dumps(results, indent=2))
    (out_dir / "summary.md").write_text(format_table(results, HEADLINE + ("fix_rate", "break_rate", "unchanged")) + "\n")


def evaluate_models(cfg: Config, model_paths: Sequence[str], log=print) -> Dict[str, Dict[str, float]]:
    """``score-rl eval``: each model on the same problems, side by side."""
    from score_rl.envs import make_env
    from score_rl.rollout.worker import RolloutWorker

    env = make_env(cfg.env, cfg.prompt)
    problems = eval_problems(env.problems(cfg.eval.split), cfg.eval.num_problems)
    results, episodes = {}, {}
    for path in model_paths:
        worker = ActorGroup(RolloutWorker, [(cfg, path, 0)], use_ray=False)
        eps = run_eval_episodes(worker, problems, cfg, cfg.trainer.seed)
        results[path] = self_correction_metrics(eps)
        episodes[path] = eps
        log(f"evaluated {path} on {len(problems)} {cfg.eval.split} problems")
    if cfg.eval.output_dir:
        write_eval_outputs(Path(cfg.eval.output_dir), results, episodes)
    return results
