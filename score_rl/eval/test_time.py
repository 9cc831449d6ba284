"""``score-rl eval ... eval.budgets=[2,4,8,16]``: the test-time compute study, sampled once and estimated per cell.

What is sampled per problem (``chain_plan``): for budgets up to N and chains up to ``eval.budget_max_turns`` turns,
the fewest chains that serve every cell (c, t) of the grid: c chains at least t long for each split c * t of each
budget (budgets 1..16, 16 turns: 8 chains of 1 turn, 4 of 2, 2 of 4, 1 of 8 and 1 of 16: 48 generations, 3x the
largest cell), each group with its own seed; plus ``eval.difficulty_samples`` separate first attempts that rank the
problems by predicted difficulty. Estimators, bins, the compute-optimal choice and the coverage law:
``score_rl/eval/compute_optimal.py``; what the outputs show: docs/evaluation.md.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from score_rl import seeds
from score_rl.envs import Problem
from score_rl.episode import Episode, Turn
from score_rl.eval import compute_optimal as co
from score_rl.eval.scaling import answer_classes, group_by_problem, pass_at_k_curve, settled, vote_key

Scorer = Callable[[Problem, Turn], float]  # w(problem, answer): the weight of an attempt in the weighted vote


def chain_plan(budgets: Sequence[int], max_turns: int) -> List[Tuple[int, int]]:
    """[(chain length, chains of that length)], longest first: the fewest generations serving every cell."""
    need: Dict[int, int] = {}
    for n in budgets:
        for chains, turns in co.splits(n, max_turns, n):
            need[turns] = max(need.get(turns, 0), chains)
    plan, have = [], 0
    for turns in sorted(need, reverse=True):
        if need[turns] > have:
            plan.append((turns, need[turns] - have))
            have = need[turns]
    return plan


def grid(budgets: Sequence[int], max_turns: int) -> Dict[int, List[co.Cell]]:
    return {n: co.splits(n, max_turns, n) for n in budgets}


def problem_chains(pid: str, chains: Sequence[Episode], env: Any, scorer: Optional[Scorer],
                   problem: Optional[Problem] = None) -> co.ProblemChains:
    """One problem's chains as the estimators see them: answer classes pooled over every attempt of every chain
    (``Env.same_answer``), each attempt's own verdict and whether it is settled, the scorer's weights (>= 0)."""
    turns = [t for ep in chains for t in ep.turns]
    flags = settled(turns, env)
    flat = answer_classes([vote_key(t) for t in turns], env, flags)

    def per_chain(values: Sequence) -> List[list]:
        out, at = [], 0
        for ep in chains:
            out.append(list(values[at:at + len(ep.turns)]))
            at += len(ep.turns)
        return out

    weights = [float(scorer(problem, t)) if scorer else 1.0 for t in turns]
    if any(not w >= 0 for w in weights):  # (NaN too)
        raise ValueError(f"eval.scorer gave a weight that is negative or NaN ({min(weights)}) on problem {pid}: "
                         "the weighted vote needs weights >= 0")
    return co.ProblemChains(
        pid, labels=per_chain(flat), reward=per_chain([t.reward for t in turns]), settled=per_chain(flags),
        correct=[[t.reward >= 0.5 for t in ep.turns] for ep in chains], weights=per_chain(weights),
        generated=[[len(t.response_ids) for t in ep.turns] for ep in chains],
        prompt=[[len(t.prompt_ids) for t in ep.turns] for ep in chains])


@dataclass
class ModelStudy:
    """One model's study: per-problem values of every cell and selection, difficulty, tokens, coverage."""

    params: int
    values: Dict[str, Dict[str, Dict[co.Cell, float]]] = field(default_factory=dict)  # selection -> pid -> cell
    predicted: Dict[str, float] = field(default_factory=dict)  # pass@1 on the separate first attempts
    oracle: Dict[str, float] = field(default_factory=dict)  # pass@1 of the scored chains' first turns
    tokens: Dict[co.Cell, Dict[str, float]] = field(default_factory=dict)  # mean over problems
    pass_at_k: List[float] = field(default_factory=list)  # first turns of all chains, k = 1..chains
    turn_coverage: List[float] = field(default_factory=list)  # coverage at turn k, k = 1..max turns
    generations: Dict[str, int] = field(default_factory=dict)  # generated vs what cells use (bench)


