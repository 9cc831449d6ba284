"""Atomic checkpoints: a step's directory appears complete or not at all; ``latest`` is replaced atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, Optional


def save_checkpoint(root: Path, step: int, trainer_state: Dict, save_learner: Callable[[str, str], None]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".step_{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_learner(str(tmp), "learner")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / ".latest.tmp"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, root / "latest")
    return final


def latest_checkpoint(root: Path) -> Optional[Path]:
    marker = root / "latest"
    if not marker.is_file():
        return None
    path = root / marker.read_text().strip()
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"checkpoint marker {marker} points at an incomplete checkpoint {path}")
    return path
