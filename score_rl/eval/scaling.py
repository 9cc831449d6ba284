"""Inference-time scaling: pass@k (unbiased), coverage, and majority vote — parallel vs sequential sampling.

pass@k (Chen et al. 2021): with n samples of which c are correct, the probability that at least one of k samples
drawn without replacement is correct, 1 − C(n−c, k) / C(n, k); averaged over problems. Coverage vs samples is the
same curve drawn on a log-scale x axis ("Large Language Monkeys").

Majority vote at equal generation budget B = 2K (SCoRe Figure 1, right):
  parallel:   the most common answer among 2K independent first attempts;
  sequential: the most common answer among K first attempts, each self-corrected once (their K second attempts).
Answers are pooled by the environment's equivalence (``Env.same_answer``: in the math env, ``\\frac{1}{2}``, ``0.5``
and ``1/2`` are one answer): each answer joins the first class, in order of appearance, whose representative (first
member) it is the same answer as, else founds a new one. The vote elects the largest class.
Ties go to the answer whose first occurrence comes earliest in sample order (deterministic).
A vote's correctness is the verdict of the elected class's representative (see ``_class_correct``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from math import comb
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

from score_rl.envs.base import default_answer_text
from score_rl.episode import Episode, Turn


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples with c correct (1 ≤ k ≤ n)."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"c={c} correct out of n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_at_k_curve(correct_counts: Sequence[int], n: int) -> List[float]:
    """Mean pass@k over problems for k = 1..n."""
    return [sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts) for k in range(1, n + 1)]


def _extracted_answer(turn: Turn) -> Optional[str]:
    for key in ("answer", "extracted"):
        if turn.info.get(key) is not None:
            return str(turn.info[key])
    return None


@dataclass(frozen=True)
class NoAnswer:
    """The vote key of an attempt without an extracted answer: its stripped text, equal only to the same text."""

    text: str


def vote_key(turn: Turn) -> Hashable:
    """The attempt's extracted answer (a str, compared by the env's equivalence), else a ``NoAnswer`` compared by
    exact text only."""
    answer = _extracted_answer(turn)
    return answer if answer is not None else NoAnswer(turn.response_text.strip())


def settled(turns: Sequence[Turn], env: Any = None) -> List[bool]:
    """Whether each attempt's verdict says something about its answer: not one of the env's ``unsettled_reasons``
    (math: a verifier timeout or error; code: a sandbox error). Without an env, every verdict is settled."""
    unsettled = set(getattr(env, "unsettled_reasons", ()) or ())
    return [t.reason not in unsettled for t in turns]


FirstSame = Callable[[str, Sequence[str]], Optional[int]]


def _first_same(env: Any) -> Optional[FirstSame]:
    """The env's ``first_same_answer`` (``Env.same_answer`` batched); None (exact equality) without an env. A custom
    env that does not subclass Env gets its own ``same_answer`` if it has one, else the base class's default."""
    if env is None:
        return None
    if callable(getattr(env, "first_same_answer", None)):
        return env.first_same_answer
    same = env.same_answer if callable(getattr(env, "same_answer", None)) else \
        (lambda a, b: default_answer_text(a) == default_answer_text(b))
    return lambda answer, candidates: next((j for j, c in enumerate(candidates) if same(c, answer)), None)


def answer_classes(answers: Sequence[Hashable], env: Any = None,
                   comparable: Optional[Sequence[bool]] = None) -> List[int]:
    """The vote class of each answer, classes numbered in order of first appearance.

    Each answer joins the first class (in that order) whose representative, its first member, is the same answer
    by ``env.same_answer`` (the env's verifier equivalence: ``\\frac{1}{2}``, ``0.5`` and ``1/2`` are one class in
    the math env); else it founds a new class. Without an env, answers are compared with ``==``. Only str answers
    are compared by the env; other keys (``NoAnswer``) only by ``==``. Deterministic as the env's equivalence is (a
    math-verify timeout, which counts as "not the same", depends on load), and prefix-stable: the classes of
    ``answers[:m]`` are the first m labels. Cost: a string identical to an earlier one reuses that one's class
    without asking the env (the equivalence is assumed reflexive and deterministic), so the env is asked once per
    distinct string, about the classes found before it (``first_same_answer``: one batch, cheap checks first).
    ``comparable[i] = False`` (an answer whose own verification timed out): the answer joins only a class holding the
    identical string and is never handed to the env, nor compared with as a class's representative — a verifier that
    timed out on it once would time out once per class.
    """
    find = _first_same(env)
    representatives: List[Hashable] = []
    by_env: List[bool] = []  # may the env compare against this class's representative?
    known: Dict[Hashable, int] = {}
    labels: List[int] = []
    for i, answer in enumerate(answers):
        label = known.get(answer)
        may_compare = isinstance(answer, str) and (comparable is None or comparable[i])
        if label is None:
            if find is not None and may_compare:
                candidates = [j for j, r in enumerate(representatives) if by_env[j]]
                hit = find(answer, [representatives[j] for j in candidates]) if candidates else None
                label = candidates[hit] if hit is not None else None
            if label is None:
                label = len(representatives)
                representatives.append(answer)
                by_env.append(may_compare)
            known[answer] = label
        labels.append(label)
    return labels


