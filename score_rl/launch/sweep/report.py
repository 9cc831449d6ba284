"""The report of a sweep (``score-rl sweep --report OUT``): per variant, mean ± std and a 95% CI over seeds;
paired differences against a reference.

Every number comes from each run's ``eval_before_after.json`` (the final policy on the held-out problems, with the
sweep's evaluation settings) and its ``metrics.jsonl`` (the training curves). Outputs, in ``OUT/report/``:
summary.md, summary.csv, paired.csv, bars.png (final metrics with 95% CI error bars) and curves.png (training curves
per variant: mean over seeds with a ±1 std band).

Statistics (scipy): the CI of a mean is Student's t, mean ± t(0.975, n−1)·s/√n with s the sample std (ddof 1); the
paired difference of a variant and the reference is the same interval over the per-seed differences (the seeds both
ran), which is scipy's ``ttest_rel(...).confidence_interval()``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from score_rl import rundir
from score_rl.launch.sweep.spec import read_plan
from score_rl.utils import nan_for_none

# the final metrics of the report: key → (label, computed from the run's evaluation)
METRICS = {
    "acc_t1": "Acc@t1", "acc_t2": "Acc@t2", "delta": "Δ(t1,t2)", "delta_i2c": "Δi→c", "delta_c2i": "Δc→i",
    "edit_rate": "edit rate t2",
}
CURVES = {"acc_t1": "Acc@t1 (training samples)", "acc_t2": "Acc@t2 (training samples)", "delta": "Δ(t1,t2)",
          "edit_rate": "edit rate of attempt 2"}


@dataclass
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof 1); nan for n < 2
    ci_low: float
    ci_high: float


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std and Student-t confidence interval of the mean (nan bounds below 2 values)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired_difference(values: Dict[int, float], reference: Dict[int, float], confidence: float = 0.95) -> Summary:
    """Mean and CI of (variant − reference) over the seeds both have."""
    seeds = sorted(set(values) & set(reference))
    return mean_ci([values[s] - reference[s] for s in seeds], confidence)


def final_metrics(run_dir: Path, which: str = "trained") -> Optional[Dict[str, float]]:
    """A finished run's evaluation of its final policy (``which="trained"``) or of the base model (``"base"``), with
    the edit rate (share of changed second answers)."""
    path = Path(run_dir) / rundir.EVAL_BEFORE_AFTER
    if not path.is_file():
        return None
    metrics = nan_for_none(json.loads(path.read_text())[which])  # an undefined rate is null in the file
    out = {k: metrics[k] for k in METRICS if k in metrics}
    if "unchanged" in metrics:
        out["edit_rate"] = 1.0 - metrics["unchanged"]
    return out


def _group(run: dict) -> str:
    """A planned run's variant and grid point (plans written before it was recorded: derived from the run id)."""
    return run.get("group") or run["run_id"].rsplit("__seed", 1)[0]


def _fmt(s: Summary, percent: bool = True, signed: bool = False) -> str:
    if s.n == 0:
        return "—"
    k = 100 if percent else 1
    sign = "+" if signed else ""
    if s.n < 2:
        return f"{k * s.mean:{sign}.1f} (n=1)"
    return f"{k * s.mean:{sign}.1f} ± {k * s.std:.1f} [{k * s.ci_low:{sign}.1f}, {k * s.ci_high:{sign}.1f}]"


