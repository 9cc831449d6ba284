"""Running a sweep: plan it, run what is unfinished on its backend, report it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

from score_rl.errors import ConfigError
from score_rl.launch.sweep.backends import run_local, run_ray, run_slurm
from score_rl.launch.sweep.report import write_report
from score_rl.launch.sweep.spec import Sweep, load_sweep, write_plan


def run_sweep(path: str | Path, backend: Optional[str] = None, parallel: Optional[int] = None,
              dry_run: bool = False, log: Callable = print) -> Path:
    """Plan, run what is unfinished on the backend, and (unless submitted to SLURM) write the report."""
    sweep = load_sweep(path, backend, parallel)
    if dry_run and sweep.spec.backend.name != "slurm":
        raise ConfigError("--dry-run applies to --backend slurm only")
    write_plan(sweep)
    pending = sweep.pending()
    log(f"sweep '{sweep.spec.name}': {len(sweep.runs)} runs, {len(sweep.runs) - len(pending)} finished, "
        f"{len(pending)} to run on backend '{sweep.spec.backend.name}'; directory {sweep.out_dir}")
    name = sweep.spec.backend.name
    if name == "slurm":
        run_slurm(sweep, dry_run, log)
        return sweep.out_dir
    if pending:
        prepare_base_models(sweep, log)
        results = (run_local if name == "local" else run_ray)(sweep, log)
        failed = [k for k, ok in results.items() if not ok]
        if failed:
            log(f"{len(failed)} run(s) failed: {', '.join(failed)} (see failed.json in their directories); "
                "re-running the sweep retries them")
    report = write_report(sweep.out_dir, log=log)
    log(report.read_text())
    return sweep.out_dir


def prepare_base_models(sweep: Sweep, log: Callable) -> None:
    """Build (once) the locally built base models the runs need, before runs start side by side."""
    from score_rl.config import load_config
    from score_rl.train.base_model import resolve_model_path

    seen = set()
    for run in sweep.pending():
        cfg = load_config(sweep.base, run.overrides)
        if cfg.model.path is None:
            key = json.dumps([asdict(cfg.model.tiny), cfg.env.name, dict(cfg.env.params), cfg.env.seed,
                              asdict(cfg.prompt), cfg.model.cache_dir], sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                resolve_model_path(cfg, log=log)
