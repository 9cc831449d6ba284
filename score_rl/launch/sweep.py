"""``score-rl sweep SWEEP.yaml``: variants × grid × seeds of one base config, run locally, on Ray or on SLURM.

A sweep file names a base config, variants (a named method — score_rl/algos/methods.py — plus a dotlist diff),
optional grid axes (their cartesian product applies to every variant), seeds, overrides of the end-of-run
evaluation, and a backend. Every run is an ordinary ``score-rl train`` with a deterministic run directory
``OUT/runs/<variant>[__<axis>=<value>...]__seed<seed>``, checkpointed every ``checkpoint_every`` steps:

* a run is finished when its trainer wrote ``run_complete.json`` (after the final policy and its evaluation);
  re-running a sweep skips finished runs and re-launches the others, which resume from their latest checkpoint;
* one failed run is reported (``failed.json`` and its log) and does not stop the others.

The plan (``OUT/sweep.json``) is written before anything runs, so ``score-rl sweep --report OUT`` needs only the
directory. Backends: ``local`` (subprocesses, N at a time), ``ray`` (one Ray job per run through the Jobs API, N at a
time), ``slurm`` (one job array, one task per unfinished run; ``--dry-run`` writes and prints the script only).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from score_rl.config import ConfigError

COMPLETE = "run_complete.json"  # written by the trainer as the last thing a run does
FAILED = "failed.json"
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
    return (Path(run.run_dir) / COMPLETE).is_file()


# --- the sweep file --------------------------------------------------------------------------------------------------
_EVAL_KEYS = re.compile(r"^(eval\.temperature|trainer\.eval_problems)=")  # what the end-of-run evaluation reads
_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")
# keys the sweep sets on every run (a sweep file setting them would be silently overridden, so it is refused)
_FIXED = ("trainer.seed", "trainer.run_dir", "trainer.checkpoint_every", "trainer.progress_bar",
          "trainer.eval_before_after")


def load_sweep(path: str | Path, backend: Optional[str] = None, parallel: Optional[int] = None) -> Sweep:
    """Parse, validate and plan a sweep file. Every run's config is loaded (and so checked) before anything runs."""
    from score_rl.algos.methods import preset_overrides
    from score_rl.config import load_config

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
                except ConfigError as err:
                    raise ConfigError(f"sweep run '{run_id}': {err}") from None
                _check_run_dir_config(run_id, run_dir, cfg)
                runs.append(Run(run_id, name, seed, grid, str(run_dir), overrides))
    return Sweep(spec, str(base), out_dir, runs)


def _label_value(value: Any) -> str:
    text = str(value)
    safe = _SAFE.sub("_", text)
    if safe != text:  # keep distinct values distinct after sanitising
        import hashlib

        safe += "-" + hashlib.sha256(text.encode()).hexdigest()[:6]
    return safe


def _check_run_dir_config(run_id: str, run_dir: Path, cfg) -> None:
    """A run directory that exists was started with exactly this config, or the sweep refuses to touch it: a finished
    run would be reported under settings it never ran with, an interrupted one resumed from another config's
    checkpoint."""
    from score_rl.config import to_yaml

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    old, new = OmegaConf.to_container(OmegaConf.load(saved)), OmegaConf.to_container(OmegaConf.create(to_yaml(cfg)))
    for c in (old, new):  # where it runs (the backend adds ray.address=auto for Ray jobs) is not what it is
        c.pop("ray", None)
    if old != new:
        key = next(iter(_diff(old, new)), "?")
        raise ConfigError(f"sweep run '{run_id}': {run_dir} was started with a different config (first difference: "
                          f"'{key}'); remove that directory or set another out_dir")


