"""Weight sync learner → rollout workers after each update.

One interface, ``WeightSync.push(learners, workers)``. ObjectStoreSync moves a CPU state dict through Ray's object
store (workers fetch it directly from the learner's node, not through the driver); an NCCL broadcast can implement
the same interface later.
"""

from __future__ import annotations

from score_rl.launch.distributed import ActorGroup


class WeightSync:
    def push(self, learners: ActorGroup, workers: ActorGroup) -> None:
        raise NotImplementedError


class ObjectStoreSync(WeightSync):
    def __init__(self, sharded: bool = False):
        self.sharded = sharded  # ZeRO 3: every rank takes part in gathering the weights; rank 0 returns them

    def push(self, learners: ActorGroup, workers: ActorGroup) -> None:
        ranks = range(len(learners)) if self.sharded else [0]  # rank 0 holds full weights under ZeRO 0-2
        refs = [learners.remote_ref(r, "state_dict", False, True) for r in ranks]
        workers.call("load_weights", None, refs[0])
        if learners.use_ray and len(refs) > 1:
            import ray

            ray.get(refs[1:])  # the other ranks' part of the gather is done (they return None)
