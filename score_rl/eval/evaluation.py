"""Evaluation: K-turn episodes on a held-out split → self-correction metrics, per-problem records, scaling curves.

An untrained model evaluated this way *is* the Self-Refine baseline (prompting only: the same correction
instruction, no training); reports label such models "(Self-Refine)".
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from score_rl import seeds
from score_rl.config import Config
from score_rl.errors import ConfigError
from score_rl.launch.distributed import ActorGroup, init_ray
from score_rl.envs import Problem
from score_rl.episode import Episode
from score_rl.eval.metrics import format_table, self_correction_metrics
from score_rl.utils import dumps_json

TRAINED_MARKER = "score_rl_run.json"  # written next to a trained policy by the trainer


class EvalInterrupted(Exception):
    """``should_stop`` answered true between two chunks of an evaluation (a stop signal during training)."""


def run_eval_episodes(
    workers: ActorGroup, problems: Sequence[Problem], seed: int, num_turns: int, temperature: float,
    samples_per_problem: int = 1, progress: Optional[str] = None, *, weights_version: Optional[int] = None,
    recover=None, attempts: int = 0, should_stop=None,
) -> List[Episode]:
    """Episodes for every problem, in problem order, sharded over the workers in chunks (with a progress bar).
    During training: ``weights_version`` / ``recover`` / ``attempts`` as in ``run_sharded`` (a dead or quietly
    restarted worker is brought up to date and its shard redone), and EvalInterrupted between chunks once
    ``should_stop()`` is true."""
    from tqdm.auto import tqdm

    from score_rl.rollout.worker import run_sharded
    from score_rl.train.run_log import ProgressLines

    chunk = 64 * len(workers)
    out: List[Episode] = []
    bar = tqdm(total=len(problems), desc=progress, disable=True if progress is None else None, leave=False)
    # where the bar cannot draw (a SLURM job's output), a line at most every 30 s
    lines = ProgressLines(len(problems), 0, 30.0, lambda m: print(m, flush=True), label=f"{progress}: problem") \
        if progress is not None and bar.disable else None
    try:
        for start in range(0, len(problems), chunk):
            if should_stop is not None and should_stop():
                raise EvalInterrupted(f"stopped after {start} of {len(problems)} problems")
            out += run_sharded(workers, problems[start:start + chunk], samples_per_problem, temperature,
                               seeds.eval_chunk(seed, start), num_turns, weights_version=weights_version,
                               recover=recover, attempts=attempts)
            bar.update(min(chunk, len(problems) - start))
            if lines is not None:  # (a disabled bar does not count)
                lines.update(min(start + chunk, len(problems)))
    finally:
        bar.close()
    return out


def eval_problems(problems: Sequence[Problem], limit: int) -> List[Problem]:
    return list(problems[:limit]) if limit > 0 else list(problems)


def model_label(label: str, path: str) -> str:
    return label if (Path(path) / TRAINED_MARKER).is_file() else f"{label} (Self-Refine)"


def parse_model_args(specs: Sequence[str]) -> List[Tuple[str, str]]:
    """'LABEL=DIR' or 'DIR' (labelled by its directory name) → [(label, dir)]; each DIR checked to be a model's."""
    from score_rl.train.base_model import check_model_dir

    out = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = Path(spec.rstrip("/")).name or spec, spec
        check_model_dir(Path(path), f"--model '{path}'")
        out.append((label, path))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--model labels must be unique, got {labels}; use LABEL=DIR")
    return out


@dataclass
class EvalReport:
    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    episodes: Dict[str, List[Episode]] = field(default_factory=dict)
    scaling: Dict[str, Dict[str, list]] = field(default_factory=dict)
    test_time: Dict[str, object] = field(default_factory=dict)  # model -> test_time.ModelStudy (eval.budgets)

    def table(self) -> str:
        num_turns = min(len(eps[0].turns) for eps in self.episodes.values())
        keys = tuple(f"acc_t{k}" for k in range(1, num_turns + 1))
        if num_turns >= 2:
            keys += ("delta", "delta_i2c", "delta_c2i", "fix_rate", "break_rate", "unchanged")
        return format_table(self.metrics, keys)


def make_workers(cfg: Config, model_path: str) -> ActorGroup:
    from score_rl.rollout.worker import RolloutWorker, check_engine_installed

    check_engine_installed(cfg)
    from score_rl.launch.resources import joined_cluster_cpus, plan_cpus, resolve_dtype

    cfg, line = plan_cpus(cfg, learner=False, cluster_cpus=joined_cluster_cpus(cfg))
    cfg, dtype_line = resolve_dtype(cfg)
    print(f"score-rl: {line}" + (f"; {dtype_line}" if dtype_line else ""), flush=True)
    rc = cfg.rollout
    if cfg.ray.enabled:
        init_ray(cfg.ray.address, rc.num_workers * rc.cpus_per_worker, rc.num_workers * rc.gpus_per_worker,
                 cfg.ray.num_cpus)
    n = rc.num_workers if cfg.ray.enabled else 1
    return ActorGroup(RolloutWorker, [(cfg, model_path, i) for i in range(n)], cfg.ray.enabled,
                      {"CPU": rc.cpus_per_worker, "GPU": rc.gpus_per_worker})


def release(workers: ActorGroup) -> None:
    if workers.use_ray:
        import ray

        for member in workers.members:
            ray.kill(member)