def _winning_class(labels: Sequence[int]) -> int:
    """Most members; ties go to the class seen first (classes are numbered in order of first appearance)."""
    counts: Dict[int, int] = defaultdict(int)
    for label in labels:
        counts[label] += 1
    return min(counts, key=lambda label: (-counts[label], label))


def majority_vote(answers: Sequence[Hashable], env: Any = None) -> Hashable:
    """Most common answer, answers pooled by ``env.same_answer`` (``==`` without an env; see ``answer_classes``);
    ties go to the class seen first. Returns the winning class's representative (its first member)."""
    labels = answer_classes(answers, env)
    winner = _winning_class(labels)
    return answers[labels.index(winner)]


def _class_correct(turns: Sequence[Turn], labels: Sequence[int], settled_flags: Sequence[bool]) -> float:
    """Reward of the elected answer: the winning class's representative (its first member), as the verifier judged it.

    The env's equivalence need not be transitive (math-verify: 10% ≡ 10 and 0.1 ≡ 10%, but 0.1 ≢ 10), so members
    are matched to the representative, and the class's answer *is* the representative: its own verdict decides.
    When that verdict is unsettled (``settled``: e.g. a verifier timeout), the first member with a settled verdict
    decides (0 if none has one).
    """
    winner = _winning_class(labels)
    members = [(t, ok) for t, label, ok in zip(turns, labels, settled_flags) if label == winner]
    decided = [t for t, ok in members if ok]
    return decided[0].reward if decided else 0.0


def _vote(turns: Sequence[Turn], env: Any) -> Tuple[List[int], List[bool]]:
    flags = settled(turns, env)
    return answer_classes([vote_key(t) for t in turns], env, flags), flags


def majority_vote_correct(turns: Sequence[Turn], env: Any = None) -> float:
    """Reward of the majority-vote answer among ``turns`` (answers pooled by ``env.same_answer``; see
    ``answer_classes``; the elected answer is the winning class's representative, see ``_class_correct``)."""
    labels, flags = _vote(turns, env)
    return _class_correct(turns, labels, flags)


def majority_vote_curves(
    episodes_by_problem: Dict[str, List[Episode]], env: Any = None,
) -> List[Tuple[int, float, float]]:
    """(budget 2K, parallel accuracy, sequential accuracy) for K = 1, 2, 4, ... with 2K ≤ samples per problem.

    Answers are pooled by ``env.same_answer`` (exact equality without an env). Each problem's first and second
    attempts are clustered once, for the largest budget; smaller budgets use prefixes (``answer_classes`` is
    prefix-stable), so the env is not asked again per budget.
    """
    n = min(len(eps) for eps in episodes_by_problem.values())
    budgets = []
    k = 1
    while 2 * k <= n:
        budgets.append(k)
        k *= 2
    if not budgets:
        return []
    k_max = budgets[-1]
    clustered = []
    for eps in episodes_by_problem.values():
        first = [ep.turns[0] for ep in eps[: 2 * k_max]]
        second = [ep.turns[1] for ep in eps[:k_max]]
        clustered.append((first, *_vote(first, env), second, *_vote(second, env)))
    rows = []
    for k in budgets:
        parallel = [_class_correct(first[: 2 * k], labels1[: 2 * k], ok1[: 2 * k])
                    for first, labels1, ok1, _, _, _ in clustered]
        sequential = [_class_correct(second[:k], labels2[:k], ok2[:k]) for _, _, _, second, labels2, ok2 in clustered]
        rows.append((2 * k, sum(parallel) / len(parallel), sum(sequential) / len(sequential)))
    return rows


def group_by_problem(episodes: Sequence[Episode]) -> Dict[str, List[Episode]]:
    groups: Dict[str, List[Episode]] = defaultdict(list)
    for ep in episodes:
        groups[ep.problem_id].append(ep)
    for eps in groups.values():
        eps.sort(key=lambda e: e.sample_index)
    return dict(groups)


def scaling_tables(episodes: Sequence[Episode], env: Any = None) -> Dict[str, list]:
    """pass@k of first attempts (k = 1..n) and the majority-vote curves, from n sampled episodes per problem.

    ``env``: the environment that verified the episodes; majority vote pools answers it counts as the same
    (``Env.same_answer``). Without one, answers are pooled only when their keys are equal."""
    groups = group_by_problem(episodes)
    n = min(len(eps) for eps in groups.values())
    counts = [int(sum(ep.turns[0].reward >= 0.5 for ep in eps[:n])) for eps in groups.values()]
    return {"pass_at_k": pass_at_k_curve(counts, n), "majority": majority_vote_curves(groups, env)}
