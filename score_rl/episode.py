"""Episode / Turn: the typed currency between rollout, shaping, advantages and the learner.

Everything is per turn: token ids, sampling log-probs, reward, verifier info, shaped reward, KL coefficient and
advantage. Turn t's prompt ids are exactly the ids the model was conditioned on when it sampled turn t, so the
learner scores the same tokens in the same context (no re-tokenisation between rollout and training).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class Turn:
    prompt_ids: List[int]  # full context of this turn (turn 2: turn-1 prompt + attempt 1 + correction instruction)
    response_ids: List[int]  # sampled tokens, including EOS when the model produced it
    sampling_logprobs: List[float]  # log-probs of response_ids under the sampling distribution
    response_text: str
    reward: float  # the verifier's raw reward r(y_t, y*)
    reason: str = ""
    info: Dict[str, Any] = field(default_factory=dict)
    truncated: bool = False  # hit max_new_tokens without EOS
    # False: the turn is context only — none of its tokens is in the loss or its denominator (a baseline's SFT
    # filter, the wrong attempt of a Pair-SFT pair)
    trained: bool = True
    # the turn's share of the loss and of its denominator: 1, or 1/m for each of m corrections of one first attempt
    # (rollout.corrections_per_attempt), so turn 2 weighs in the objective what it weighs with m = 1
    loss_weight: float = 1.0
    # reference-model log-probs of response_ids (set when the KL sits in the reward, so the learner reuses them):
    ref_logprobs: Optional[List[float]] = None
    # filled by the reward shaper and the advantage estimator:
    shaped_reward: Optional[float] = None
    kl_coef: Optional[float] = None
    advantage: Optional[float] = None
    # PPO (algo.name=ppo), one value per response token, filled before the step's first update:
    old_logprobs: Optional[List[float]] = None  # log π_old: the policy's log-probs before the step's first update
    values: Optional[List[float]] = None  # the critic's V of the state each token was sampled in
    token_advantages: Optional[List[float]] = None  # GAE advantages; they replace ``advantage`` in the loss
    returns: Optional[List[float]] = None  # the critic's targets (token_advantages + values, before whitening)


@dataclass
class Episode:
    problem_id: str
    sample_index: int  # which of the problem's samples (the baseline's group is one problem)
    turns: List[Turn]
    reference: Any = None
    # with rollout.corrections_per_attempt = m > 1: which of the problem's first attempts this episode continues; its m
    # siblings share that first attempt (turn 2's baseline is computed among them). None: independent episodes.
    first_attempt_id: Optional[int] = None

    @property
    def rewards(self) -> List[float]:
        return [t.reward for t in self.turns]

    def full_ids(self) -> List[int]:
        """The last turn's prompt + response: contains every earlier turn as a prefix."""
        last = self.turns[-1]
        return last.prompt_ids + last.response_ids

    def response_spans(self) -> List[tuple]:
        """(start, end) of each turn's response inside full_ids()."""
        spans = []
        for turn in self.turns:
            start = len(turn.prompt_ids)
            spans.append((start, start + len(turn.response_ids)))
        return spans


def episode_from_dict(data: dict) -> Episode:
    """The inverse of ``dataclasses.asdict`` for an Episode (Pair-SFT's saved pairs, a checkpoint's pending batch)."""
    return Episode(problem_id=data["problem_id"], sample_index=data["sample_index"], reference=data["reference"],
                   turns=[Turn(**turn) for turn in data["turns"]],
                   first_attempt_id=data.get("first_attempt_id", data.get("attempt")))  # "attempt" in earlier files