def study_model(chains_by_problem: Dict[str, List[Episode]], difficulty: Dict[str, List[Episode]], env: Any,
                budgets: Sequence[int], max_turns: int, params: int, scorer: Optional[Scorer] = None,
                problems: Optional[Dict[str, Problem]] = None, max_subsets: int = 500, seed: int = 0) -> ModelStudy:
    cells = sorted({cell for row in grid(budgets, max_turns).values() for cell in row})
    study = ModelStudy(params)
    selections = ("majority", "oracle") + (("weighted",) if scorer else ())
    reduced = []
    for pid, chains in chains_by_problem.items():
        prob = problem_chains(pid, chains, env, scorer, (problems or {}).get(pid))
        reduced.append(prob)
        # the problem's own stream (its id, not its position): the same values whatever order problems come in
        rng = random.Random(seed * 1_000_003 + zlib.crc32(pid.encode()))
        for sel in selections:
            study.values.setdefault(sel, {})[pid] = {c: co.cell_value(prob, c, sel, max_subsets, rng) for c in cells}
        firsts = [ep.turns[0].reward >= 0.5 for ep in chains]
        study.oracle[pid] = sum(firsts) / len(firsts)
        d = difficulty[pid]
        study.predicted[pid] = sum(ep.turns[0].reward >= 0.5 for ep in d) / len(d)
    for cell in cells:
        per = [co.cell_tokens(p, cell) for p in reduced]
        study.tokens[cell] = {k: sum(t[k] for t in per) / len(per) for k in per[0]}
    n = min(len(ch) for ch in chains_by_problem.values())
    counts = [sum(ep.turns[0].reward >= 0.5 for ep in ch[:n]) for ch in chains_by_problem.values()]
    study.pass_at_k = pass_at_k_curve(counts, n)
    longest = max(len(ep.turns) for ch in chains_by_problem.values() for ep in ch)
    study.turn_coverage = co.sequential_coverage(reduced, min(max_turns, longest))
    largest = max(budgets)
    study.generations = {"generated": sum(len(ep.turns) for ch in chains_by_problem.values() for ep in ch)
                         + sum(len(d) for d in difficulty.values()),
                         "largest_cell": largest * len(chains_by_problem),
                         "grid_if_sampled_per_cell": sum(n for n, row in grid(budgets, max_turns).items()
                                                         for _ in row) * len(chains_by_problem)}
    return study


def sample_for_study(run_eval_episodes, workers, problems: Sequence[Problem], seed: int, temperature: float,
                     budgets: Sequence[int], max_turns: int, difficulty_samples: int, label: str):
    """(chains by problem, difficulty attempts by problem): every chain group and the difficulty samples, sampled
    by ``run_eval_episodes`` (score_rl/eval/evaluation.py's, passed in: this module does not import it)."""
    from score_rl.errors import ConfigError

    chains: Dict[str, List[Episode]] = {p.id: [] for p in problems}
    for length, count in chain_plan(budgets, max_turns):
        try:
            eps = run_eval_episodes(workers, problems, seeds.test_time_chains(seed, length), length, temperature,
                                    samples_per_problem=count,
                                    progress=f"{label}: {count} chain(s) of {length} turn(s)")
        except Exception as err:
            if "max_prompt_tokens" not in str(err):
                raise
            raise ConfigError(f"the test-time study's chains of {length} turns outgrow rollout.max_prompt_tokens: "
                              f"lower eval.budget_max_turns (or raise rollout.max_prompt_tokens) "
                              f"[{str(err).strip().splitlines()[-1]}]") from None
        for pid, group in group_by_problem(eps).items():
            chains[pid] += group
    eps = run_eval_episodes(workers, problems, seeds.test_time_difficulty(seed), 1, temperature,
                            samples_per_problem=difficulty_samples, progress=f"{label}: difficulty samples")
    return chains, group_by_problem(eps)


def make_scorer(spec: Optional[str]) -> Optional[Scorer]:
    """``eval.scorer``: None; "oracle" (the env's own verdict on the attempt: 1 if correct); "critic:DIR", a PPO
    run's value model (``RUN_DIR/final_critic``): V of the state before the attempt's last token, read on the very
    tokens the policy saw and wrote; or a Hugging Face sequence-classification model directory scoring "problem text
    + newline + attempt" (one logit: its sigmoid; more: the probability of the last label)."""
    if not spec:
        return None
    if spec == "oracle":
        return lambda problem, turn: 1.0 if turn.reward >= 0.5 else 0.0
    from pathlib import Path

    from score_rl.errors import ConfigError

    path = spec[len("critic:"):] if spec.startswith("critic:") else spec
    if not Path(path).is_dir():
        raise ConfigError(f"config key 'eval.scorer' must be null, 'oracle', 'critic:DIR' or a model directory; "
                          f"{path!r} is no directory")
    import torch

    if spec.startswith("critic:"):
        from score_rl.learner.critic import load_critic

        if not _has_value_head(Path(path)):
            raise ConfigError(f"config key 'eval.scorer': {path} has no trained value head (score.weight): it is not "
                              "a PPO run's final_critic")
        critic = load_critic(path).eval()

        @torch.no_grad()
        def value(problem: Problem, turn: Turn) -> float:  # V estimates the turn's reward: clipped to [0, 1]
            ids = torch.tensor([list(turn.prompt_ids) + list(turn.response_ids)])
            return min(max(float(critic(input_ids=ids).logits[0, -2, 0]), 0.0), 1.0)
        return value
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec)
    model = AutoModelForSequenceClassification.from_pretrained(spec).eval()

    @torch.no_grad()
    def score(problem: Problem, turn: Turn) -> float:
        text = (problem.text if problem is not None else "") + "\n" + turn.response_text
        logits = model(**tokenizer(text, return_tensors="pt", truncation=True)).logits[0].float()
        return float(torch.sigmoid(logits[0]) if logits.numel() == 1 else torch.softmax(logits, -1)[-1])
    return score


