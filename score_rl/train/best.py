"""The best policy by ``trainer.best_metric`` (the paper keeps the checkpoint of the highest training reward).

``run_dir/best/`` holds the policy of the best step so far (a Hugging Face model directory) and ``best.json`` its
value and step. Each checkpoint carries hard links to the best policy as of its step, so a resumed run restores the
best it had then (a best found after the checkpoint belongs to the steps that are redone).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, Optional

from score_rl import rundir
from score_rl.utils import dumps_json


class BestPolicy:
    """``update(step, metrics)`` after every step; ``save_policy(directory, info)`` writes the current policy."""

    def __init__(self, run_dir: Path, key: Optional[str], mode: str, save_policy: Callable[[Path, Dict], None],
                 log: Callable[[str], None] = print):
        self.dir = Path(run_dir) / rundir.BEST
        self.key, self.mode, self.save_policy, self.log = key, mode, save_policy, log
        self.value: Optional[Dict] = None  # {metric, mode, value, step}
        self._seen, self._misses = False, 0

    def update(self, step: int, metrics: Dict[str, float]) -> None:
        """Save the policy as the best if ``metrics[key]`` beats the best so far (absent / NaN / ±inf never do)."""
        key, mode = self.key, self.mode
        if not key:
            return
        if self.value is not None and (self.value.get("metric"), self.value.get("mode")) != (key, mode):
            self.value = None  # recorded under another best_metric / best_mode (allow_config_change)
        self._seen |= key in metrics
        self._misses += key not in metrics and not metrics.get("update_skipped")  # no update: no learner statistics
        # said once, after 3 steps without it (a step may lack learner statistics, e.g. STaR with nothing kept)
        if not key.startswith("eval/") and not self._seen and self._misses == 3:
            self.log(f"warning: config key 'trainer.best_metric' is {key!r}, which this run does not log; no best "
                     f"policy is kept. Logged: {', '.join(sorted(k for k in metrics if not k.startswith('time/')))}")
        if key not in metrics or metrics[key] is None or not math.isfinite(metrics[key]):
            return
        value = float(metrics[key])
        if self.value is not None and not (value > self.value["value"] if mode == "max"
                                           else value < self.value["value"]):
            return
        self.value = {"metric": key, "mode": mode, "value": value, "step": step}
        self.save_policy(self.dir, {"steps": step, "best": self.value})
        (self.dir / "best.json").write_text(dumps_json(self.value, indent=2))

    def link_into(self, checkpoint_dir: Path) -> None:
        """The best policy as of this checkpoint, as hard links inside it."""
        if self.value is not None and self.dir.is_dir():
            link_tree(self.dir, Path(checkpoint_dir) / rundir.BEST)

    def restore(self, ckpt: Path, state: Dict) -> None:
        """The best as of the resumed checkpoint: its value from the trainer state, its weights from the checkpoint's
        hard-linked copy."""
        if "best" not in state:  # a checkpoint written before the best was recorded in it: keep an earlier best
            saved = self.dir / "best.json"
            earlier = json.loads(saved.read_text()) if saved.is_file() else None
            self.value = earlier if earlier and earlier.get("step", 0) <= state["step"] else None
            if self.value is None and self.dir.is_dir():
                shutil.rmtree(self.dir)
            return
        self.value = state["best"]
        if self.value is not None and (ckpt / rundir.BEST).is_dir():
            tmp = self.dir.with_name(f".{rundir.BEST}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            link_tree(ckpt / rundir.BEST, tmp)
            shutil.rmtree(self.dir, ignore_errors=True)
            tmp.replace(self.dir)
        elif self.value is None and self.dir.is_dir():
            shutil.rmtree(self.dir)  # found only after the checkpoint


def link_tree(src: Path, dst: Path) -> None:
    """A copy of the directory ``src`` at ``dst`` made of hard links (no bytes copied; ``src``'s files are later
    replaced, never rewritten in place), or of real copies where hard links are not possible."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)
