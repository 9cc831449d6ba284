"""``score-rl sweep SWEEP.yaml``: variants × grid × seeds of one base config, run locally, on Ray or on SLURM.

A sweep file names a base config, variants (a named method — score_rl/algos/methods.py — plus a dotlist diff),
optional grid axes (their cartesian product applies to every variant), seeds, overrides of the end-of-run
evaluation, and a backend. Every run is an ordinary ``score-rl train`` with a deterministic run directory
``OUT/runs/<variant>[__<axis>=<value>...]__seed<seed>``, checkpointed every ``checkpoint_every`` steps:

* a run is finished when its trainer wrote ``run_complete.json`` (after the final policy and its evaluation; see
  score_rl.rundir); re-running a sweep skips finished runs and re-launches the others, which resume from their latest
  checkpoint;
* one failed run is reported (``failed.json`` and its log) and does not stop the others.

The plan (``OUT/sweep.json``) is written before anything runs, so ``score-rl sweep --report OUT`` needs only the
directory. Backends: ``local`` (subprocesses, N at a time), ``ray`` (one Ray job per run through the Jobs API, N at a
time), ``slurm`` (one job array, one task per unfinished run, each running the body of slurm/score_rl.sbatch;
``--dry-run`` writes and prints the script only).

Modules, each importing only those above it: ``spec`` (the sweep file, the plan, its runs), ``report`` (statistics,
tables, plots), ``backends`` (local, Ray, SLURM), ``run`` (``run_sweep``).
"""

from score_rl.launch.sweep.backends import run_dir_in_use, run_local, run_ray, run_slurm, slurm_script
from score_rl.launch.sweep.report import final_metrics, mean_ci, paired_difference, write_report
from score_rl.launch.sweep.run import prepare_base_models, run_sweep
from score_rl.launch.sweep.spec import (COMPLETE, FAILED, PLAN, Backend, RayBackend, Run, SlurmBackend, Sweep,
                                        SweepSpec, Variant, is_complete, load_sweep, read_plan, safe_name,
                                        write_plan)

__all__ = ["COMPLETE", "FAILED", "PLAN", "Backend", "RayBackend", "Run", "SlurmBackend", "Sweep", "SweepSpec",
           "Variant", "final_metrics", "is_complete", "load_sweep", "mean_ci", "paired_difference",
           "prepare_base_models", "read_plan", "run_dir_in_use", "run_local", "run_ray", "run_slurm", "run_sweep",
           "safe_name", "slurm_script", "write_plan", "write_report"]
