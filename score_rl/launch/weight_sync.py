"""Weight sync learner → rollout workers after each update.

One interface, ``WeightSync.push(learners, workers)``:

- ``BucketedSync`` (the default, ``learner.weight_sync=bucketed``): rank 0 copies the weights to host memory one
  bucket of ``learner.weight_sync_bucket_mb`` at a time (under ZeRO 3 every rank takes part in gathering that bucket),
  each bucket goes through Ray's object store straight to the workers, which load it in place into their engine (HF
  or vLLM). Host memory holds a bucket, never a second copy of the model. With LoRA only the adapted layers are sent
  (merged), since the base weights never change.
- ``ObjectStoreSync`` (``learner.weight_sync=full``): the whole state dict at once, as before; kept for comparison
  (bench/weight_sync.py).

An NCCL broadcast from the learner's GPU to the engines' GPUs would implement the same interface; it is not written.
"""

from __future__ import annotations

from score_rl.launch.distributed import ActorGroup


class WeightSync:
    def __init__(self, sharded: bool = False):
        self.sharded = sharded  # ZeRO 3: every rank takes part in gathering the weights; rank 0 returns them

    def push(self, learners: ActorGroup, workers: ActorGroup) -> None:
        raise NotImplementedError

    def _ranks(self, learners: ActorGroup) -> range:
        return range(len(learners)) if self.sharded else range(1)  # rank 0 holds full weights under ZeRO 0-2

    @staticmethod
    def _wait(learners: ActorGroup, refs) -> None:
        if learners.use_ray and refs:
            import ray

            ray.get(list(refs))  # the other ranks' part of the gather is done (they return None)


class ObjectStoreSync(WeightSync):
    def push(self, learners: ActorGroup, workers: ActorGroup) -> None:
        refs = [learners.remote_ref(r, "state_dict", False, True) for r in self._ranks(learners)]
        workers.call("load_weights", None, refs[0])
        self._wait(learners, refs[1:])


class BucketedSync(WeightSync):
    def __init__(self, bucket_mb: float = 256.0, sharded: bool = False):
        super().__init__(sharded)
        self.bucket_bytes = max(1, int(bucket_mb * 2**20))

    def push(self, learners: ActorGroup, workers: ActorGroup) -> None:
        workers.call("begin_weight_update")
        for names in learners.call_one(0, "weight_sync_plan", self.bucket_bytes):
            refs = [learners.remote_ref(r, "weight_bucket", names) for r in self._ranks(learners)]
            workers.call("load_weights", None, refs[0])  # every worker has loaded this bucket before the next
            self._wait(learners, refs[1:])
        workers.call("finish_weight_update")


def make_weight_sync(learner_cfg) -> WeightSync:
    sharded = learner_cfg.zero_stage == 3
    if learner_cfg.weight_sync == "full":
        return ObjectStoreSync(sharded=sharded)
    return BucketedSync(learner_cfg.weight_sync_bucket_mb, sharded=sharded)
