"""SCoRe and the paper's comparison methods: named presets (config diffs) and the data each baseline trains on.

A preset is a dotlist applied before the user's own overrides (``score-rl train CONFIG --method NAME``; in a sweep,
after the sweep-wide overrides and before the variant's), so every variant stays an ordinary config that is saved with
its run. Five presets are SCoRe (``method.name=score``) with its shaping changed; the others select another
``method.name``, which changes what the trainer feeds the learner:

* ``single_turn_rl``: episodes of one attempt, rewarded r1 with the β1 KL; attempt 2 is never trained (it is still
  evaluated, with two attempts).
* ``star``: two-attempt traces sampled from the current policy, filtered (D: wrong→right; D+: also right→right), and
  attempt 2 of the kept traces trained with the negative log-likelihood; every step is one iteration (sample,
  filter, one update).
* ``pair_sft``: first attempts sampled once from the base model; a wrong one is paired with a right one of the same
  problem (both the model's own samples) and trained as problem + wrong + instruction → right, with the NLL.
* ``self_refine``: no training; the base model with the correction instruction.

SFT is the same DeepSpeed learner with advantage 1, no KL and only the kept turns in the loss mask: the per-token
policy-gradient loss −A·log π then *is* the NLL — averaged over the kept tokens with ``algo.loss_agg=token-mean``
(summed per kept turn and averaged over kept turns with seq-mean-token-sum), scored at ``rollout.temperature`` (1 by
default, where it is exactly the NLL).
"""

from __future__ import annotations

import difflib
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from score_rl.errors import ConfigError
from score_rl.episode import Episode, Turn


@dataclass(frozen=True)
class Preset:
    overrides: Tuple[str, ...]
    description: str
    paper: str  # the row of the SCoRe paper (Kumar et al. 2024) this variant mirrors


PRESETS: Dict[str, Preset] = {
    "score": Preset(("method.name=score",),
                    "SCoRe: Stage I (β2 KL on attempt 1, reward on attempt 2), then Stage II with the α bonus",
                    "Table 4 'SCoRe (Ours)'"),
    "no_stage1": Preset(("method.name=score", "shaping.stage1_steps=0"),
                        "SCoRe without Stage I: Stage II from the first step", "Table 4 'w/o Stage I'"),
    "no_shaping": Preset(("method.name=score", "shaping.alpha=0.0"),
                         "SCoRe without the reward-shaping bonus (α = 0)", "Table 4 'w/o reward shaping'"),
    "with_gamma": Preset(("method.name=score", "shaping.gamma=0.5"),
                         "SCoRe with turn 1 also credited with 0.5 × turn 2's return",
                         "§5 / SCORE_NOTES: γ > 0 (the paper keeps γ = 0)"),
    "multi_turn_rl": Preset(("method.name=score", "shaping.stage1_steps=0", "shaping.alpha=0.0"),
                            "plain multi-turn RL: both attempts rewarded, no Stage I, no bonus",
                            "Table 4 'w/o Stage I' + 'w/o reward shaping'; PAG's two-turn RL baseline"),
    "single_turn_rl": Preset(("method.name=single_turn_rl",), "RL on attempt 1 only; evaluated with two attempts",
                             "Table 4 'single-turn training'"),
    "star": Preset(("method.name=star", "method.star_keep=D+"),
                   "STaR for self-correction: keep wrong→right and right→right traces, SFT, iterate",
                   "Table 2 'STaR D+'"),
    "star_d": Preset(("method.name=star", "method.star_keep=D"),
                     "STaR for self-correction keeping only wrong→right traces", "Table 2 'STaR D'"),
    "pair_sft": Preset(("method.name=pair_sft",),
                       "Pair-SFT: the base model's wrong attempts paired with its right ones", "Table 2 'Pair-SFT'"),
    "self_refine": Preset(("method.name=self_refine",), "the base model prompted with the correction instruction",
                          "Table 2 'Self-Refine'"),
}


# --- the methods a step can train (method.name): what each needs, declared once --------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    """What a ``method.name`` needs from the rest of the trainer; config validation and the trainer read only this
    (no method lists elsewhere). The step's behaviour lives in score_rl/train/methods.py under the same name."""

    name: str
    description: str
    two_attempts: bool  # samples second attempts from the policy: rollout.corrections_per_attempt applies
    policy_gradient: bool  # trained with a policy-gradient loss on sampled episodes: PPO and off-policy steps apply
    trains: bool = True  # False: prompting only (trainer.steps is not trained)


METHODS: Dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("score", "SCoRe, Stage I then II; its ablations are shaping diffs", two_attempts=True,
               policy_gradient=True),
    MethodSpec("single_turn_rl", "RL on attempt 1 only", two_attempts=False, policy_gradient=True),
    MethodSpec("star", "STaR for self-correction: filtered two-attempt traces, SFT on attempt 2",
               two_attempts=True, policy_gradient=False),
    MethodSpec("pair_sft", "SFT on the base model's wrong→right pairs", two_attempts=False, policy_gradient=False),
    MethodSpec("self_refine", "no training: the base model with the correction instruction", two_attempts=False,
               policy_gradient=False, trains=False),
)}


