"""Inference-time scaling: pass@k (unbiased), coverage, and majority vote — parallel vs sequential sampling.

pass@k (Chen et al. 2021): with n samples of which c are correct, the probability that at least one of k samples
drawn without replacement is correct, 1 − C(n−c, k) / C(n, k); averaged over problems. Coverage vs samples is the
same curve drawn on a log-scale x axis ("Large Language Monkeys").

Majority vote at equal generation budget B = 2K (SCoRe Figure 1, right):
  parallel:   the most common answer among 2K independent first attempts;
  sequential: the most common answer among K first attempts, each self-corrected once (their K second attempts).
Ties go to the answer whose first occurrence comes earliest in sample order (deterministic).
"""

from __future__ import annotations

from collections import defaultdict
from math import comb
from typing import Dict, Hashable, List, Sequence, Tuple

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


def answer_key(turn: Turn) -> Hashable:
    """What two attempts must share to count as the same answer: the verifier's extracted answer when it reports one."""
    for key in ("answer", "extracted"):
        if turn.info.get(key) is not None:
            return str(turn.info[key])
    return turn.response_text.strip()


def majority_vote(answers: Sequence[Hashable]) -> Hashable:
    """Most common answer; ties go to the answer seen first."""
    counts: Dict[Hashable, int] = defaultdict(int)
    first_seen: Dict[Hashable, int] = {}
    for i, a in enumerate(answers):
        counts[a] += 1
        first_seen.setdefault(a, i)
    return min(counts, key=lambda a: (-counts[a], first_seen[a]))


def _vote_correct(turns: Sequence[Turn]) -> float:
    keys = [answer_key(t) for t in turns]
    winner = majority_vote(keys)
    return max(t.reward for t, k in zip(turns, keys) if k == winner)


def majority_vote_curves(
    episodes_by_problem: Dict[str, List[Episode]],
) -> List[Tuple[int, float, float]]:
    """(budget 2K, parallel accuracy, sequential accuracy) for K = 1, 2, 4, ... with 2K ≤ samples per problem."""
    n = min(len(eps) for eps in episodes_by_problem.values())
    rows = []
    k = 1
    while 2 * k <= n:
        parallel = [_vote_correct([ep.turns[0] for ep in eps[: 2 * k]]) for eps in episodes_by_problem.values()]
        sequential = [_vote_correct([ep.turns[1] for ep in eps[:k]]) for eps in episodes_by_problem.values()]
        rows.append((2 * k, sum(parallel) / len(parallel), sum(sequential) / len(sequential)))
        k *= 2
    return rows


def group_by_problem(episodes: Sequence[Episode]) -> Dict[str, List[Episode]]:
    groups: Dict[str, List[Episode]] = defaultdict(list)
    for ep in episodes:
        groups[ep.problem_id].append(ep)
    for eps in groups.values():
        eps.sort(key=lambda e: e.sample_index)
    return dict(groups)


def scaling_tables(episodes: Sequence[Episode]) -> Dict[str, list]:
    """pass@k of first attempts (k = 1..n) and the majority-vote curves, from n sampled episodes per problem."""
    groups = group_by_problem(episodes)
    n = min(len(eps) for eps in groups.values())
    counts = [int(sum(ep.turns[0].reward >= 0.5 for ep in eps[:n])) for eps in groups.values()]
    return {"pass_at_k": pass_at_k_curve(counts, n), "majority": majority_vote_curves(groups)}
