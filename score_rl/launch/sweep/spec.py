"""A sweep's plan: the sweep file (variants × grid × seeds of one base config), its runs and their run directories.

Every run is an ordinary ``score-rl train`` with a deterministic run directory
``OUT/runs/<variant>[__<axis>=<value>...]__seed<seed>``; ``OUT/sweep.json`` holds the plan, written before anything
runs, so the report needs only the directory. This module imports nothing else of the sweep.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from score_rl import rundir
from score_rl.errors import ConfigError

COMPLETE = rundir.COMPLETE  # written by the trainer as the last thing a run does
FAILED = rundir.FAILED
PLAN = "sweep.json"


@dataclass
class Variant:
    method: str = "score"  # a preset of score_rl.algos.methods.PRESETS
    overrides: List[str] = field(default_factory=list)


@dataclass
class SlurmBackend:
    partition: Optional[str] = None
    account: Optional[str] = None
    time: str = "04:00:00"
    cpus_per_task: int = 2
    gpus_per_task: int = 0
    mem: str = "16G"
    throttle: int = 0  # at most this many array tasks at once (%N); 0 = no limit
    setup: List[str] = field(default_factory=list)  # shell lines before each run, e.g. "source .venv/bin/activate"
    python: str = "python"
    sbatch_args: List[str] = field(default_factory=list)  # extra "#SBATCH" arguments, e.g. "--qos=high"


@dataclass
class RayBackend:
    address: Optional[str] = None  # the dashboard (Jobs API) address; null: $RAY_ADDRESS, else http://127.0.0.1:8265
    python: Optional[str] = None  # interpreter on the cluster; null: this one (sys.executable)
    num_cpus: float = 1.0  # CPUs reserved for each run's entrypoint
    num_gpus: float = 0.0
    runtime_env: Dict[str, Any] = field(default_factory=dict)
    poll_s: float = 2.0


@dataclass
class Backend:
    name: str = "local"  # local, ray or slurm
    parallel: int = 1  # runs at once (local, ray)
    slurm: SlurmBackend = field(default_factory=SlurmBackend)
    ray: RayBackend = field(default_factory=RayBackend)


@dataclass
class SweepSpec:
    name: str = "sweep"
    base: str = "???"  # the base config, relative to the sweep file
    out_dir: Optional[str] = None  # null: runs/sweeps/<name> (relative to the working directory)
    seeds: List[int] = field(default_factory=lambda: [0])
    overrides: List[str] = field(default_factory=list)  # applied to every run
    variants: Dict[str, Variant] = field(default_factory=dict)
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    eval: List[str] = field(default_factory=list)  # overrides of each run's end-of-run evaluation
    reference: Optional[str] = None  # the variant every other is compared with (paired over seeds)
    checkpoint_every: int = 10
    backend: Backend = field(default_factory=Backend)


@dataclass
class Run:
    run_id: str
    variant: str
    seed: int
    grid: Dict[str, Any]
    run_dir: str
    overrides: List[str]  # everything after the base config: preset, sweep, variant, grid, eval, seed, run dir

    @property
    def group(self) -> str:
        """The run's variant and grid point: what the report averages over seeds."""
        return self.run_id.rsplit("__seed", 1)[0]

    def command(self, base: str, python: str = sys.executable) -> List[str]:
        return [python, "-m", "score_rl.cli", "train", base, *self.overrides]


@dataclass
class Sweep:
    spec: SweepSpec
    base: str  # absolute path of the base config
    out_dir: Path
    runs: List[Run]

    def pending(self) -> List[Run]:
        return [r for r in self.runs if not is_complete(r)]


def is_complete(run: Run) -> bool:
    """Whether the run finished (score_rl.rundir.is_complete)."""
    return rundir.is_complete(run.run_dir)


# --- the sweep file --------------------------------------------------------------------------------------------------
_EVAL_KEYS = re.compile(r"^(eval\.temperature|trainer\.eval_problems)=")  # what the end-of-run evaluation reads
_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")
# keys the sweep sets on every run (a sweep file setting them would be silently overridden, so it is refused)
_FIXED = ("trainer.seed", "trainer.run_dir", "trainer.checkpoint_every", "trainer.progress_bar",
          "trainer.eval_before_after")


def safe_name(text: str) -> str:
    """TEXT with every character outside letters, digits and _.+- replaced by _ (a file or job name)."""
    return _SAFE.sub("_", text)


