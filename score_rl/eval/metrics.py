"""Self-correction metrics of the SCoRe paper (Kumar et al., 2024; docs/evaluation.md, "Metrics"), shared by
training logs, evaluation and sweeps.

For N episodes with per-attempt binary rewards r_t:
  acc_t<k>      = mean r_k
  delta         = acc_t2 − acc_t1
  delta_i2c     = #(r1 = 0 and r2 = 1) / N          (unconditional, as in the paper)
  delta_c2i     = #(r1 = 1 and r2 = 0) / N
  fix_rate      = #(r1 = 0 and r2 = 1) / #(r1 = 0)  (conditional)
  break_rate    = #(r1 = 1 and r2 = 0) / #(r1 = 1)
  unchanged     = share of episodes whose second answer text equals the first
  edit_ratio    = mean normalised similarity of attempt 2 to attempt 1 (1 = identical; a collapse detector)
"""

from __future__ import annotations

import difflib
from typing import Dict, Sequence

from score_rl.episode import Episode


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def self_correction_metrics(episodes: Sequence[Episode]) -> Dict[str, float]:
    if not episodes:
        raise ValueError("no episodes to compute metrics on")
    n = len(episodes)
    num_turns = min(len(ep.turns) for ep in episodes)
    out: Dict[str, float] = {}
    for k in range(num_turns):
        out[f"acc_t{k + 1}"] = _mean([ep.turns[k].reward for ep in episodes])
    if num_turns >= 2:
        r1 = [ep.turns[0].reward >= 0.5 for ep in episodes]
        r2 = [ep.turns[1].reward >= 0.5 for ep in episodes]
        i2c = sum((not a) and b for a, b in zip(r1, r2))
        c2i = sum(a and (not b) for a, b in zip(r1, r2))
        wrong1, right1 = n - sum(r1), sum(r1)
        out["delta"] = out["acc_t2"] - out["acc_t1"]
        out["delta_i2c"] = i2c / n
        out["delta_c2i"] = c2i / n
        out["fix_rate"] = i2c / wrong1 if wrong1 else float("nan")
        out["break_rate"] = c2i / right1 if right1 else float("nan")
        firsts = [ep.turns[0].response_text.strip() for ep in episodes]
        seconds = [ep.turns[1].response_text.strip() for ep in episodes]
        out["unchanged"] = _mean([float(a == b) for a, b in zip(firsts, seconds)])
        out["edit_ratio"] = _mean([difflib.SequenceMatcher(None, a, b).ratio() for a, b in zip(firsts, seconds)])
    return out


HEADLINE = ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i")
LABELS = {"acc_t1": "Acc@t1", "acc_t2": "Acc@t2", "delta": "Δ(t1,t2)", "delta_i2c": "Δi→c", "delta_c2i": "Δc→i",
          "fix_rate": "fix rate", "break_rate": "break rate", "unchanged": "unchanged", "edit_ratio": "edit sim."}


def label(key: str) -> str:
    if key.startswith("acc_t") and key[5:].isdigit():
        return f"Acc@t{key[5:]}"
    return LABELS.get(key, key)


def format_table(rows: Dict[str, Dict[str, float]], keys: Sequence[str] = HEADLINE) -> str:
    """Markdown table: one row per model / run, metrics in percent."""
    head = "| model | " + " | ".join(label(k) for k in keys) + " |"
    sep = "|---|" + "---:|" * len(keys)
    lines = [head, sep]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * m[k]:+.1f}" if k.startswith("delta") else f"{100 * m[k]:.1f}"
                                               for k in keys) + " |")
    return "\n".join(lines)
