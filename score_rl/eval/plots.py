"""PNG plots (matplotlib, headless): training curves, pass@k / coverage, majority vote parallel vs sequential."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


pyplot = _pyplot  # the public name: matplotlib.pyplot on the headless Agg backend


def read_metrics(run_dir: Path) -> List[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a score-rl run directory?")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} has no logged steps yet")
    latest: Dict[int, dict] = {}
    for row in rows:  # a resumed run may log a step twice; the later record wins
        latest[row["step"]] = row
    return [latest[s] for s in sorted(latest)]


def plot_training_curves(run_dir: Path, out: Path | None = None) -> Path:
    """Acc@t1, Acc@t2, Δ, Δi→c, Δc→i and KL per turn against step, from the run's metrics.jsonl."""
    plt = _pyplot()
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    get = lambda key: [r.get(key) for r in rows]  # noqa: E731
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [
        ("Accuracy (training samples)", [("acc_t1", "Acc@t1"), ("acc_t2", "Acc@t2")], "accuracy"),
        ("Self-correction", [("delta", "Δ(t1,t2)"), ("delta_i2c", "Δi→c"), ("delta_c2i", "Δc→i")],
         "fraction of problems"),
        ("KL to reference (per token)", [("kl_turn1", "turn 1"), ("kl_turn2", "turn 2")], "KL estimate"),
    ]
    for ax, (title, series, ylabel) in zip(axes, panels):
        for key, label in series:
            ax.plot(steps, get(key), label=label)
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    stage2 = next((r["step"] for r in rows if r.get("stage") == 2), None)
    if stage2 is not None and stage2 > steps[0]:
        for ax in axes:
            ax.axvline(stage2, color="grey", linestyle=":", linewidth=1)
        axes[0].annotate("Stage II", (stage2, axes[0].get_ylim()[1]), fontsize=8, va="top", ha="left")
    fig.suptitle(f"SCoRe training curves — {Path(run_dir).name}")
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "training_curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_pass_at_k(curves: Dict[str, Sequence[float]], out: Path, title: str) -> Path:
    """Coverage (pass@k) against number of samples, log-scale x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("number of samples k (log scale)")
    ax.set_ylabel("coverage = pass@k (first attempts)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_majority_vote(rows: Dict[str, Sequence[Tuple[int, float, float]]], out: Path, title: str) -> Path:
    """Majority-vote accuracy against generation budget: parallel (2K samples) vs sequential (K × self-correct)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, data in rows.items():
        budgets = [b for b, _, _ in data]
        line = ax.plot(budgets, [p for _, p, _ in data], marker="o", linestyle="--", label=f"{name}: parallel")[0]
        ax.plot(budgets, [s for _, _, s in data], marker="s", color=line.get_color(),
                label=f"{name}: sequential (self-correct)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generation budget 2K (log scale)")
    ax.set_ylabel("majority-vote accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
