"""Per-step logging: a JSONL file, TensorBoard scalars and a progress bar, all in the run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional


def _cut_back(path: Path, step: int) -> None:
    """Keep the rows of steps before ``step`` (the resumed checkpoint's): the steps a killed process logged after its
    last checkpoint are redone and logged again, so each step stays in metrics.jsonl exactly once, in order. A torn
    last line is dropped too. Atomic: the file is replaced, never left half-written."""
    import os

    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] < step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


class RunLogger:
    def __init__(self, run_dir: Path, total_steps: int, initial_step: int = 0, progress_bar: bool = True):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        path = run_dir / "metrics.jsonl"
        if path.is_file():  # steps an earlier process logged from initial_step on are redone (all of them from 0)
            _cut_back(path, initial_step)
        self.jsonl = open(path, "a")
        # purge_step: TensorBoard drops what an earlier process logged from the resumed step on
        self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=initial_step)
        self.bar = tqdm(total=total_steps, initial=initial_step, desc="score-rl", disable=not progress_bar,
                        dynamic_ncols=True)

    def log(self, step: int, metrics: Dict[str, float]) -> None:
        record = {"step": step, **{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                   for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                self.tb.add_scalar(key.replace(".", "/"), value, step)
        self.bar.update(1)
        self.bar.set_postfix_str(
            f"stage {metrics.get('stage', '?')} t1 {metrics.get('acc_t1', 0):.2f} t2 {metrics.get('acc_t2', 0):.2f} "
            f"Δ {metrics.get('delta', 0):+.2f} i→c {metrics.get('delta_i2c', 0):.2f} "
            f"c→i {metrics.get('delta_c2i', 0):.2f} kl1 {metrics.get('kl_turn1', 0):.3f}"
        )

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self, summary: Optional[Dict] = None) -> None:
        self.bar.close()
        self.tb.flush()
        self.tb.close()
        self.jsonl.close()