def _diff(a: Any, b: Any, prefix: str = ""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")


def write_plan(sweep: Sweep) -> Path:
    sweep.out_dir.mkdir(parents=True, exist_ok=True)
    plan = {"name": sweep.spec.name, "base": sweep.base, "reference": sweep.spec.reference,
            "seeds": list(sweep.spec.seeds), "runs": [asdict(r) for r in sweep.runs]}
    out = sweep.out_dir / PLAN
    out.write_text(json.dumps(plan, indent=2))
    return out


def read_plan(out_dir: str | Path) -> dict:
    path = Path(out_dir) / PLAN
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {out_dir} a sweep directory (score-rl sweep writes it)?")
    return json.loads(path.read_text())


# --- the backends ----------------------------------------------------------------------------------------------------
def _record_failure(run: Run, returncode: Any, log_path: Optional[Path]) -> None:
    tail = ""
    if log_path and log_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    (Path(run.run_dir) / FAILED).write_text(json.dumps({"returncode": returncode, "log": str(log_path),
                                                        "log_tail": tail}, indent=2))


def _finished(run: Run, returncode: Any, log_path: Optional[Path], seconds: float, log: Callable) -> bool:
    if returncode == 0 and is_complete(run):
        (Path(run.run_dir) / FAILED).unlink(missing_ok=True)
        log(f"done   {run.run_id} ({seconds:.0f} s)")
        return True
    _record_failure(run, returncode, log_path)
    log(f"FAILED {run.run_id} (exit {returncode}); log: {log_path}")
    return False


def run_local(sweep: Sweep, log: Callable = print) -> Dict[str, bool]:
    """Every unfinished run as a ``score-rl train`` subprocess, ``backend.parallel`` at a time.

    Ctrl-C, SIGTERM or SIGHUP (unless ignored, as under nohup) only *requests* a stop: the loop notices it between
    two polls, so no trainer is ever started without being recorded; then the running trainers (each in its own
    session: only the sweep signals them) are interrupted and KeyboardInterrupt is raised. Re-running the sweep resumes
    them. Any other exit of the sweep stops them too."""
    pending, active, results = sweep.pending(), {}, {}
    parallel = sweep.spec.backend.parallel
    stop: List[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.append(signum))
                for sig in _STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        while (pending or active) and not stop:
            while pending and len(active) < parallel and not stop:
                run = pending.pop(0)
                if run_dir_in_use(Path(run.run_dir)):
                    log(f"skip   {run.run_id}: another process is training it (its run directory is locked)")
                    continue
                Path(run.run_dir).mkdir(parents=True, exist_ok=True)
                log_path = Path(run.run_dir) / "train.log"
                resumed = (Path(run.run_dir) / "checkpoints").is_dir()
                handle = open(log_path, "a")
                proc = subprocess.Popen(run.command(sweep.base), stdout=handle, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                active[run.run_id] = (run, proc, handle, log_path, time.time())
                log(f"start  {run.run_id}{' (resuming)' if resumed else ''}")
            for run_id, (run, proc, handle, log_path, started) in list(active.items()):
                if proc.poll() is not None:
                    handle.close()
                    del active[run_id]
                    results[run_id] = _finished(run, proc.returncode, log_path, time.time() - started, log)
            time.sleep(0.2)
        if stop:
            raise KeyboardInterrupt
    finally:
        if active:
            _stop_local(active.values(), log)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return results


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_local(active, log: Callable) -> None:
    """SIGINT to every running trainer's process group (each stops at once; its re-run resumes from its latest
    checkpoint), SIGKILL after 60 s; further Ctrl-C / SIGTERM / SIGHUP are ignored meanwhile so the cleanup itself
    cannot be interrupted."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
    try:
        for _, proc, _, _, _ in active:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGINT)
        deadline = time.time() + 60
        for run, proc, handle, _, _ in active:
            try:
                proc.wait(timeout=max(deadline - time.time(), 1))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            handle.close()
            log(f"stopped {run.run_id} (re-run the sweep to resume it)")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the trainer and whatever it started (sandbox children, a local Ray)
    except ProcessLookupError:
        pass


def run_dir_in_use(run_dir: Path) -> bool:
    """Whether a trainer holds the run directory's lock (score_rl.train.trainer.RunDirLock)."""
    from score_rl.train.trainer import RunDirLock

    return RunDirLock.held(run_dir)


def run_ray(sweep: Sweep, log: Callable = print) -> Dict[str, bool]:
    """Every unfinished run as a Ray job (Jobs API) on a running cluster, ``backend.parallel`` at a time.

    The run directories must be on storage the cluster's nodes share (they are absolute paths)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    rb = sweep.spec.backend.ray
    _use_ray_token_if_present()
    client = JobSubmissionClient(rb.address)
    python = rb.python or sys.executable
    env = dict(rb.runtime_env)
    env["env_vars"] = {"TOKENIZERS_PARALLELISM": "false", **env.get("env_vars", {})}
    pending, active, results = sweep.pending(), {}, {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        while pending or active:
            while pending and len(active) < sweep.spec.backend.parallel:
                run = pending.pop(0)
                if run_dir_in_use(Path(run.run_dir)):
                    log(f"skip   {run.run_id}: another process is training it (its run directory is locked)")
                    continue
                Path(run.run_dir).mkdir(parents=True, exist_ok=True)
                # a run that starts Ray itself joins this cluster instead of starting its own
                command = shlex.join(run.command(sweep.base, python) + ["ray.address=auto"])
                if "working_dir" not in env:  # relative paths in the overrides mean what they mean here
                    command = f"cd {shlex.quote(str(Path.cwd()))} && {command}"
                job_id = client.submit_job(
                    entrypoint=command, runtime_env=env, submission_id=f"{sweep.spec.name}-{run.run_id}-"
                    f"{stamp}", entrypoint_num_cpus=rb.num_cpus, entrypoint_num_gpus=rb.num_gpus or None,
                    metadata={"sweep": sweep.spec.name, "run": run.run_id})
                active[run.run_id] = (run, job_id, time.time())
                log(f"submit {run.run_id} as Ray job {job_id}")
            for run_id, (run, job_id, started) in list(active.items()):
                status = client.get_job_status(job_id)
                if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                    log_path = Path(run.run_dir) / "train.log"
                    with open(log_path, "a") as f:  # appended, as the local backend does: a resumed run keeps both
                        f.write(client.get_job_logs(job_id))
                    del active[run_id]
                    results[run_id] = _finished(run, 0 if status == JobStatus.SUCCEEDED else str(status), log_path,
                                                time.time() - started, log)
            time.sleep(rb.poll_s)
    except KeyboardInterrupt:
        for run, job_id, _ in active.values():
            client.stop_job(job_id)
            log(f"stopped Ray job {job_id} ({run.run_id}; re-run the sweep to resume it)")
        raise
    return results


def _use_ray_token_if_present() -> None:
    """Ray >= 2.5x clusters require a token by default (``ray start`` keeps it in ~/.ray/auth_token). ``ray.init``
    turns token auth on in a process when a token exists and RAY_AUTH_MODE is unset; the Jobs client does not, so we
    do the same here (Ray's own function; an explicit RAY_AUTH_MODE is respected)."""
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:  # an older Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


_DIRECTIVE = re.compile(r"^[\w.:,@%+=/-]+$")


def slurm_script(sweep: Sweep, runs: List[Run]) -> str:
    """A job array with one task per run; each task's case names its run."""
    sb, spec = sweep.spec.backend.slurm, sweep.spec
    logs = sweep.out_dir / "slurm"
    for key in ("partition", "account", "time", "mem"):
        value = getattr(sb, key)
        if value is not None and not _DIRECTIVE.match(str(value)):
            raise ConfigError(f"sweep key 'backend.slurm.{key}': {value!r} is not a plain SLURM value")
    for arg in sb.sbatch_args:
        if not _DIRECTIVE.match(arg):
            raise ConfigError(f"sweep key 'backend.slurm.sbatch_args': {arg!r} must be one --option=value without spaces")
    if not _DIRECTIVE.match(str(logs)):
        raise ConfigError(f"sweep out_dir {sweep.out_dir} must not contain spaces or shell characters for SLURM")
    python = shlex.split(sb.python)  # e.g. "python", "uv run python", "srun python"
    array = f"0-{len(runs) - 1}" + (f"%{sb.throttle}" if sb.throttle else "")
    lines = ["#!/bin/bash", f"#SBATCH --job-name={_SAFE.sub('_', spec.name)}", f"#SBATCH --array={array}",
             f"#SBATCH --cpus-per-task={sb.cpus_per_task}", f"#SBATCH --mem={sb.mem}", f"#SBATCH --time={sb.time}",
             f"#SBATCH --output={logs}/%x_%A_%a.out"]
    if sb.partition:
        lines.append(f"#SBATCH --partition={sb.partition}")
    if sb.account:
        lines.append(f"#SBATCH --account={sb.account}")
    if sb.gpus_per_task:
        lines.append(f"#SBATCH --gres=gpu:{sb.gpus_per_task}")
    lines += [f"#SBATCH {arg}" for arg in sb.sbatch_args]
    lines += [f"# score-rl sweep '{spec.name}': {len(runs)} unfinished run(s); re-running the sweep leaves finished "
              "runs out (a run already training elsewhere holds its directory's lock and this task then stops)",
              f"cd {shlex.quote(str(Path.cwd()))}",
              # the setup lines first: environment activation scripts are often not safe under `set -u`
              *[f"# shellcheck disable=SC1090,SC1091  # (backend.slurm.setup: files it sources are not followed)\n{line}"
                for line in sb.setup], "set -euo pipefail", "",
              'case "${SLURM_ARRAY_TASK_ID}" in']
    for i, run in enumerate(runs):
        args = " ".join(shlex.quote(a) for a in [*python, *run.command(sweep.base, "")[1:]])
        lines += [f"  {i})  # {run.run_id}", f"    RUN_ID={shlex.quote(run.run_id)}", f"    CMD=({args})", "    ;;"]
    lines += ['  *) echo "score-rl sweep: no run for array index ${SLURM_ARRAY_TASK_ID}" >&2; exit 2 ;;', "esac",
              'echo "score-rl sweep: run ${RUN_ID}"', 'exec "${CMD[@]}"', ""]
    return "\n".join(lines)


def run_slurm(sweep: Sweep, dry_run: bool, log: Callable = print) -> Optional[str]:
    """Write the job array of the unfinished runs; submit it with sbatch unless ``dry_run``. Returns the job id."""
    runs = [r for r in sweep.pending() if not run_dir_in_use(Path(r.run_dir))]  # training right now: left out
    if not runs:
        log("every run is finished or training: nothing to submit")
        return None
    (sweep.out_dir / "slurm").mkdir(parents=True, exist_ok=True)
    script = sweep.out_dir / "slurm" / f"{_SAFE.sub('_', sweep.spec.name)}.sbatch"
    script.write_text(slurm_script(sweep, runs))
    if dry_run:
        log(script.read_text())
        log(f"# dry run: wrote {script} ({len(runs)} array tasks); submit it with: sbatch {script}")
        return None
    try:
        out = subprocess.run(["sbatch", "--parsable", str(script)], check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise ConfigError("sweep backend slurm: sbatch not found (run on a SLURM login node, or use --dry-run)")
    except subprocess.CalledProcessError as err:
        raise ConfigError(f"sbatch rejected {script}: {err.stderr.strip().splitlines()[-1] if err.stderr else err}")
    job_id = out.stdout.strip().split(";")[0]
    log(f"submitted job array {job_id} ({len(runs)} runs); when it is done: score-rl sweep --report {sweep.out_dir}")
    return job_id


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
        _prepare_base_model(sweep, log)
        results = (run_local if name == "local" else run_ray)(sweep, log)
        failed = [k for k, ok in results.items() if not ok]
        if failed:
            log(f"{len(failed)} run(s) failed: {', '.join(failed)} (see failed.json in their directories); "
                "re-running the sweep retries them")
    from score_rl.eval.sweep_report import write_report

    report = write_report(sweep.out_dir, log=log)
    log(report.read_text())
    return sweep.out_dir


def _prepare_base_model(sweep: Sweep, log: Callable) -> None:
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
