"""Plain classes first, Ray second: a group of N instances of a plain class, as Ray actors or in-process."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence


def init_ray(address: Optional[str], num_cpus_needed: float, num_gpus_needed: float = 0.0,
             num_cpus: Optional[int] = None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    if os.environ.get("RAY_ADDRESS"):
        print(f"score-rl: RAY_ADDRESS={os.environ['RAY_ADDRESS']} is set but ray.address is null: starting a local "
              f"Ray cluster of this run's own; set ray.address=auto to join {os.environ['RAY_ADDRESS']}", flush=True)
    cpus = num_cpus if num_cpus is not None else max(os.cpu_count() or 1, math.ceil(num_cpus_needed))
    # The actors' environment (actor_env_vars) and this cluster's mark (OWNER_ENV) go into the environment the Ray
    # processes start with, which the raylet hands on to every worker it starts, instead of a runtime_env: no
    # runtime-env work per actor (prestarted workers can host the actors). Ray 2.60's raylet starts its dashboard and
    # runtime-env agents whatever ray.init says (it refuses an empty agent command), and when the raylet is SIGKILLed
    # (as it is, PR_SET_PDEATHSIG, when this process is) each agent spends 60 s trying to tell the dead GCS before it
    # exits: the watchdog SIGKILLs every process carrying the mark the moment this process is gone.
    owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    watchdog = start_orphan_watchdog(owner)  # first: a driver killed during ray.init leaves nothing behind either
    # address="local": always a new cluster of this process's own. Without it ray.init joins any cluster a `ray start`
    # left on this machine (/tmp/ray/ray_current_cluster) or RAY_ADDRESS names, and then refuses num_cpus.
    with _environ({**actor_env_vars(num_gpus_needed), OWNER_ENV: owner}):
        ray.init(address="local", num_cpus=cpus, num_gpus=int(math.ceil(num_gpus_needed)) or None,
                 include_dashboard=False, log_to_driver=True, logging_level="ERROR")
    if watchdog is not None:
        watchdog.watch_gcs()


OWNER_ENV = "SCORE_RL_RAY_OWNER"

# The orphan watchdog (stdlib only, started as ``python -c``): its stdin is a pipe from the driver, so it reads EOF the
# moment the driver is gone, however it died; a line "gcs PID" names the cluster's GCS, whose end (ray.shutdown, or
# its fate-shared death with the driver) ends the watch too. Then it SIGKILLs every process whose environment holds
# OWNER_ENV=<this cluster's mark> (all a local cluster's processes: GCS, raylet, agents, workers) and their
# descendants (what a worker started with an environment of its own), three sweeps 0.2 s apart, and exits.
_WATCHDOG = r'''
import os, select, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
mark = sys.argv[1].encode()

def marked():
    found, children = set(), {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                stat = f.read()
            children.setdefault(int(stat[stat.rindex(b")") + 2:].split()[1]), []).append(pid)
            with open("/proc/%d/environ" % pid, "rb") as f:
                if mark in f.read().split(b"\0"):
                    found.add(pid)
        except (OSError, ValueError, IndexError):
            pass
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found - {os.getpid(), os.getppid(), 1}

def alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:].split()[0] not in (b"Z", b"X")

gcs, fd, buf = None, sys.stdin.fileno(), b""
while True:
    ready, _, _ = select.select([fd], [], [], 0.5)
    if ready:
        data = os.read(fd, 4096)
        if not data:
            break
        buf += data
        for line in buf.split(b"\n")[:-1]:
            if line.startswith(b"gcs "):
                gcs = int(line.split()[1])
        buf = buf.rsplit(b"\n", 1)[-1]
    elif gcs is not None and not alive(gcs):
        break
for _ in range(3):
    for pid in marked():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.2)
'''

_watchdogs: List["OrphanWatchdog"] = []  # referenced for the driver's lifetime: a collected Popen closes the pipe


class OrphanWatchdog:
    """The watchdog process of one local Ray cluster (see _WATCHDOG)."""

    def __init__(self, owner: str):
        # its own session: a Ctrl-C or a kill of the driver's process group does not take it along
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", _WATCHDOG, f"{OWNER_ENV}={owner}"],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def watch_gcs(self) -> None:
        """Tell the watchdog the GCS of the cluster ray.init started: its end ends the watch."""
        try:
            import ray

            node = ray._private.worker._global_node
            pid = node.all_processes["gcs_server"][0].process.pid
            self.proc.stdin.write(f"gcs {pid}\n".encode())
            self.proc.stdin.flush()
        except Exception:  # a private API of Ray's: without it the watchdog still ends with this process
            pass


def start_orphan_watchdog(owner: str) -> Optional[OrphanWatchdog]:
    """Start the watchdog of a local cluster marked ``owner`` (Linux: it reads /proc), or None elsewhere."""
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc"):
        return None
    _watchdogs[:] = [w for w in _watchdogs if w.proc.poll() is None]  # (poll reaps the finished ones: no zombies)
    watchdog = OrphanWatchdog(owner)
    _watchdogs.append(watchdog)
    return watchdog


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, as it was again afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def actor_env_vars(num_gpus_needed: float = 0.0) -> dict:
    """Environment variables of the actors of a local Ray cluster: in the environment ``ray.init`` starts the Ray
    processes with, from which the raylet starts every worker.

    glibc malloc (measured): with glibc's defaults an actor hands the memory a step freed back to the kernel
    (blocks above the mmap threshold are unmapped, and the top of the heap is trimmed once more than the trim threshold
    is free there) and page-faults it back, zeroed, in the next step: on the quickstart ~20,000 page faults and 0.06
    CPU-s a step in the rollout worker, 0.03-0.07 in the learner (5-8 % of their CPU), where the in-process run, whose
    heap the learner and the rollout share, mostly reuses its memory. Here blocks up to 32 MiB (glibc's own ceiling for
    its dynamic mmap threshold) come from the heap, and up to 512 MiB free at its top stay mapped (the quickstart needs
    more than 64, at most 128): an actor keeps the memory of its busiest step for the next one. Malloc settings of the
    user's own (inherited by the actors through the raylet) are left alone (see malloc_env)."""
    env = {"TOKENIZERS_PARALLELISM": "false",
           "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu" if num_gpus_needed == 0 else "cuda")}
    env.update(malloc_env(os.environ))
    return env