def write_report(out_dir: str | Path, log: Callable = print) -> Path:
    """Tables (markdown, CSV) and plots of a sweep directory; returns the markdown file."""
    out_dir = Path(out_dir)
    plan = read_plan(out_dir)
    groups: Dict[str, Dict[int, Dict[str, float]]] = defaultdict(dict)
    order: List[str] = []
    missing, failed, base_rows = [], [], {}
    point_of: Dict[str, str] = {}  # group → its grid point's label ("" without a grid)
    for run in plan["runs"]:
        group = _group(run)
        if group not in order:
            order.append(group)
            point_of[group] = group[len(run["variant"]):]
        metrics = final_metrics(Path(run["run_dir"]))
        if metrics is None or not rundir.is_complete(run["run_dir"]):
            (failed if (Path(run["run_dir"]) / rundir.FAILED).is_file() else missing).append(run["run_id"])
            continue
        groups[group][run["seed"]] = metrics
        base = final_metrics(Path(run["run_dir"]), "base")
        if base is not None:
            base_rows.setdefault(run["seed"], base)
    reference = plan.get("reference")
    report = out_dir / "report"
    report.mkdir(parents=True, exist_ok=True)

    summaries = {g: {k: mean_ci([m[k] for m in groups[g].values() if k in m]) for k in METRICS} for g in order}
    paired: Dict[str, Dict[str, Summary]] = {}
    ref_of: Dict[str, str] = {}
    if reference:
        for g in order:  # each variant against the reference at the same grid point
            ref = reference + point_of[g]
            if g != ref and groups.get(g) and groups.get(ref):
                ref_of[g] = ref
                paired[g] = {k: paired_difference({s: m[k] for s, m in groups[g].items() if k in m},
                                                  {s: m[k] for s, m in groups[ref].items() if k in m})
                             for k in METRICS}

    with open(report / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "metric", "n", "mean", "std", "ci95_low", "ci95_high"])
        for g in order:
            for k, s in summaries[g].items():
                w.writerow([g, k, s.n, s.mean, s.std, s.ci_low, s.ci_high])
    with open(report / "paired.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "reference", "metric", "n", "mean_diff", "std", "ci95_low", "ci95_high"])
        for g, rows in paired.items():
            for k, s in rows.items():
                w.writerow([g, ref_of[g], k, s.n, s.mean, s.std, s.ci_low, s.ci_high])

    head = "| variant | seeds | " + " | ".join(METRICS.values()) + " |"
    sep = "|---|---:|" + "---:|" * len(METRICS)
    lines = [f"# Sweep '{plan['name']}'", "",
             f"Final policies on held-out problems, in percent: mean ± std [95% CI] over seeds ({plan['base']}).", "",
             head, sep]
    if base_rows:
        base = {k: mean_ci([m[k] for m in base_rows.values() if k in m]) for k in METRICS}
        lines.append("| base model (untrained) | – | " + " | ".join(
            f"{100 * base[k].mean:{'+' if k.startswith('delta') else ''}.1f}" for k in METRICS) + " |")
    for g in order:
        n = max((s.n for s in summaries[g].values()), default=0)
        lines.append(f"| {g} | {n} | " + " | ".join(_fmt(summaries[g][k], signed=k.startswith("delta"))
                                                    for k in METRICS) + " |")
    if paired:
        lines += ["", f"Paired difference against '{reference}' (same seeds, same grid point), in points: mean ± std "
                  "[95% CI].", "",
                  "| variant | seeds | " + " | ".join(METRICS.values()) + " |", sep]
        for g, rows in paired.items():
            n = max(s.n for s in rows.values())
            lines.append(f"| {g} − {ref_of[g]} | {n} | " + " | ".join(_fmt(rows[k], signed=True) for k in METRICS)
                         + " |")
    if missing or failed:
        lines += [""]
        if failed:
            lines.append(f"Failed runs (failed.json in their directories): {', '.join(failed)}.")
        if missing:
            lines.append(f"Unfinished runs (not in the table): {', '.join(missing)}.")
    lines += ["", "Edit rate: share of episodes whose second attempt's text differs from the first's (a rephrasing "
              "with the same answer counts).", ""]
    md = report / "summary.md"
    md.write_text("\n".join(lines))
    plan_runs = {r["run_id"]: r for r in plan["runs"]}
    try:
        _plot_bars(report / "bars.png", order, summaries, plan["name"])
        _plot_curves(report / "curves.png", order, plan_runs, plan["name"])
    except Exception as err:  # a plot must never lose the tables above
        log(f"warning: sweep plots not drawn: {err}")
    return md


def _colors(order: List[str]) -> Dict[str, str]:
    """One colour per variant, the same in every panel of both plots."""
    from score_rl.eval.plots import pyplot

    cycle = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    return {g: cycle[i % len(cycle)] for i, g in enumerate(order)}


def _plot_bars(out: Path, order: List[str], summaries, name: str) -> None:
    from score_rl.eval.plots import pyplot

    plt = pyplot()
    groups = [g for g in order if any(s.n for s in summaries[g].values())]
    if not groups:
        return
    colors = _colors(order)
    fig, axes = plt.subplots(2, 3, figsize=(max(10, 0.55 * len(groups) * 3), 7.5))
    for ax, (key, title) in zip(axes.flat, METRICS.items()):
        xs = np.arange(len(groups))
        means = [100 * summaries[g][key].mean for g in groups]
        err = [0.0 if math.isnan(summaries[g][key].ci_high)
               else 100 * (summaries[g][key].ci_high - summaries[g][key].mean) for g in groups]
        ax.bar(xs, means, 0.7, yerr=err, capsize=3, color=[colors[g] for g in groups])
        ax.set_xticks(xs, groups, rotation=40, ha="right", fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("percent")
    axes[1][0].set_ylabel("percent")
    fig.suptitle(f"Sweep '{name}': final policies, mean over seeds (error bars: 95% CI)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _curve_rows(run_dir: Path) -> List[dict]:
    from score_rl.eval.plots import read_metrics

    try:
        rows = read_metrics(run_dir)
    except (FileNotFoundError, ValueError):
        return []
    for r in rows:
        if r.get("unchanged") is not None:
            r["edit_rate"] = 1.0 - r["unchanged"]
    return rows


def _plot_curves(out: Path, order: List[str], runs: Dict[str, dict], name: str) -> None:
    from score_rl.eval.plots import pyplot

    plt = pyplot()
    colors = _colors(order)
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.8))
    for g in order:
        series = [_curve_rows(Path(r["run_dir"])) for r in runs.values() if _group(r) == g]
        series = [s for s in series if s]
        if not series:
            continue
        for ax, key in zip(axes, CURVES):
            steps = sorted({r["step"] for s in series for r in s if r.get(key) is not None})
            if not steps:
                continue
            table = [[next((r[key] for r in s if r["step"] == st and r.get(key) is not None), math.nan) for st in steps]
                     for s in series]
            vals = np.array(table, dtype=float)
            mean = np.nanmean(vals, axis=0)
            std = np.nanstd(vals, axis=0, ddof=1) if len(series) > 1 else np.zeros_like(mean)  # as in the table
            ax.plot(steps, mean, label=g, color=colors[g])
            ax.fill_between(steps, mean - std, mean + std, color=colors[g], alpha=0.2)
    for ax, title in zip(axes, CURVES.values()):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
    if not handles:  # no run logged training steps (e.g. Self-Refine only)
        plt.close(fig)
        return
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 8), fontsize=8)
    fig.suptitle(f"Sweep '{name}': training curves (mean over seeds, band ±1 std)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
