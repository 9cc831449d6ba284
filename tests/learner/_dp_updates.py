"""Run learner steps with plain SGD and record each step's weight change (imported by spawned test processes).

With SGD, lr = η, no clipping and no weight decay, the weight change of a step is −η × the gradient DeepSpeed
applied, so comparing weight changes compares applied gradients exactly.
"""

from __future__ import annotations

import copy
import random
from typing import Dict, List, Sequence

LR = 1.0  # large enough that float32 rounding of the weights stays far below the update


def make_episodes(vocab: int, n: int, seed: int, shared_prompts: bool = False):
    """n two-turn episodes of random tokens, with uneven response lengths (so ranks see different token counts).
    ``shared_prompts``: episodes 2i and 2i+1 are two samples of one problem (the same turn-1 prompt), which the
    learner then runs once (learner.share_prompt_prefix)."""
    from score_rl.episode import Episode, Turn

    rng = random.Random(seed)
    episodes = []
    prompt = []
    for i in range(n):
        if not shared_prompts or i % 2 == 0:
            prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(3, 6))]
        r1 = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 7))]
        r2 = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 7))]
        correction = [rng.randrange(3, vocab) for _ in range(3)]
        t1 = Turn(prompt_ids=list(prompt), response_ids=r1, sampling_logprobs=[-1.0] * len(r1), response_text="",
                  reward=0.0)
        t2 = Turn(prompt_ids=prompt + r1 + correction, response_ids=r2, sampling_logprobs=[-1.0] * len(r2),
                  response_text="", reward=0.0)
        for t, coef in ((t1, 0.5), (t2, 0.05)):
            t.shaped_reward, t.kl_coef, t.advantage = 0.0, coef, rng.uniform(-1.0, 1.0)
        episodes.append(Episode(problem_id=f"p{i // 2}", sample_index=i % 2, turns=[t1, t2]))
    return episodes


def perturb(model, scale: float = 0.05, seed: int = 1234) -> None:
    """Move a model's weights by deterministic noise (the same on every rank): a reference the policy differs from,
    so that the KL terms have a gradient from the first step on."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def without_advantages(episodes):
    """The same episodes with every advantage 0: the loss is the KL term alone."""
    episodes = copy.deepcopy(episodes)
    for ep in episodes:
        for turn in ep.turns:
            turn.advantage = 0.0
    return episodes


def weighted(episodes):
    """The same episodes with uneven loss weights (as corrections_per_attempt gives): turn 2 of every other episode
    at 0.5, turn 1 of every third at 0.25."""
    episodes = copy.deepcopy(episodes)
    for i, ep in enumerate(episodes):
        if i % 2:
            ep.turns[1].loss_weight = 0.5
        if i % 3 == 0:
            ep.turns[0].loss_weight = 0.25
    return episodes


def save_critic_with_a_head(model_path: str, out_dir: str, seed: int = 99) -> str:
    """A critic with a nonzero value head, saved for ``algo.critic.path`` (so the critic's backbone has a gradient
    from the first update). Saved before the engine is built: ZeRO 1-2 keep their own fp32 copy of the weights from
    ``deepspeed.initialize`` on, so weights changed in place afterwards would not be the ones the optimizer updates."""
    import torch

    from score_rl.learner.critic import load_critic

    critic = load_critic(model_path)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        critic.score.weight.copy_(torch.randn(critic.score.weight.shape, generator=gen) * 0.5)
    critic.save_pretrained(out_dir)
    return out_dir


def with_ppo_inputs(learner, episodes):
    """Copies of this rank's episodes carrying what PPO's update reads: log π_old and V from the learner's own
    pre-update pass, and token advantages / returns that vary token by token (deterministic, the same on every rank)."""
    episodes = copy.deepcopy(episodes)
    for ep, row in zip(episodes, learner.ppo_forward([episodes])["rows"][0]):
        for turn, (old_logprobs, values, _) in zip(ep.turns, row):
            turn.old_logprobs, turn.values = old_logprobs, values
            n = len(turn.response_ids)
            turn.token_advantages = [turn.advantage + 0.3 * (j - n / 2) for j in range(n)]
            turn.returns = [2.0 * turn.advantage - 0.2 * j for j in range(n)]
    return episodes


def _flat(model):
    import torch

    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def _weights(learner, critic: bool = False):
    """Every parameter of the policy (or critic), in ``parameters()`` order (tied weights once), gathered under
    ZeRO 3 (a collective: every rank calls it)."""
    import torch

    state = learner.state_dict(critic=critic)
    module = (learner.critic if critic else learner.engine).module
    return torch.cat([state[name].flatten() for name, _ in module.named_parameters()])


def perturb_reference(learner, scale: float = 0.05, seed: int = 1234) -> None:
    """``perturb`` of the learner's reference; under ZeRO 3 it is an engine with sharded weights: gather them, perturb
    (the same noise on every rank) and let DeepSpeed re-shard rank 0's values."""
    reference = learner.reference
    if learner.cfg.learner.zero_stage != 3:
        return perturb(reference, scale, seed)
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(reference.module.parameters()), modifier_rank=0):
        perturb(reference.module, scale, seed)


