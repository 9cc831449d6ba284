"""Test-time compute: sequential x parallel budget grid, difficulty bins, compute-optimal choice, coverage law, FLOPs.

A *chain* is one K-turn self-correction episode (turn k > 1 appends the correction instruction); a *cell* (c, t)
of the grid spends N = c * t generations per problem: c independent chains of t turns each. Selection in a cell
looks at the c chains' last answers (turn t):

    majority  the largest class of answers (pooled by ``Env.same_answer``); a tie is split evenly among the tied
              classes (the expectation under a uniformly random tie-break, so the estimate does not depend on the
              order the chains were sampled in). The elected class is right by the verdicts of its members *in the
              vote*: their mean settled reward (0 if none is settled), never an attempt outside the cell
    weighted  the class with the largest summed weight w(problem, answer) >= 0 of its members, the larger class
              on equal weight (so constant or all-zero weights give ``majority``)
    oracle    whether any of the c * t generations is correct: coverage, the upper bound of both votes

Estimates reuse one set of sampled chains for every cell. The chains of a problem are i.i.d. (same policy, prompt
and temperature, independent seeds) and a chain's first t turns are distributed exactly as a t-turn chain, so for a
cell (c, t) any c of the chains at least t long form an unbiased sample of the cell; the estimate averages over
all C(m, c) subsets of the m eligible chains (exact) or, past ``max_subsets``, over that many uniformly random
subsets (still unbiased, with a little Monte-Carlo variance). Oracle has a closed form (below), as pass@k does.

Difficulty (Snell et al. 2024): a problem's pass@1; 5 bins of equal size by rank, easiest first (ties broken by a
seeded shuffle). *Predicted* difficulty uses separate first attempts (``difficulty_samples``), never the chains
scored; *oracle* difficulty uses the scored chains' own first turns, for comparison.

Compute-optimal (two-fold cross-fitting): problems are split in two seeded halves; for each budget and bin, the
split with the best mean accuracy on one half is the choice for the other half, and each problem is scored by the
choice made on the half it is not in. No problem's own outcomes ever select its split.

Coverage law (Brown et al. 2024): -log(pass@k) ~= a * k^(-b), fitted by least squares on log(-log pass@k) vs
log k over the k where 0 < pass@k < 1; the k reaching a target coverage C is (a / -log C)^(1/b).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Dict, List, Optional, Sequence, Tuple

Cell = Tuple[int, int]  # (chains, turns per chain)


@dataclass
class ProblemChains:
    """One problem's sampled chains, reduced to what the grid needs. Lists are indexed [chain][turn]."""

    problem_id: str
    labels: List[List[int]]  # answer class of each attempt (classes pooled by the env's equivalence)
    reward: List[List[float]]  # the attempt's own verdict (the verifier's reward)
    settled: List[List[bool]]  # whether that verdict says something (not a verifier timeout / sandbox error)
    correct: List[List[bool]]  # reward >= 0.5
    weights: List[List[float]]  # the scorer's w(problem, answer) >= 0 of each attempt (1.0 without a scorer)
    generated: List[List[int]] = field(default_factory=list)  # response tokens of each attempt
    prompt: List[List[int]] = field(default_factory=list)  # the whole context each attempt was sampled from

    def eligible(self, turns: int) -> List[int]:
        """The chains at least ``turns`` long."""
        return [i for i, chain in enumerate(self.labels) if len(chain) >= turns]