def malloc_env(environ: Mapping[str, str]) -> Dict[str, str]:
    """The glibc malloc settings of the actors (see actor_env_vars); empty when ENVIRON already holds malloc settings
    of the user's own. glibc reads them when a process starts, so they must be in its environment from the start:
    a local cluster's raylet starts with them (init_ray), slurm/score_rl.sbatch exports them before it starts the Ray
    nodes (``python -m score_rl.launch.slurm plan``); either way the raylets pass them on to the actors."""
    user_malloc = any(key in environ for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                                                 "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"))
    if user_malloc or "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return {}
    return {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(512 << 20)}


def ray_job_working_dir_copy() -> Optional[str]:
    """Ray's copy of a job's runtime-env ``working_dir`` when this process is the entrypoint of a Ray job started with
    one (``ray job submit --working-dir DIR -- ...``) and runs inside that copy; else None.

    The job supervisor passes ``RAY_JOB_CONFIG_JSON_ENV_VAR`` (the job's runtime env) to the entrypoint and starts it
    with ``cd <temp dir>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash> && ...``: a directory Ray
    unpacked from the upload, shared by every job that uploads the same files, and deleted once no job uses it and the
    node's cache of them outgrows 10 GB."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    if not runtime_env.get("working_dir"):
        return None
    cwd = Path.cwd().resolve()
    for d in (cwd, *cwd.parents):
        if d.parent.name == "working_dir_files" and d.parent.parent.name == "runtime_resources":
            return str(d)
    return None


def check_run_dir_is_kept(run_dir: str, key: str = "trainer.run_dir") -> None:
    """Refuse a relative ``trainer.run_dir`` where it would resolve inside Ray's temporary working_dir copy (a Ray job
    submitted with ``--working-dir``): checkpoints, metrics and ``final/`` would be written where the user never looks
    and Ray may delete them. The driver cannot know the directory ``ray job submit`` ran in (it may be another
    machine), so it asks for an absolute path instead of guessing. Anywhere else a relative run_dir is unchanged."""
    if Path(run_dir).is_absolute():
        return
    copy = ray_job_working_dir_copy()
    if copy is None:
        return
    from score_rl.errors import ConfigError

    raise ConfigError(
        f"{key}={run_dir} is relative, and this Ray job runs in Ray's temporary copy of its working_dir "
        f"({copy}), which Ray may delete: pass an absolute {key} on storage the cluster's nodes share, e.g. "
        f"{key}=$PWD/{run_dir} in the ray job submit command")


class ActorGroup:
    """Members constructed from ``cls(*args)``; ``call`` runs a method on every member and returns the results."""

    def __init__(self, cls: type, member_args: Sequence[tuple], use_ray: bool, resources: Optional[dict] = None,
                 placement_group: Any = None, bundle_offset: int = 0, max_restarts: int = 0):
        self.use_ray = use_ray
        if not use_ray:
            self.members = [cls(*args) for args in member_args]
            return
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        remote_cls = ray.remote(cls)
        resources = resources or {}
        self.members = []
        for i, args in enumerate(member_args):
            # max_restarts: Ray re-creates a member whose process died (constructor args again: base weights);
            # the caller notices (a failed call, or a stale weights version) and brings it up to date
            options = dict(num_cpus=resources.get("CPU", 1), num_gpus=resources.get("GPU", 0),
                           max_restarts=max_restarts)
            if placement_group is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=bundle_offset + i
                )
            self.members.append(remote_cls.options(**options).remote(*args))

    def __len__(self) -> int:
        return len(self.members)

    def call(self, method: str, per_member_args: Optional[Sequence[tuple]] = None, *args: Any) -> List[Any]:
        """Run ``method`` on every member (concurrently with Ray); per-member args or the same args for all."""
        arg_list = per_member_args if per_member_args is not None else [args] * len(self.members)
        if len(arg_list) != len(self.members):
            raise ValueError(f"{len(arg_list)} argument tuples for {len(self.members)} members")
        if not self.use_ray:
            return [getattr(m, method)(*a) for m, a in zip(self.members, arg_list)]
        return get_all([getattr(m, method).remote(*a) for m, a in zip(self.members, arg_list)])

    def call_one(self, index: int, method: str, *args: Any) -> Any:
        member = self.members[index]
        if not self.use_ray:
            return getattr(member, method)(*args)
        import ray

        return ray.get(getattr(member, method).remote(*args))

    def subset(self, indices: Sequence[int]) -> "ActorGroup":
        """A group of some of the members (the same actors / objects)."""
        group = object.__new__(ActorGroup)
        group.use_ray, group.members = self.use_ray, [self.members[i] for i in indices]
        return group

    def remote_ref(self, index: int, method: str, *args: Any) -> Any:
        """An object ref (Ray) or the value (in-process) of a method call on one member."""
        member = self.members[index]
        if not self.use_ray:
            return getattr(member, method)(*args)
        return getattr(member, method).remote(*args)


def get_all(refs: Sequence[Any]) -> List[Any]:
    """``ray.get(refs)``, but an error is raised as soon as any call fails: a dead learner rank must not leave the
    driver waiting for the other ranks, which block in a collective that will never complete."""
    import ray
    from ray.exceptions import ActorDiedError

    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(ready)
        except Exception as first:  # re-raised below
            error = first
            # collect the other calls' outcomes (briefly): an error never retrieved is printed by Ray as an "Unhandled
            # error" traceback, and a rank that died is a better account than the peer its collective lost
            done, _ = ray.wait(pending, num_returns=len(pending), timeout=10) if pending else ([], [])
            for ref in done:
                try:
                    ray.get(ref)
                except ActorDiedError as other:
                    if not isinstance(error, ActorDiedError):
                        error = other
                except Exception:  # a consequence of the first failure
                    pass
            raise error from None
    return ray.get(list(refs))


def make_placement_group(bundles: List[dict]):
    import ray
    from ray.util.placement_group import placement_group

    pg = placement_group(bundles, strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=300)
    if not ready:
        raise RuntimeError(f"Ray could not reserve the placement group {bundles} within 300 s; "
                           "check the cluster's free CPUs/GPUs (ray status)")
    return pg


def shard(items: Sequence[Any], n: int) -> List[List[Any]]:
    """Split into n contiguous shards whose sizes differ by at most one."""
    k, r = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + k + (1 if i < r else 0)
        out.append(list(items[start:end]))
        start = end
    return out