def _has_value_head(path) -> bool:
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as handle:
            if "score.weight" in handle.keys():
                return True
    return False


def count_params(model_path: str) -> int:
    """The parameters a token's forward pass multiplies by, from the safetensors headers (no weights read); else by
    loading the model: every weight but the input embedding (a lookup), the output layer once — a tied one is the
    embedding matrix, counted once whether or not the file also stores lm_head.weight (tie_word_embeddings
    defaults to true, as in transformers)."""
    import json
    from pathlib import Path

    files = sorted(Path(model_path).glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        config = Path(model_path) / "config.json"
        tied = json.loads(config.read_text()).get("tie_word_embeddings", True) if config.is_file() else True
        total = 0
        for f in files:
            with safe_open(str(f), "pt") as handle:
                for key in handle.keys():
                    skip = key == "lm_head.weight" if tied else key.endswith("embed_tokens.weight")
                    if not skip:
                        total += math.prod(handle.get_slice(key).get_shape())
        return total
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path)
    embedding = model.get_input_embeddings().weight
    tied = embedding is model.get_output_embeddings().weight
    return sum(p.numel() for p in model.parameters()) - (0 if tied else embedding.numel())


# --- the report ----------------------------------------------------------------------------------------------------
POLICIES = ("compute-optimal", "parallel", "sequential")


def policy_rows(study: ModelStudy, budgets: Sequence[int], max_turns: int, bins: int = 5, seed: int = 0,
                selection: str = "majority", reps: int = 1000) -> List[Dict[str, Any]]:
    """Per difficulty kind, budget, bin ("all" too) and policy: mean accuracy and a 95 % bootstrap interval over the
    problems. Parallel is N chains of 1 turn, sequential 1 chain of N turns (where sampled), both by ``selection``.
    Compute-optimal's interval resamples the whole procedure (problems, halves, choices); its row "all" also gives
    the paired difference to parallel ("vs_parallel_low/high") and the FLOPs per problem of the splits it chose."""
    values = study.values[selection]
    half = co.halves(list(values), seed)
    rows = []
    for kind, difficulty in (("predicted", study.predicted), ("oracle", study.oracle)):
        binned = co.difficulty_bins(difficulty, bins, seed)
        for n, cells in grid(budgets, max_turns).items():
            optimal, choices = co.compute_optimal(values, cells, binned, half)
            spread = co.bootstrap_compute_optimal(values, cells, binned, reps, seed,
                                                  against=(n, 1) if (n, 1) in cells else None)
            flops = [co.flops(study.params, study.tokens[choices[(binned[p], half[p])]])["flops_reused"]
                     for p in values]
            per_policy = {"compute-optimal": optimal,
                          "parallel": {p: v[(n, 1)] for p, v in values.items()} if (n, 1) in cells else None,
                          "sequential": {p: v[(1, n)] for p, v in values.items()} if (1, n) in cells else None}
            for b in list(range(bins)) + ["all"]:
                members = [p for p in values if b == "all" or binned[p] == b]
                for policy in POLICIES:
                    scores = per_policy[policy]
                    if scores is None or not members:
                        continue
                    mean, lo, hi = co.bootstrap_ci([scores[p] for p in members], reps, seed)
                    row = {"difficulty": kind, "budget": n, "bin": b, "policy": policy, "accuracy": mean,
                           "low": lo, "high": hi, "problems": len(members), "chosen": ""}
                    if policy == "compute-optimal":
                        row["low"], row["high"] = spread.get(b, (math.nan, math.nan))
                        row["chosen"] = " ".join(sorted({f"{c}x{t}" for (bb, _), (c, t) in choices.items()
                                                         if b in ("all", bb)}))
                        if b == "all":
                            row["vs_parallel_low"], row["vs_parallel_high"] = spread.get("minus", (None, None))
                            row["flops_reused"] = sum(flops) / len(flops)
                    rows.append(row)
    return rows


def grid_rows(study: ModelStudy, budgets: Sequence[int], max_turns: int, seed: int = 0,
              reps: int = 1000) -> List[Dict[str, Any]]:
    """Every cell and selection: accuracy with its interval, tokens and FLOPs per problem."""
    rows = []
    for n, cells in grid(budgets, max_turns).items():
        for cell in cells:
            tok = study.tokens[cell]
            fl = co.flops(study.params, tok)
            for sel, values in study.values.items():
                mean, lo, hi = co.bootstrap_ci([v[cell] for v in values.values()], reps, seed)
                rows.append({"budget": n, "chains": cell[0], "turns": cell[1], "selection": sel, "accuracy": mean,
                             "low": lo, "high": hi, **tok, **fl})
    return rows