def splits(budget: int, max_turns: int, max_chains: int) -> List[Cell]:
    """Every (chains, turns) with chains * turns == budget that the sampled chains can serve, most parallel first."""
    return [(budget // t, t) for t in range(1, budget + 1)
            if budget % t == 0 and t <= max_turns and budget // t <= max_chains]


def _subsets(pool: Sequence[int], size: int, max_subsets: int, rng: random.Random) -> List[Tuple[int, ...]]:
    if math.comb(len(pool), size) <= max_subsets:
        return list(combinations(pool, size))
    return [tuple(rng.sample(list(pool), size)) for _ in range(max_subsets)]


def _vote_value(problem: ProblemChains, chosen: Sequence[int], turn: int, weighted: bool) -> float:
    """Reward of the (weighted) vote among the chosen chains' answers at ``turn`` (0-based); ties split evenly. The
    elected class's reward: the mean of its members' settled verdicts in this vote (0 if none is settled)."""
    score: Dict[int, List[float]] = {}  # label -> [summed weight, members]
    verdicts: Dict[int, List[float]] = {}
    for i in chosen:
        label = problem.labels[i][turn]
        entry = score.setdefault(label, [0.0, 0])
        entry[0] += problem.weights[i][turn] if weighted else 0.0
        entry[1] += 1
        if problem.settled[i][turn]:
            verdicts.setdefault(label, []).append(problem.reward[i][turn])
    best = max((w, n) for w, n in score.values())
    tied = [label for label, (w, n) in score.items() if n == best[1] and w >= best[0] - 1e-12 * max(1.0, best[0])]
    return sum(sum(verdicts.get(label, [0.0])) / len(verdicts.get(label, [0.0])) for label in tied) / len(tied)


def cell_value(problem: ProblemChains, cell: Cell, selection: str, max_subsets: int = 2000,
               rng: Optional[random.Random] = None) -> float:
    """Expected accuracy of ``selection`` ("majority", "weighted" or "oracle") in a cell, for one problem."""
    chains, turns = cell
    pool = problem.eligible(turns)
    if len(pool) < chains:
        raise ValueError(f"cell {cell} needs {chains} chains of >= {turns} turns; problem {problem.problem_id!r} "
                         f"has {len(pool)}")
    if selection == "oracle":  # P(some chosen chain is correct within `turns` turns), as in pass@k
        covered = sum(any(problem.correct[i][:turns]) for i in pool)
        return 1.0 - math.comb(len(pool) - covered, chains) / math.comb(len(pool), chains)
    if selection not in ("majority", "weighted"):
        raise ValueError(f"unknown selection {selection!r} (majority, weighted, oracle)")
    subsets = _subsets(pool, chains, max_subsets, rng or random.Random(0))
    return sum(_vote_value(problem, s, turns - 1, selection == "weighted") for s in subsets) / len(subsets)


def cell_tokens(problem: ProblemChains, cell: Cell) -> Dict[str, float]:
    """Expected tokens per problem in a cell: generated, and prefilled without / with prefix reuse.

    Without reuse each attempt prefills its whole context. With reuse (a KV cache kept along a chain, one prompt
    shared by the chains) a chain's turn k prefills only what is new since turn k - 1 (the correction instruction),
    and the problem's prompt is prefilled once for all chains. Expectations over the eligible chains: a sum over c
    uniformly chosen chains is c times their mean.
    """
    chains, turns = cell
    pool = problem.eligible(turns)
    gen = sum(sum(problem.generated[i][:turns]) for i in pool) / len(pool)
    whole = sum(sum(problem.prompt[i][:turns]) for i in pool) / len(pool)
    new = sum(sum(problem.prompt[i][k] - problem.prompt[i][k - 1] - problem.generated[i][k - 1]
                  for k in range(1, turns)) for i in pool) / len(pool)
    first = sum(problem.prompt[i][0] for i in pool) / len(pool)
    return {"generated": chains * gen, "prefill": chains * whole, "prefill_reused": first + chains * new}


def flops(params: int, tokens: Dict[str, float]) -> Dict[str, float]:
    """2 * params FLOPs per token processed (a forward pass; attention's context-length term left out)."""
    return {"flops": 2.0 * params * (tokens["generated"] + tokens["prefill"]),
            "flops_reused": 2.0 * params * (tokens["generated"] + tokens["prefill_reused"])}


# --- difficulty, halves, the compute-optimal choice ----------------------------------------------------------------
def difficulty_bins(pass_at_1: Dict[str, float], bins: int = 5, seed: int = 0) -> Dict[str, int]:
    """Bin 0 = easiest (highest pass@1) ... bins - 1 = hardest; equal sizes by rank, ties in a seeded order."""
    order = sorted(pass_at_1)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda pid: -pass_at_1[pid])  # stable: ties keep the shuffled order
    return {pid: min(rank * bins // len(order), bins - 1) for rank, pid in enumerate(order)}


def halves(problem_ids: Sequence[str], seed: int = 0) -> Dict[str, int]:
    """Each problem's half (0 or 1), seeded, sizes differing by at most one."""
    order = sorted(problem_ids)
    random.Random(seed).shuffle(order)
    return {pid: rank % 2 for rank, pid in enumerate(order)}


def compute_optimal(values: Dict[str, Dict[Cell, float]], candidates: Sequence[Cell], bins: Dict[str, int],
                    half: Dict[str, int]) -> Tuple[Dict[str, float], Dict[Tuple[int, int], Cell]]:
    """Per problem, the value of the split chosen for its bin on the *other* half; and the choices ((bin, half
    scored) -> cell). A bin with no problem in the selecting half falls back to the selecting half's overall best."""
    def best(pids: List[str]) -> Cell:
        return candidates[_choose([sum(values[p][c] for p in pids) / len(pids) for c in candidates], candidates)]

    scored: Dict[str, float] = {}
    choices: Dict[Tuple[int, int], Cell] = {}
    for b in sorted(set(bins.values())):
        for h in (0, 1):
            selecting = [p for p in values if half[p] != h and bins[p] == b] or \
                        [p for p in values if half[p] != h]
            if not selecting:
                raise ValueError("the compute-optimal choice needs problems in both halves (at least 2 problems)")
            choice = choices[(b, h)] = best(selecting)
            for p in values:
                if half[p] == h and bins[p] == b:
                    scored[p] = values[p][choice]
    return scored, choices


def _choose(means: Sequence[float], candidates: Sequence[Cell]) -> int:
    """The best split by mean accuracy; on a tie the one with fewest turns (the most parallel)."""
    return max(range(len(candidates)), key=lambda j: (means[j], -candidates[j][1]))


def bootstrap_compute_optimal(values: Dict[str, Dict[Cell, float]], candidates: Sequence[Cell],
                              bins: Dict[str, int], reps: int = 1000, seed: int = 0,
                              against: Optional[Cell] = None, level: float = 0.95) -> Dict[Any, Tuple[float, float]]:
    """Percentile intervals of compute-optimal accuracy with the *whole procedure* resampled: each replicate draws
    problems with replacement, splits the drawn problems into new random halves (copies of one problem share a
    half, so none selects for itself) and chooses again per bin. Keys: each bin, "all", and "minus" (compute-optimal
    minus the ``against`` split on the same replicate: the paired difference), each (low, high)."""
    import numpy as np

    pids = sorted(values)
    table = np.array([[values[p][c] for c in candidates] for p in pids])
    bin_of = np.array([bins[p] for p in pids])
    rng = np.random.default_rng(seed)
    base = candidates.index(against) if against in candidates else None
    draws: Dict[Any, List[float]] = {}
    for _ in range(reps):
        idx = rng.integers(0, len(pids), len(pids))
        v, b = table[idx], bin_of[idx]
        half = (rng.permutation(len(pids)) % 2)[idx]
        scored = np.empty(len(idx))
        for bb in np.unique(b):
            for h in (0, 1):
                target = (b == bb) & (half == h)
                if not target.any():
                    continue
                pool = ((b == bb) & (half != h)) if ((b == bb) & (half != h)).any() else (half != h)
                if not pool.any():
                    pool = ~target  # one half empty (a replicate of very few problems): the rest chooses
                scored[target] = v[target, _choose(v[pool].mean(0), candidates) if pool.any() else 0]
        draws.setdefault("all", []).append(float(scored.mean()))
        for bb in np.unique(b):
            draws.setdefault(int(bb), []).append(float(scored[b == bb].mean()))
        if base is not None:
            draws.setdefault("minus", []).append(float(scored.mean() - v[:, base].mean()))
    lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: (float(np.percentile(x, lo_q)), float(np.percentile(x, hi_q))) for k, x in draws.items()}


def bootstrap_ci(per_problem: Sequence[float], reps: int = 1000, seed: int = 0,
                 level: float = 0.95) -> Tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap over problems."""
    xs = list(per_problem)
    if not xs:
        return math.nan, math.nan, math.nan
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(xs) for _ in xs) / len(xs) for _ in range(reps))
    lo, hi = means[int((1 - level) / 2 * reps)], means[min(int((1 + level) / 2 * reps), reps - 1)]
    return sum(xs) / len(xs), lo, hi


# --- coverage law --------------------------------------------------------------------------------------------------
@dataclass
class CoverageFit:
    a: float
    b: float
    rmse: float  # of the fitted pass@k against the data, over the points fitted
    points: int

    def coverage(self, k: float) -> float:
        return math.exp(-self.a * k ** (-self.b))

    def k_for(self, target: float) -> float:
        """Samples needed for coverage ``target`` (inf if the law never reaches it, or past 1e300)."""
        if not 0 < target < 1 or self.b <= 0:
            return math.inf
        log_k = (math.log(self.a) - math.log(-math.log(target))) / self.b
        return math.exp(log_k) if log_k < 690 else math.inf


def fit_coverage_law(ks: Sequence[float], coverage: Sequence[float]) -> Optional[CoverageFit]:
    """Least squares of log(-log pass@k) = log a - b log k over 0 < pass@k < 1; None with fewer than 2 points."""
    pts = [(math.log(k), math.log(-math.log(c))) for k, c in zip(ks, coverage) if 0 < c < 1]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    a, b = math.exp(my - slope * mx), -slope
    fit = CoverageFit(a, b, 0.0, n)
    fit.rmse = math.sqrt(sum((fit.coverage(k) - c) ** 2 for k, c in zip(ks, coverage) if 0 < c < 1) / n)
    return fit


def sequential_coverage(problems: Sequence[ProblemChains], max_turns: int) -> List[float]:
    """Coverage at turn k (k = 1..max_turns): the share of chains with a correct attempt among their first k turns,
    averaged over each problem's chains at least k long, then over problems."""
    out = []
    for k in range(1, max_turns + 1):
        per = []
        for p in problems:
            pool = p.eligible(k)
            if pool:
                per.append(sum(any(p.correct[i][:k]) for i in pool) / len(pool))
        out.append(sum(per) / len(per) if per else math.nan)
    return out
