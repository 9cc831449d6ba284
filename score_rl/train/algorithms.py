"""The policy-gradient algorithms the trainer can run, chosen by ``algo.name`` (a registry, not an if-chain).

Each turns a step's shaped episodes into optimizer updates on the learner ranks:

* ``reinforce`` (the paper's): per-turn group baselines over a problem's samples (score_rl/algos/advantages.py),
  then one update over the whole step.
* ``ppo``: log π_old and the critic's values of every token before the first update, per-turn GAE
  (score_rl/algos/gae.py), then K epochs over seeded minibatches of the step's episodes, one update of policy and
  critic per minibatch (the clipped surrogate and the clipped value loss, score_rl/algos/losses.py).

Formulas as coded: docs/algorithms.md.
"""

from __future__ import annotations

import math
import random
from typing import Dict, List, Optional, Sequence

from score_rl import seeds
from score_rl.algos.advantages import compute_advantages
from score_rl.algos.gae import explained_variance, gae, token_rewards, whiten
from score_rl.config import Config
from score_rl.episode import Episode
from score_rl.launch.distributed import ActorGroup, shard
from score_rl.learner.batch import collate
from score_rl.train.divergence import watched
from score_rl.learner.stats import loss_denominator, policy_metrics, reduce_rank_stats, sum_rank_stats


class Reinforce:
    """REINFORCE with per-turn group baselines: one optimizer update per step."""

    minibatches = 1

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def advantages(self, episodes: Sequence[Episode], kl_penalty: Optional[List[List[float]]]) -> None:
        compute_advantages(episodes, self.cfg.algo.advantage, self.cfg.shaping.gamma, kl_penalty)

    def no_signal(self, episodes: Sequence[Episode]) -> bool:
        """Whether the rewards give every turn a zero advantage (e.g. every sample of every problem wrong). While the
        policy is still the reference model such a step's only gradient is the sampler/learner rounding inside the KL
        terms (~1e-6 per token), which AdamW's normalisation would turn into a full-size step: the trainer makes no
        optimizer step then (algo.skip_no_signal). Once the policy has moved, the KL is a real signal."""
        if not self.cfg.algo.skip_no_signal:
            return False
        self.advantages(episodes, None)  # the rewards' own advantages; overwritten when the step updates
        return not any(abs(turn.advantage) > 1e-9 for ep in episodes for turn in ep.turns)

    def update(self, learners: ActorGroup, episodes: Sequence[Episode], step: int) -> Dict[str, float]:
        """One update on every rank, the loss normalised over the whole step's tokens (or turns); {} and no update at
        all when nothing is trained (a STaR batch without a kept trace)."""
        return _learn(learners, "train_step", episodes, self.cfg.algo.loss_agg)