def methods_help() -> str:
    """The registered methods, one ``name (description)`` each, for help texts."""
    return ", ".join(f"{name} ({spec.description})" for name, spec in METHODS.items())


def method_names(kind: str = "all") -> Tuple[str, ...]:
    """The registered ``method.name`` values; ``two_attempts`` / ``policy_gradient``: those that declare it."""
    if kind == "all":
        return tuple(METHODS)
    return tuple(name for name, spec in METHODS.items() if getattr(spec, kind))


def preset_overrides(name: str) -> List[str]:
    """The dotlist of a named method; an unknown name is a one-line error naming the closest."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown method '{name}'{hint}; methods: {', '.join(PRESETS)}")
    return list(PRESETS[name].overrides)


# --- what each baseline trains on ----------------------------------------------------------------------------------
def shape_single_turn(episodes: Sequence[Episode], beta1: float) -> None:
    """Single-turn RL: one-attempt episodes, the attempt rewarded with its own reward and the β1 KL."""
    for ep in episodes:
        if len(ep.turns) != 1:
            raise ValueError(f"single-turn RL trains one-attempt episodes, got {len(ep.turns)} ({ep.problem_id})")
        ep.turns[0].shaped_reward, ep.turns[0].kl_coef = ep.turns[0].reward, beta1


def star_keeps(episode: Episode, keep: str) -> bool:
    """STaR's filter: D keeps wrong→right traces, D+ every trace whose second attempt is right."""
    r1, r2 = (t.reward >= 0.5 for t in episode.turns[:2])
    if keep == "D":
        return (not r1) and r2
    if keep == "D+":
        return r2
    raise ValueError(f"unknown STaR filter '{keep}' (D or D+)")


def mark_sft(episode: Episode, trained: bool) -> None:
    """Attempt 1 is context only; attempt 2 is an SFT target (advantage 1, no KL) when ``trained``."""
    first, second = episode.turns[0], episode.turns[1]
    first.trained, first.advantage, first.kl_coef, first.shaped_reward = False, 0.0, 0.0, 0.0
    second.trained, second.advantage, second.kl_coef = trained, 1.0 if trained else 0.0, 0.0
    second.shaped_reward = second.reward


def select_star(episodes: Sequence[Episode], keep: str) -> int:
    """Mark the kept traces' attempt 2 as SFT targets and every other turn as untrained; returns the kept count.

    Discarded traces stay in the batch with no trained token (no loss, not in the denominator), so the learner's
    batch keeps its size and the update is the NLL averaged over the kept tokens exactly."""
    kept = 0
    for ep in episodes:
        ok = star_keeps(ep, keep)
        mark_sft(ep, ok)
        kept += ok
    return kept


def pair_sft_pairs(samples: Sequence[Episode], seed: int) -> List[Tuple[Episode, Episode]]:
    """(wrong, right) pairs of first attempts of the same problem, both sampled from the model.

    Every wrong sample of a problem that has at least one right sample is paired with one of the right ones (chosen
    by the seed); problems the model never gets right (or never gets wrong) give no pair."""
    rng = random.Random(seed)
    by_problem: Dict[str, List[Episode]] = defaultdict(list)
    for ep in samples:
        if len(ep.turns) != 1:
            raise ValueError(f"Pair-SFT pairs first attempts; got an episode of {len(ep.turns)} turns")
        by_problem[ep.problem_id].append(ep)
    pairs = []
    for pid in sorted(by_problem):
        right = [ep for ep in by_problem[pid] if ep.turns[0].reward >= 0.5]
        wrong = [ep for ep in by_problem[pid] if ep.turns[0].reward < 0.5]
        if right:
            pairs += [(w, rng.choice(right)) for w in wrong]
    return pairs


def pair_episode(wrong: Episode, right: Episode, correction_prompt_ids: List[int], index: int) -> Episode:
    """problem + wrong attempt + instruction → the right attempt, as a two-turn SFT episode (attempt 2 trained)."""
    w, r = wrong.turns[0], right.turns[0]
    first = Turn(prompt_ids=list(w.prompt_ids), response_ids=list(w.response_ids),
                 sampling_logprobs=list(w.sampling_logprobs), response_text=w.response_text, reward=w.reward,
                 reason=w.reason, truncated=w.truncated)
    # the right attempt's sampling log-probs were taken in the turn-1 context: kept only for the mismatch statistic
    second = Turn(prompt_ids=list(correction_prompt_ids), response_ids=list(r.response_ids),
                  sampling_logprobs=list(r.sampling_logprobs), response_text=r.response_text, reward=r.reward,
                  reason=r.reason, truncated=r.truncated)
    ep = Episode(problem_id=wrong.problem_id, sample_index=index, turns=[first, second], reference=wrong.reference)
    mark_sft(ep, True)
    return ep
