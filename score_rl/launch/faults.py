"""Dead actors: which member of a group died, waiting for Ray to restart it, and calls that survive a restart.

Rollout workers are restartable (Ray re-creates the actor from its constructor arguments, i.e. with the base model's
weights); the trainer then loads the current policy into it and redoes its shard. Learner ranks are not: their
optimizer state and process group cannot be rebuilt mid-step, so a dead rank ends the run with one line naming it and
the checkpoint to resume from.
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Optional, Sequence

from score_rl.launch.distributed import ActorGroup


def actor_died_types() -> tuple:
    """``(RayActorError,)`` for ``except`` / ``isinstance``, or ``()`` (which matches nothing) where Ray cannot be
    imported: a ray.enabled=false run must not need Ray installed, and has no actor to die."""
    try:
        from ray.exceptions import RayActorError
    except ImportError:
        return ()
    return (RayActorError,)


class StaleWeights(RuntimeError):
    """A rollout worker was asked to sample with a policy version it does not hold (it was restarted)."""


class TrainingAborted(RuntimeError):
    """The run cannot go on (a learner rank died, a worker could not be restarted); the message is one line."""


def dead_member(group: ActorGroup, err: BaseException) -> Optional[int]:
    """The index of the member whose death (or staleness) ``err`` reports, or None when it is not about this group."""
    if not group.use_ray:
        return None
    from ray.exceptions import RayActorError, RayTaskError

    if isinstance(err, RayTaskError) and isinstance(getattr(err, "cause", None), StaleWeights):
        index = getattr(err.cause, "worker_index", None)
        if index is not None and 0 <= index < len(group.members):
            return index
    if not isinstance(err, RayActorError) or not err.actor_id:
        return None
    for i, member in enumerate(group.members):
        if member._actor_id.hex() == err.actor_id:
            return i
    return None


def death_reason(err: BaseException) -> str:
    """A short, one-line account of why an actor call failed (Ray's own message is many lines, with OOM advice)."""
    from ray.exceptions import RayTaskError

    if isinstance(err, RayTaskError) and isinstance(getattr(err, "cause", None), StaleWeights):
        return "it was restarted and holds the base weights"
    text = str(err)
    for hint in ("killed by SIGKILL", "SIGTERM", "exit_code", "OOM", "out of memory", "The actor died unexpectedly",
                 "restarting", "Worker exits"):
        if hint.lower() in text.lower():
            line = next((ln.strip() for ln in text.splitlines() if hint.lower() in ln.lower()), hint)
            return line[:160]
    return type(err).__name__


def wait_alive(group: ActorGroup, index: int, timeout: float = 900.0) -> None:
    """Block until member ``index`` answers ``ping`` again (Ray is re-creating it); TrainingAborted when it is dead for
    good (no restarts left) or does not come back within ``timeout`` seconds."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

    deadline = time.monotonic() + timeout
    while True:
        try:
            ray.get(group.members[index].ping.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return
        except (ActorUnavailableError, GetTimeoutError):
            pass
        except ActorDiedError as err:
            if "restart" not in str(err).lower() or "no more" in str(err).lower() or "max_restarts" in str(err):
                raise TrainingAborted(f"rollout worker {index} died and Ray could not restart it "
                                      f"({death_reason(err)}); "
                                      "raise ray.max_worker_restarts or check the node") from None
        except RayActorError:
            pass
        if time.monotonic() > deadline:
            raise TrainingAborted(f"rollout worker {index} died and was not back within {timeout:.0f} s")
        time.sleep(0.5)


def call_with_restarts(group: ActorGroup, method: str, per_member_args: Sequence[tuple],
                       recover: Callable[[int, BaseException], None], attempts: int) -> List[Any]:
    """``group.call(method, per_member_args)`` where a member that died (or turned out stale) is recovered with
    ``recover(index, error)`` and its call redone, up to ``attempts`` times per member; the others' results are kept."""
    if not group.use_ray:
        return group.call(method, per_member_args)
    import ray

    refs = [group.remote_ref(i, method, *args) for i, args in enumerate(per_member_args)]
    results: List[Any] = [None] * len(refs)
    pending = {ref: i for i, ref in enumerate(refs)}
    tries = [0] * len(refs)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        try:
            results[i] = ray.get(ready[0])
        except Exception as err:  # only deaths / stale weights of this group are recovered
            if dead_member(group, err) != i or tries[i] >= attempts:
                raise
            tries[i] += 1
            recover(i, err)
            pending[group.remote_ref(i, method, *per_member_args[i])] = i
    return results
