"""The test-time compute study's files: compute_optimal.{csv,md,png}, coverage_fit.{csv,png}, test_time_grid.csv.

Rows come from ``score_rl.eval.test_time`` (``policy_rows``, ``grid_rows``); formulas in docs/evaluation.md.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from score_rl.eval import compute_optimal as co
from score_rl.eval.test_time import ModelStudy, grid_rows, policy_rows


def _write_csv(path: Path, rows: List[Dict[str, Any]], first: Sequence[str] = ("model",)) -> None:
    if not rows:
        return
    keys = list(first) + [k for k in dict.fromkeys(k for r in rows for k in r) if k not in first]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, keys, restval="")
        writer.writeheader()
        writer.writerows(rows)


def coverage_rows(name: str, study: ModelStudy, target: float) -> List[Dict[str, Any]]:
    out = []
    for curve, ys in (("parallel pass@k", study.pass_at_k), ("sequential coverage at turn k", study.turn_coverage)):
        fit = co.fit_coverage_law(range(1, len(ys) + 1), ys)
        out.append({"model": name, "curve": curve, "points": len(ys), "last": ys[-1] if ys else math.nan,
                    "a": fit.a if fit else None, "b": fit.b if fit else None, "rmse": fit.rmse if fit else None,
                    "points_fitted": fit.points if fit else 0, "target": target,
                    "k_for_target": fit.k_for(target) if fit else None})
    return out


def exchange_rate(studies: Dict[str, ModelStudy], greedy: Dict[str, float], budgets: Sequence[int],
                  policy: Dict[str, Dict[int, Dict[str, Any]]]) -> List[str]:
    """For each model and each one at least 1.5x its size: the smallest budget at which the *lower* end of the
    smaller model's compute-optimal interval reaches the larger one's Acc@t1 at eval.temperature (greedy by
    default), with the FLOPs per problem of both (prefix reuse; the larger model's single first attempt)."""
    lines = []
    names = sorted(studies, key=lambda n: studies[n].params)
    for i, small in enumerate(names):
        for large in names[i + 1:]:
            if studies[large].params < 1.5 * studies[small].params or large not in greedy:
                continue
            s, big = studies[small], studies[large]
            what = (f"{small} ({s.params:,} parameters) vs {large}'s Acc@t1 {greedy[large]:.3f} "
                    f"({big.params:,} parameters")
            if (1, 1) in big.tokens:
                what += f", {co.flops(big.params, big.tokens[(1, 1)])['flops_reused']:.3g} FLOPs a problem"
            row = next((policy[small][n] for n in sorted(budgets)
                        if n in policy[small] and policy[small][n]["low"] >= greedy[large]), None)
            if row is None:
                lines.append(f"- {what}): not reached at any budget up to {max(budgets)} (interval's lower end).")
            else:
                lines.append(f"- {what}): reached at budget {row['budget']} (compute-optimal {row['accuracy']:.3f} "
                             f"[{row['low']:.3f}, {row['high']:.3f}], {row.get('flops_reused', math.nan):.3g} FLOPs "
                             f"a problem).")
    return lines


def write_study(out_dir: Path, studies: Dict[str, ModelStudy], greedy: Dict[str, float], budgets: Sequence[int],
                max_turns: int, bins: int, seed: int, target: float, title: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    policy_all, grid_all, coverage_all, headline = [], [], [], {}
    for name, study in studies.items():
        rows = policy_rows(study, budgets, max_turns, bins, seed)
        policy_all += [{"model": name, **r} for r in rows]
        grid_all += [{"model": name, **r} for r in grid_rows(study, budgets, max_turns, seed)]
        coverage_all += coverage_rows(name, study, target)
        headline[name] = {r["budget"]: r["accuracy"] for r in rows
                          if r["difficulty"] == "predicted" and r["bin"] == "all" and r["policy"] == "compute-optimal"}
    _write_csv(out_dir / "compute_optimal.csv", policy_all)
    _write_csv(out_dir / "test_time_grid.csv", grid_all)
    _write_csv(out_dir / "coverage_fit.csv", coverage_all)
    (out_dir / "compute_optimal.md").write_text(_markdown(studies, policy_all, grid_all, coverage_all, greedy,
                                                          budgets, bins, title))
    _plot_policies(policy_all, out_dir / "compute_optimal.png", title)
    _plot_coverage(studies, coverage_all, out_dir / "coverage_fit.png", title)


def _cell(r: Dict[str, Any]) -> str:
    return f"{r['accuracy']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def _markdown(studies, policy_all, grid_all, coverage_all, greedy, budgets, bins, title) -> str:
    lines = [f"# Test-time compute: {title}", "",
             "Accuracy per problem at budget N generations; [95% bootstrap interval over problems; for compute-optimal "
             "the whole procedure resampled: problems, halves, choices]. Compute-optimal: the best split per "
             "difficulty bin chosen on the other half of the problems (predicted difficulty: pass@1 on separate "
             "samples), by majority vote; minus parallel: the paired difference on the same resamples. Parallel: N "
             "chains of 1 turn; sequential: 1 chain of N turns. FLOPs per problem of the splits compute-optimal "
             "chose, with prefix reuse. Formulas: docs/evaluation.md.", ""]
    for name in studies:
        lines += [f"## {name}", "", "| N | compute-optimal (chosen) | minus parallel (paired) | parallel | sequential "
                  "| FLOPs (compute-optimal) |", "|---|---|---|---|---|---|"]
        for n in budgets:
            get = {r["policy"]: r for r in policy_all if r["model"] == name and r["budget"] == n
                   and r["bin"] == "all" and r["difficulty"] == "predicted"}
            opt = get.get("compute-optimal")
            paired = "-" if opt.get("vs_parallel_low") is None or "parallel" not in get else \
                f"{opt['accuracy'] - get['parallel']['accuracy']:+.3f} [{opt['vs_parallel_low']:+.3f}, " \
                f"{opt['vs_parallel_high']:+.3f}]"
            lines.append(f"| {n} | {_cell(opt)} ({opt['chosen']}) | {paired} | "
                         + " | ".join(_cell(get[p]) if p in get else "-" for p in ("parallel", "sequential"))
                         + f" | {opt.get('flops_reused', math.nan):.3g} |")
        top = max(budgets)
        lines += ["", f"Per difficulty bin at N = {top} (bin 0 easiest):", "",
                  "| difficulty | bin | problems | compute-optimal (chosen) | parallel | sequential |",
                  "|---|---|---|---|---|---|"]
        for kind in ("predicted", "oracle"):
            for b in range(bins):
                get = {r["policy"]: r for r in policy_all if r["model"] == name and r["budget"] == top
                       and r["bin"] == b and r["difficulty"] == kind}
                if "compute-optimal" not in get:
                    continue
                opt = get["compute-optimal"]
                lines.append(f"| {kind} | {b} | {opt['problems']} | {_cell(opt)} ({opt['chosen']}) | "
                             + " | ".join(_cell(get[p]) if p in get else "-" for p in ("parallel", "sequential"))
                             + " |")
        lines += ["", "Every cell (tokens and FLOPs per problem; FLOPs = 2 x parameters x tokens, prefill without / "
                  "with prefix reuse):", "",
                  "| N | chains x turns | selection | accuracy | generated tokens | FLOPs | FLOPs (reuse) |",
                  "|---|---|---|---|---|---|---|"]
        for r in grid_all:
            if r["model"] == name:
                lines.append(f"| {r['budget']} | {r['chains']}x{r['turns']} | {r['selection']} | {_cell(r)} | "
                             f"{r['generated']:.1f} | {r['flops']:.3g} | {r['flops_reused']:.3g} |")
        g = studies[name].generations
        lines += ["", f"Generations sampled: {g['generated']:,} (chains and difficulty samples); the largest cell "
                  f"alone needs {g['largest_cell']:,}; every cell sampled on its own would need "
                  f"{g['grid_if_sampled_per_cell']:,}.", ""]
    lines += ["## Coverage law", "", "-log(coverage(k)) ~= a k^(-b), least squares on log(-log) vs log k.", "",
              "| model | curve | points | last | a | b | rmse | k for target |", "|---|---|---|---|---|---|---|---|"]
    for r in coverage_all:
        fitted = r["a"] is not None
        lines.append(f"| {r['model']} | {r['curve']} | {r['points']} | {r['last']:.3f} | "
                     + (f"{r['a']:.3f} | {r['b']:.3f} | {r['rmse']:.4f} | {r['k_for_target']:.3g} (coverage "
                        f"{r['target']}) |" if fitted else "- | - | - | - (nothing to fit) |"))
    rate = exchange_rate(studies, greedy, budgets, {n: {r["budget"]: r for r in policy_all
                                                        if r["model"] == n and r["bin"] == "all"
                                                        and r["difficulty"] == "predicted"
                                                        and r["policy"] == "compute-optimal"} for n in studies})
    if rate:
        lines += ["", "## Test-time compute vs parameters", ""] + rate
    return "\n".join(lines) + "\n"


def _plot_policies(policy_all, out: Path, title: str) -> Optional[Path]:
    from score_rl.eval.plots import pyplot

    plt = pyplot()
    models = list(dict.fromkeys(r["model"] for r in policy_all))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models):
        for policy, style in (("compute-optimal", "-o"), ("parallel", "--s"), ("sequential", ":^")):
            rows = [r for r in policy_all if r["model"] == name and r["policy"] == policy and r["bin"] == "all"
                    and r["difficulty"] == "predicted"]
            if rows:
                xs = [r["budget"] for r in rows]
                ax.plot(xs, [r["accuracy"] for r in rows], style, label=policy)
                ax.fill_between(xs, [r["low"] for r in rows], [r["high"] for r in rows], alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("budget N (generations per problem)")
        ax.set_ylabel("accuracy")
        ax.set_title(name)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _plot_coverage(studies: Dict[str, ModelStudy], coverage_all, out: Path, title: str) -> Path:
    from score_rl.eval.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, curve, attr in ((axes[0], "parallel pass@k", "pass_at_k"),
                            (axes[1], "sequential coverage at turn k", "turn_coverage")):
        for name, study in studies.items():
            ys = getattr(study, attr)
            ks = list(range(1, len(ys) + 1))
            line = ax.plot(ks, ys, "o", label=f"{name} (data)")[0]
            fit = next((r for r in coverage_all if r["model"] == name and r["curve"] == curve), None)
            if fit and fit["a"] is not None:
                law = co.CoverageFit(fit["a"], fit["b"], fit["rmse"], fit["points_fitted"])
                dense = [k / 4 for k in range(4, 4 * len(ks) * 4 + 1)]
                ax.plot(dense, [law.coverage(k) for k in dense], "-", color=line.get_color(),
                        label=f"{name}: a={law.a:.2f}, b={law.b:.2f}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (samples)" if attr == "pass_at_k" else "k (turns of one chain)")
        ax.set_ylabel("coverage")
        ax.set_title(curve)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
