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
    def push(self, learners: ActorGroup, workers: ActorGroup) -> None:
        weights = learners.remote_ref(0, "state_dict")  # rank 0 holds full weights under ZeRO 0-2
        workers.call("load_weights", None, weights)
