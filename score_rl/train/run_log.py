"""Per-step logging: a JSONL file, TensorBoard scalars and a progress bar, all in the run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional


class RunLogger:
    def __init__(self, run_dir: Path, total_steps: int, initial_step: int = 0, progress_bar: bool = True):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self.jsonl = open(run_dir / "metrics.jsonl", "a")
        self.tb = SummaryWriter(str(run_dir / "tensorboard"))
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
