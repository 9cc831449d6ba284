"""Per-step logging: a JSONL file, TensorBoard scalars (and W&B with logging.wandb), all in the run directory; a
progress bar on a terminal, or a one-line progress report every ``progress_interval_s`` seconds where the bar is off
(a SLURM job's output file, a CI log)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional

from score_rl.utils import dumps_json


def _cut_back(path: Path, step: int, warn=print) -> None:
    """Keep the rows of steps before ``step`` (the resumed checkpoint's): the steps a killed process logged after its
    last checkpoint are redone and logged again, so each step stays in metrics.jsonl exactly once, in order. A line that
    is not a JSON row (torn by a kill, invalid UTF-8, damaged) is dropped, with one warning unless it is a torn last
    line. Atomic: the file is replaced, never left half-written."""
    import os

    kept, unreadable = [], []
    lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(lines, 1):
        try:
            row = json.loads(raw.decode("utf-8"))
        except ValueError:  # (UnicodeDecodeError and JSONDecodeError are both ValueErrors)
            if raw.strip() and number < len(lines):  # the last piece has no newline: a torn line, said nowhere
                unreadable.append(number)
            continue
        if not (isinstance(row, dict) and isinstance(row.get("step"), int)):  # JSON, but not a step's row
            unreadable.append(number)
        elif row["step"] < step:
            kept.append(raw.decode("utf-8"))
    if unreadable:
        warn(f"warning: {path}: {len(unreadable)} unreadable line(s) dropped (invalid UTF-8 or JSON, or not a step's "
             f"row; line {unreadable[0]}{' and more' if len(unreadable) > 1 else ''})")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


class RunLogger:
    def __init__(self, run_dir: Path, total_steps: int, initial_step: int = 0, progress_bar: bool = True,
                 progress_interval_s: float = 60.0, wandb_cfg=None, config: Optional[Dict] = None, print_fn=print):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        path = run_dir / "metrics.jsonl"
        if path.is_file():  # steps an earlier process logged from initial_step on are redone (all of them from 0)
            _cut_back(path, initial_step, print_fn)
        self.jsonl = open(path, "a")
        # purge_step: TensorBoard drops what an earlier process logged from the resumed step on
        self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=initial_step)
        self.bar = tqdm(total=total_steps, initial=initial_step, desc="score-rl", disable=not progress_bar,
                        dynamic_ncols=True)
        self.progress = None if progress_bar else ProgressLines(total_steps, initial_step, progress_interval_s,
                                                                print_fn)
        self.wandb = _start_wandb(run_dir, wandb_cfg, config) if wandb_cfg is not None and wandb_cfg.wandb else None

    def log(self, step: int, metrics: Dict[str, float]) -> None:
        # strict JSON: an undefined value (NaN, e.g. the break rate of a batch without a right first attempt) or an
        # infinite one is null, which every JSON parser reads
        self.jsonl.write(dumps_json({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        scalars = {k: v for k, v in metrics.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        for key, value in scalars.items():
            self.tb.add_scalar(key.replace(".", "/"), value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        self.bar.update(1)
        self.bar.set_postfix_str(summary(metrics))
        if self.progress is not None:
            self.progress.step(step, metrics)

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self, summary: Optional[Dict] = None) -> None:
        self.bar.close()
        self.tb.flush()
        self.tb.close()
        self.jsonl.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def summary(metrics: Dict[str, float]) -> str:
    """The few numbers worth watching, for the progress bar and the progress lines."""
    text = (f"stage {metrics.get('stage', '?')} t1 {metrics.get('acc_t1', 0):.2f} t2 {metrics.get('acc_t2', 0):.2f} "
            f"Δ {metrics.get('delta', 0):+.2f} i→c {metrics.get('delta_i2c', 0):.2f} "
            f"c→i {metrics.get('delta_c2i', 0):.2f} kl1 {metrics.get('kl_turn1', 0):.3f}")
    if "eval/acc_t2" in metrics:
        text += f" | eval t1 {metrics.get('eval/acc_t1', 0):.2f} t2 {metrics['eval/acc_t2']:.2f}"
    return text


class ProgressLines:
    """'step 12/40 (30%) | 2.1 s/step | ETA 59 s | <detail>', at most every ``interval_s`` seconds (and after the first
    and the last step): progress where a progress bar is off or cannot draw (a SLURM job's output file, a CI log)."""

    def __init__(self, total: int, initial: int, interval_s: float, print_fn=print, label: str = "step"):
        import time

        self.total, self.initial, self.interval_s, self.print, self.label = total, initial, interval_s, print_fn, label
        self.start = self.last = time.monotonic()

    def step(self, step: int, metrics: Dict[str, float]) -> None:
        self.update(step + 1, summary(metrics))

    def update(self, done: int, detail: str = "") -> None:
        import time

        now = time.monotonic()
        if not (done == self.initial + 1 or done == self.total or now - self.last >= self.interval_s):
            return
        self.last = now
        per_step = (now - self.start) / max(1, done - self.initial)
        eta = per_step * (self.total - done)
        self.print(f"{self.label} {done}/{self.total} ({100 * done / max(1, self.total):.0f}%) | {per_step:.1f} "
                   f"s/{self.label.split()[-1]} | ETA {_duration(eta)}" + (f" | {detail}" if detail else ""))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _start_wandb(run_dir: Path, wandb_cfg, config: Optional[Dict]):
    """A W&B run writing under run_dir/wandb; resumed (same id) when the run directory is resumed."""
    import uuid

    try:
        import wandb
    except ImportError:
        from score_rl.errors import ConfigError

        raise ConfigError("config key 'logging.wandb' is true but wandb is not installed: pip install -e '.[wandb]'") \
            from None
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    return wandb.init(project=wandb_cfg.wandb_project, entity=wandb_cfg.wandb_entity, mode=wandb_cfg.wandb_mode,
                      dir=str(run_dir), id=run_id, resume="allow", name=run_dir.name, config=config,
                      tags=list(wandb_cfg.wandb_tags) or None)