def load_sweep(path: str | Path, backend: Optional[str] = None, parallel: Optional[int] = None) -> Sweep:
    """Parse, validate and plan a sweep file. Every run's config is loaded (and so checked) before anything runs."""
    from score_rl.algos.methods import preset_overrides
    from score_rl.config import load_config, validate_training

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"sweep file {path} must hold a mapping at the top level")
        spec: SweepSpec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SweepSpec), loaded))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"sweep file {path}: key '{key}': {str(err).splitlines()[0]}") from None
    if backend:
        spec.backend.name = backend
    if parallel is not None:
        spec.backend.parallel = parallel
    if spec.backend.name not in ("local", "ray", "slurm"):
        raise ConfigError(f"sweep key 'backend.name' must be local, ray or slurm, got '{spec.backend.name}'")
    if spec.base == "???":
        raise ConfigError(f"sweep file {path}: key 'base' (the base config) is required")
    base = (path.parent / spec.base).resolve()
    if not base.is_file():
        raise ConfigError(f"sweep key 'base': config file not found: {base}")
    if not spec.variants:
        raise ConfigError(f"sweep file {path}: key 'variants' names no variant")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"sweep key 'seeds' must list distinct seeds, got {list(spec.seeds)}")
    if spec.reference is not None and spec.reference not in spec.variants:
        raise ConfigError(f"sweep key 'reference': '{spec.reference}' is not a variant ({', '.join(spec.variants)})")
    if spec.backend.parallel < 1:
        raise ConfigError("sweep key 'backend.parallel' must be >= 1")
    for item in spec.eval:
        if not _EVAL_KEYS.match(item):
            raise ConfigError(f"sweep key 'eval': '{item}' is not an override of the end-of-run evaluation "
                              "(eval.temperature, trainer.eval_problems)")
    for name in spec.variants:
        if _SAFE.search(name) or "__" in name:
            raise ConfigError(f"sweep variant name '{name}' must use letters, digits and _.+- only (no '__')")
    out_dir = Path(spec.out_dir or f"runs/sweeps/{spec.name}").resolve()
    axes = list(spec.grid.items())
    for key, values in axes:
        if not values:
            raise ConfigError(f"sweep key 'grid.{key}' lists no value")
    runs, seen = [], {}
    for name, variant in spec.variants.items():
        try:
            preset = preset_overrides(variant.method)
        except ConfigError as err:
            raise ConfigError(f"sweep variant '{name}': {err}") from None
        keys = lambda items: {o.split("=", 1)[0] for o in items}  # noqa: E731
        clash = sorted(keys(preset) & set(spec.grid))
        if clash:
            raise ConfigError(f"sweep key 'grid.{clash[0]}' would undo what variant '{name}' (method "
                              f"'{variant.method}') sets; move it into the variants' overrides")
        clash = sorted(keys(variant.overrides) & set(spec.grid))
        if clash:
            raise ConfigError(f"sweep variant '{name}' sets '{clash[0]}', which the grid also sets: one would be lost")
        for where, items in (("grid", set(spec.grid)), ("overrides", keys(spec.overrides)),
                             (f"variants.{name}.overrides", keys(variant.overrides))):
            clash = sorted(items & (keys(spec.eval) | set(_FIXED)))
            if clash:
                raise ConfigError(f"sweep key '{where}' sets '{clash[0]}', which the sweep sets itself "
                                  f"({'the eval list' if clash[0] in keys(spec.eval) else 'per run'})")
        for point in itertools.product(*[[(k, v) for v in vs] for k, vs in axes]):
            grid = dict(point)
            label = "".join(f"__{k}={_label_value(v)}" for k, v in grid.items())
            point_overrides = [f"{k}={'null' if v is None else v}" for k, v in grid.items()]
            for seed in spec.seeds:
                run_id = f"{name}{label}__seed{seed}"
                if run_id in seen:
                    raise ConfigError(f"sweep runs {seen[run_id]} and {grid} would share the run directory {run_id}")
                seen[run_id] = grid
                run_dir = out_dir / "runs" / run_id
                # the sweep's overrides are the common ground; the preset defines the variant; the variant's own
                # overrides and the grid point refine it (a grid key the preset sets is refused above)
                overrides = [*spec.overrides, *preset, *variant.overrides, *point_overrides, *spec.eval,
                             f"trainer.seed={seed}", f"trainer.run_dir={run_dir}",
                             f"trainer.checkpoint_every={spec.checkpoint_every}", "trainer.progress_bar=false",
                             "trainer.eval_before_after=true"]
                try:
                    cfg = load_config(base, overrides)
                    validate_training(cfg)
                except ConfigError as err:
                    raise ConfigError(f"sweep run '{run_id}': {err}") from None
                _check_run_dir_config(run_id, run_dir, cfg)
                runs.append(Run(run_id, name, seed, grid, str(run_dir), overrides))
    return Sweep(spec, str(base), out_dir, runs)


def _label_value(value: Any) -> str:
    text = str(value)
    safe = safe_name(text)
    if safe != text:  # keep distinct values distinct after sanitising
        import hashlib

        safe += "-" + hashlib.sha256(text.encode()).hexdigest()[:6]
    return safe


def _check_run_dir_config(run_id: str, run_dir: Path, cfg) -> None:
    """A run directory that exists was started with exactly this config, or the sweep refuses to touch it: a finished
    run would be reported under settings it never ran with, an interrupted one resumed from another config's
    checkpoint. (Stricter than a resume, which may change run length or evaluation: a sweep reports its runs under
    their config.)"""
    from score_rl.config import run_config_changes

    changes = run_config_changes(cfg, run_dir / rundir.CONFIG)
    if changes:
        raise ConfigError(f"sweep run '{run_id}': {run_dir} was started with a different config (first difference: "
                          f"'{changes[0][0]}'); remove that directory or set another out_dir")


def write_plan(sweep: Sweep) -> Path:
    sweep.out_dir.mkdir(parents=True, exist_ok=True)
    plan = {"name": sweep.spec.name, "base": sweep.base, "reference": sweep.spec.reference,
            "seeds": list(sweep.spec.seeds), "runs": [{**asdict(r), "group": r.group} for r in sweep.runs]}
    out = sweep.out_dir / PLAN
    out.write_text(json.dumps(plan, indent=2))
    return out


def read_plan(out_dir: str | Path) -> dict:
    path = Path(out_dir) / PLAN
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {out_dir} a sweep directory (score-rl sweep writes it)?")
    return json.loads(path.read_text())
