"""Every random stream of a run, derived from ``trainer.seed`` in one place.

Each stream depends only on the seed and on *where* in the run it is used (the step, the epoch, the evaluation
chunk), never on how many random numbers were drawn before: a resumed run, a run with more workers or ranks, and an
uninterrupted run draw the same problems, samples and minibatches. The constants are arbitrary primes that keep the
streams apart; changing one changes every result of that stream.
"""

from __future__ import annotations


def problem_order(seed: int, epoch: int) -> int:
    """The shuffle of the train split for one pass over it (score_rl/train/sampler.py)."""
    return seed * 100_003 + epoch


def rollout(seed: int, step: int) -> int:
    """A training step's sampling (each rollout worker takes its share: ``worker``)."""
    return seed * 1_000_003 + step * 1_009


def ppo_minibatches(seed: int, step: int) -> int:
    """PPO's shuffle of a step's episodes into minibatches, for every epoch of the step."""
    return seed * 1_000_003 + step * 7_919 + 17


def pair_sft_problems(seed: int) -> int:
    """Which train problems Pair-SFT samples its first attempts on."""
    return seed + 7919


def pair_sft_rollout(seed: int) -> int:
    """Pair-SFT's first attempts from the base model (a stream no training step uses)."""
    return seed * 1_000_003 - 1


def eval_chunk(seed: int, start: int) -> int:
    """The held-out evaluation's chunk that begins at problem ``start`` (greedy by default; sampled evaluations)."""
    return seed + 7919 * start


def scaling_samples(seed: int) -> int:
    """Inference-time scaling's samples (pass@k, majority vote) in ``score-rl eval``."""
    return seed + 1


def test_time_chains(seed: int, length: int) -> int:
    """The test-time compute study's chains of one length (``score-rl eval`` with ``eval.budgets``)."""
    return seed * 1_000_003 + 104_729 * length + 3


def test_time_difficulty(seed: int) -> int:
    """The study's separate first attempts that predict each problem's difficulty."""
    return seed * 1_000_003 + 5


def worker(seed: int, index: int) -> int:
    """Rollout worker ``index``'s share of a stream above (its shard of a step; its vLLM engine's own seed)."""
    return seed + index