def run(cfg, model_path: str, rank: int, world: int, port: int, combos: Sequence[Dict],
        steps: List[list]) -> List[Dict]:
    """For each combo (learner.* overrides), run len(steps) training steps; return weight changes and stats.
    With ``ppo`` in a combo: PPO updates (1 epoch, 1 minibatch), and the critic's weight changes too."""

    from score_rl.launch.distributed import shard
    from score_rl.learner.learner import Learner
    from score_rl.learner.stats import loss_denominator

    results = []
    for combo in combos:
        c = copy.deepcopy(cfg)
        c.learner.optimizer, c.learner.lr, c.learner.weight_decay = "sgd", LR, 0.0
        c.learner.grad_clip = combo.get("grad_clip", 0.0)
        c.learner.zero_stage, c.learner.micro_batch_size = combo["zero_stage"], combo["micro_batch_size"]
        c.learner.zero3_param_persistence_threshold = 0  # ZeRO 3: shard every parameter of the tiny model
        c.learner.share_prompt_prefix = combo.get("share_prompt_prefix", True)
        c.algo.loss_agg = combo.get("loss_agg", "token-mean")
        c.algo.kl_estimator, c.algo.kl_in_reward = combo.get("kl_estimator", "k2"), None
        ppo = combo.get("ppo", False)
        if ppo:  # algo.critic.path: a critic with a nonzero head (save_critic_with_a_head)
            c.algo.name, c.algo.critic.lr = "ppo", LR
        per_rank = len(steps[0]) // world
        learner = Learner(c, model_path, rank, world, per_rank)
        learner.setup("127.0.0.1", port)
        perturb_reference(learner)
        updates, norms, kls, critic_updates, critic_norms, held, critic_held = [], [], [], [], [], [], []
        for episodes in steps:
            if combo.get("kl_only"):
                episodes = without_advantages(episodes)
            if combo.get("weighted"):
                episodes = weighted(episodes)
            before = _weights(learner)
            critic_before = _weights(learner, critic=True) if ppo else None
            mine = shard(episodes, world)[rank]
            if combo.get("cache_ref"):  # what the trainer does when the KL sits in the reward
                mine = copy.deepcopy(mine)
                for ep, ref in zip(mine, learner.reference_logprobs(mine)):
                    for turn, turn_ref in zip(ep.turns, ref):
                        turn.ref_logprobs = turn_ref
            if ppo:
                stats = learner.ppo_update(with_ppo_inputs(learner, mine), loss_denominator(episodes, c.algo.loss_agg))
                held.append(sum(p.numel() for p in learner.engine.module.parameters()))  # right after the update
                critic_held.append(sum(p.numel() for p in learner.critic.module.parameters()))
                critic_updates.append((_weights(learner, critic=True) - critic_before).tolist())
                critic_norms.append(stats["critic_grad_norm"])
            else:
                stats = learner.train_step(mine, loss_denominator(episodes, c.algo.loss_agg))
                held.append(sum(p.numel() for p in learner.engine.module.parameters()))  # right after the update
            updates.append((_weights(learner) - before).tolist())
            norms.append(stats["grad_norm"])
            kls.append((stats.get("kl_turn1_sum"), stats.get("kl_turn2_sum")))
        results.append({"combo": combo, "updates": updates, "grad_norms": norms, "kl_sums": kls,
                        "held": held + critic_held,
                        "critic_updates": critic_updates, "critic_grad_norms": critic_norms})
        del learner
    return results


def spawned(queue, cfg, model_path: str, rank: int, world: int, port: int, combos, steps) -> None:
    try:
        queue.put((rank, run(cfg, model_path, rank, world, port, combos, steps)))
    except BaseException as err:  # report, don't hang the test
        import traceback

        queue.put((rank, traceback.format_exc() + repr(err)))