class PPO:
    """PPO on the token-level MDP of two-turn episodes: a critic, per-turn GAE, K epochs of minibatch updates."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.minibatches = cfg.algo.ppo.minibatches

    def no_signal(self, episodes: Sequence[Episode]) -> bool:
        """Never: PPO always updates (its critic learns from any batch)."""
        return False

    def advantages(self, episodes: Sequence[Episode], kl_penalty: Optional[List[List[float]]]) -> None:
        """Nothing yet: GAE needs the critic's values, taken in ``update`` before the first minibatch. (The reward's KL
        penalty is applied per token there, from the reference log-probs the trainer stored on the turns.)"""

    def update(self, learners: ActorGroup, episodes: Sequence[Episode], step: int) -> Dict[str, float]:
        ppo = self.cfg.algo.ppo
        # the epochs' minibatches, seeded by (seed, step): a resumed run sees the same ones
        rng = random.Random(seeds.ppo_minibatches(self.cfg.trainer.seed, step))
        epochs = [self._split(episodes, rng) for _ in range(ppo.epochs)]
        before = self.old_logprobs_and_values(learners, epochs[0])
        metrics = self.gae(episodes)
        updates = []
        for batch in (batch for minibatches in epochs for batch in minibatches):
            stats = _learn(learners, "ppo_update", batch, self.cfg.algo.loss_agg)
            if stats:
                updates.append(stats)
            if any(not math.isfinite(v) for k, v in stats.items() if k in watched(self.cfg.model.dtype)):
                break  # a non-finite update: no further minibatch; the step's loss is not finite, the run stops
        if not updates:
            return {}
        metrics.update({k: sum(u[k] for u in updates) / len(updates) for k in updates[0]})
        metrics["ratio_dev_first_update"] = updates[0]["ratio_dev"]  # exactly 0: π_old is the policy of update 1
        metrics["updates"] = len(updates)
        # what describes the policy itself is measured before the first update, over the whole step (as REINFORCE
        # logs it), not averaged over a policy that moves between the minibatches (shared_prompt_rows: the step's
        # rows, each once, not a mean per update)
        metrics.update(policy_metrics(before))
        return metrics

    def _split(self, episodes: Sequence[Episode], rng: random.Random) -> List[List[Episode]]:
        if len(episodes) % self.minibatches:  # validate_training checks this for the trainer's steps
            raise ValueError(f"{len(episodes)} episodes do not split into algo.ppo.minibatches = {self.minibatches}")
        order = list(range(len(episodes)))
        rng.shuffle(order)
        size = len(episodes) // self.minibatches
        return [[episodes[k] for k in order[m * size:(m + 1) * size]] for m in range(self.minibatches)]

    def old_logprobs_and_values(self, learners: ActorGroup, minibatches: Sequence[Sequence[Episode]]
                                ) -> Dict[str, float]:
        """log π_old, V and log π_ref on every turn (the reference is frozen: one pass serves every update), each rank
        scoring exactly its shares of the first epoch's minibatches.
        Returns the ranks' summed statistics of the policy before the step."""
        shards = [shard(batch, len(learners)) for batch in minibatches]
        per_rank = learners.call("ppo_forward", [([s[r] for s in shards],) for r in range(len(learners))])
        for m, batch_shards in enumerate(shards):
            for r, rank_episodes in enumerate(batch_shards):
                for ep, row in zip(rank_episodes, per_rank[r]["rows"][m]):
                    for turn, (old_logprobs, values, ref_logprobs) in zip(ep.turns, row):
                        turn.old_logprobs, turn.values, turn.ref_logprobs = old_logprobs, values, ref_logprobs
        return sum_rank_stats([r["stats"] for r in per_rank])

    def gae(self, episodes: Sequence[Episode]) -> Dict[str, float]:
        """Token advantages and returns on every turn; the critic's explained variance per turn (before the step)."""
        cfg = self.cfg
        b = collate(episodes, 0)
        rewards = token_rewards(b, episodes, cfg.algo.uses_reward_kl())
        advantages, returns = gae(rewards, b["values"], b["turn"], cfg.shaping.gamma, cfg.algo.ppo.lam)
        trained = (b["turn"] > 0) & b["trained"]
        metrics = {}
        for t in range(1, len(episodes[0].turns) + 1):
            m = trained & (b["turn"] == t)
            metrics[f"explained_var_t{t}"] = explained_variance(returns, b["values"], m)
            metrics[f"value_t{t}"] = float(b["values"][m].mean()) if m.any() else math.nan
            metrics[f"return_t{t}"] = float(returns[m].mean()) if m.any() else math.nan
        if cfg.algo.ppo.whiten_advantages:
            advantages = whiten(advantages, trained)
        for i, ep in enumerate(episodes):
            for (start, end), turn in zip(ep.response_spans(), ep.turns):
                sl = slice(start - 1, end - 1)  # collate's target positions of the turn's tokens
                turn.token_advantages = advantages[i, sl].tolist()
                turn.returns = returns[i, sl].tolist()
        return metrics


def reward_kl(learners: ActorGroup, episodes: Sequence[Episode]) -> List[List[float]]:
    """The KL penalty in the reward (algo.kl_in_reward): per-turn k1 = Σ_tok (log π_old − log π_ref) of every episode,
    from one reference pass on the learner ranks. The reference log-probs stay on the turns (Turn.ref_logprobs), so the
    update does not compute them a second time."""
    ref = [row for part in learners.call("reference_logprobs", [(s,) for s in shard(episodes, len(learners))])
           for row in part]
    penalties = []
    for ep, ep_ref in zip(episodes, ref):
        for turn, turn_ref in zip(ep.turns, ep_ref):
            turn.ref_logprobs = turn_ref
        penalties.append([sum(t.sampling_logprobs) - sum(t.ref_logprobs) for t in ep.turns])
    return penalties


ALGORITHMS = {"reinforce": Reinforce, "ppo": PPO}


def make_algorithm(cfg: Config):
    return ALGORITHMS[cfg.algo.name](cfg)


def _learn(learners: ActorGroup, method: str, episodes: Sequence[Episode], loss_agg: str) -> Dict[str, float]:
    """One optimizer update on every rank over ``episodes`` (sharded); the loss is normalised over all of them."""
    denominator = loss_denominator(episodes, loss_agg)
    if denominator <= 0:
        return {}
    shards = shard(episodes, len(learners))
    return reduce_rank_stats(learners.call(method, [(s, denominator) for s in shards]), denominator)