def evaluate_models(cfg: Config, models: Sequence[Tuple[str, str]], log=print) -> EvalReport:
    """``score-rl eval``: every model on the same problems, side by side; optional inference-time scaling."""
    from score_rl.envs import make_env

    ec = cfg.eval
    if ec.num_turns < 1:
        raise ConfigError(f"config key 'eval.num_turns' must be >= 1, got {ec.num_turns}")
    env = make_env(cfg.env, cfg.prompt)  # the problems, and the answer equivalence of the majority votes
    try:
        problems = eval_problems(env.problems(ec.split), ec.num_problems)
        scorer = None
        if ec.budgets:  # before any sampling: a bad scorer is one error, not minutes later
            from score_rl.eval.test_time import make_scorer

            if len(problems) < 2:
                raise ConfigError("config key 'eval.budgets': the test-time compute study needs at least 2 problems "
                                  "(the compute-optimal choice is made on one half and scored on the other)")
            scorer = make_scorer(ec.scorer)
        report = EvalReport()
        for label, path in models:
            name = model_label(label, path)
            workers = make_workers(cfg, path)
            try:
                eps = run_eval_episodes(workers, problems, cfg.trainer.seed, ec.num_turns, ec.temperature,
                                        progress=f"eval {label}")
                report.metrics[name], report.episodes[name] = self_correction_metrics(eps), eps
                if ec.scaling_samples:
                    sampled = run_eval_episodes(workers, problems, seeds.scaling_samples(cfg.trainer.seed), 2,
                                                ec.scaling_temperature, samples_per_problem=ec.scaling_samples,
                                                progress=f"scaling {label}")
                    from score_rl.eval.scaling import scaling_tables

                    report.scaling[name] = scaling_tables(sampled, env)  # votes pool answers env.same_answer equates
                if ec.budgets:
                    report.test_time[name] = _study(cfg, workers, problems, env, path, label, scorer)
            finally:
                release(workers)
            log(f"evaluated {name}: {path} on {len(problems)} '{ec.split}' problems")
    finally:
        if callable(getattr(env, "close", None)):  # custom envs (env.target) need not have close()
            env.close()  # e.g. the math env's verifier pool, started in this process only by majority votes
    if ec.output_dir:
        write_eval_outputs(Path(ec.output_dir), report, cfg)
    return report


def _study(cfg: Config, workers: ActorGroup, problems: Sequence[Problem], env, path: str, label: str, scorer):
    """The test-time compute study of one model (eval.budgets; score_rl/eval/test_time.py)."""
    from score_rl.eval import test_time

    ec = cfg.eval
    chains, difficulty = test_time.sample_for_study(run_eval_episodes, workers, problems, cfg.trainer.seed,
                                                    ec.scaling_temperature, ec.budgets, ec.budget_max_turns,
                                                    ec.difficulty_samples, f"test-time {label}")
    return test_time.study_model(chains, difficulty, env, ec.budgets, ec.budget_max_turns,
                                 test_time.count_params(path), scorer,
                                 {p.id: p for p in problems}, seed=cfg.trainer.seed)


def episode_record(model: str, ep: Episode) -> Dict:
    return {
        "model": model, "problem_id": ep.problem_id, "sample_index": ep.sample_index, "reference": ep.reference,
        "attempts": [t.response_text for t in ep.turns], "rewards": [t.reward for t in ep.turns],
        "reasons": [t.reason for t in ep.turns],
    }


def write_eval_outputs(out_dir: Path, report: EvalReport, cfg: Config) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "episodes.jsonl", "w") as f:
        for name, eps in report.episodes.items():
            for ep in eps:
                f.write(dumps_json(episode_record(name, ep), default=str) + "\n")
    (out_dir / "summary.json").write_text(dumps_json(
        {"metrics": report.metrics, "scaling": report.scaling, "split": cfg.eval.split,
         "num_problems": len(next(iter(report.episodes.values()))), "num_turns": cfg.eval.num_turns,
         "temperature": cfg.eval.temperature}, indent=2, default=str))
    note = ("Models marked (Self-Refine) are untrained: their turn-2 numbers are the Self-Refine baseline "
            "(the same correction instruction, prompting only).")
    (out_dir / "summary.md").write_text(f"# score-rl eval ({cfg.env.name}, split '{cfg.eval.split}', "
                                        f"temperature {cfg.eval.temperature})\n\n{report.table()}\n\n{note}\n")
    if report.scaling:
        _write_scaling(out_dir, report, cfg)
    if report.test_time:
        from score_rl.eval.test_time_report import write_study

        ec = cfg.eval
        greedy = {name: m["acc_t1"] for name, m in report.metrics.items()}
        write_study(out_dir, report.test_time, greedy, ec.budgets, ec.budget_max_turns, ec.difficulty_bins,
                    cfg.trainer.seed, ec.coverage_target,
                    f"{cfg.env.name}, split '{ec.split}', T={ec.scaling_temperature}")


def _write_scaling(out_dir: Path, report: EvalReport, cfg: Config) -> None:
    from score_rl.eval.plots import plot_majority_vote, plot_pass_at_k

    with open(out_dir / "pass_at_k.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "k", "pass_at_k"])
        for name, s in report.scaling.items():
            w.writerows([name, k, v] for k, v in enumerate(s["pass_at_k"], start=1))
    with open(out_dir / "majority_vote.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "budget", "parallel", "sequential"])
        for name, s in report.scaling.items():
            w.writerows([name, *row] for row in s["majority"])
    n, t = cfg.eval.scaling_samples, cfg.eval.scaling_temperature
    plot_pass_at_k({k: v["pass_at_k"] for k, v in report.scaling.items()}, out_dir / "pass_at_k.png",
                   f"Coverage vs samples ({cfg.env.name}, n={n}, T={t})")
    plot_majority_vote({k: v["majority"] for k, v in report.scaling.items()}, out_dir / "majority_vote.png",
                       f"Majority vote at equal budget ({cfg.env.name}, T={t})")
