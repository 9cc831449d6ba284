"""score-rl eval's test-time compute study (score_rl/eval/test_time.py, test_time_report.py): what is sampled, how
episodes become chains, and the files an eval with eval.budgets writes."""

from __future__ import annotations

import csv
import random

import pytest

from score_rl.episode import Episode, Turn
from score_rl.eval import test_time
from score_rl.eval.evaluation import evaluate_models, parse_model_args


def test_the_chain_plan_serves_every_cell_with_the_fewest_generations():
    plan = test_time.chain_plan([1, 2, 4, 8, 16], 16)
    assert plan == [(16, 1), (8, 1), (4, 2), (2, 4), (1, 8)]
    assert sum(length * count for length, count in plan) == 48
    for cells in test_time.grid([1, 2, 4, 8, 16], 16).values():
        for chains, turns in cells:
            assert sum(count for length, count in plan if length >= turns) >= chains
    assert test_time.chain_plan([16], 4) == [(4, 4), (2, 4), (1, 8)]  # 4x4, 8x2, 16x1
    assert test_time.chain_plan([6], 6) == [(6, 1), (3, 1), (2, 1), (1, 3)]


def _turn(answer, correct, prompt=10, gen=3):
    return Turn(list(range(prompt)), list(range(gen)), [0.0] * gen, f"= {answer}", float(correct),
                info={"extracted": str(answer)})


def _episodes(pid, answers_per_chain, truth):
    return [Episode(pid, i, [_turn(a, a == truth, 10 + 20 * k, 3) for k, a in enumerate(chain)])
            for i, chain in enumerate(answers_per_chain)]


def test_episodes_become_chains_with_classes_pooled_over_every_attempt():
    chains = _episodes("p", [[5, 7, 7], [7], [6]], truth=7)
    prob = test_time.problem_chains("p", chains, None, None)
    assert prob.labels == [[0, 1, 1], [1], [2]]
    assert prob.reward == [[0.0, 1.0, 1.0], [1.0], [0.0]] and prob.settled == [[True] * 3, [True], [True]]
    assert prob.correct == [[False, True, True], [True], [False]]
    assert prob.generated == [[3, 3, 3], [3], [3]] and prob.prompt == [[10, 30, 50], [10], [10]]
    oracle = test_time.problem_chains("p", chains, None, test_time.make_scorer("oracle"))
    assert oracle.weights == [[0.0, 1.0, 1.0], [1.0], [0.0]]


def test_a_study_of_synthetic_chains_reports_every_policy_bin_and_budget():
    rng = random.Random(0)
    chains, difficulty = {}, {}
    for i in range(40):
        skill = i / 40
        pick = lambda skill=skill: 7 if rng.random() < skill else rng.choice([1, 2, 3])  # noqa: E731
        chains[f"p{i}"] = _episodes(f"p{i}", [[pick() for _ in range(n)] for n, c in
                                              test_time.chain_plan([1, 2, 4], 4) for _ in range(c)], truth=7)
        difficulty[f"p{i}"] = _episodes(f"p{i}", [[pick()] for _ in range(4)], truth=7)
    study = test_time.study_model(chains, difficulty, None, [1, 2, 4], 4, params=1000,
                                  scorer=test_time.make_scorer("oracle"))
    rows = test_time.policy_rows(study, [1, 2, 4], 4, bins=5, reps=100)
    overall = {(r["difficulty"], r["budget"], r["policy"]): r for r in rows if r["bin"] == "all"}
    assert {(k, n, p) for k in ("predicted", "oracle") for n in (1, 2, 4)
            for p in ("compute-optimal", "parallel", "sequential")} <= set(overall)
    for r in rows:
        assert r["low"] <= r["accuracy"] <= r["high"]
    grid = test_time.grid_rows(study, [1, 2, 4], 4, reps=100)
    by = {(r["chains"], r["turns"], r["selection"]): r for r in grid}
    for chains_, turns in [(4, 1), (2, 2), (1, 4)]:
        assert by[(chains_, turns, "oracle")]["accuracy"] >= by[(chains_, turns, "majority")]["accuracy"] - 1e-12
        assert by[(chains_, turns, "majority")]["generated"] == 3 * chains_ * turns
    assert study.generations["generated"] == 40 * (4 + 2 + 1 * 2 + 4)  # plan (4,1),(2,1),(1,2) + difficulty
    assert len(study.pass_at_k) == 4 and len(study.turn_coverage) == 4


def test_a_scorer_that_is_no_model_directory_is_one_clear_error(tmp_path):
    from score_rl.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.scorer"):
        test_time.make_scorer(str(tmp_path / "nowhere"))


def test_eval_with_budgets_writes_the_study(cfg, tmp_path, tiny_model_path):
    cfg.ray.enabled = False
    cfg.eval.num_problems, cfg.eval.budgets, cfg.eval.budget_max_turns = 6, [1, 2, 4], 4
    cfg.eval.difficulty_samples, cfg.eval.scorer = 2, "oracle"
    cfg.eval.output_dir = str(tmp_path / "out")
    report = evaluate_models(cfg, parse_model_args([f"base={tiny_model_path}"]), log=lambda *_: None)
    study = report.test_time["base (Self-Refine)"]
    assert set(study.values) == {"majority", "oracle", "weighted"} and len(study.predicted) == 6
    out = tmp_path / "out"
    for name in ("compute_optimal.csv", "compute_optimal.md", "compute_optimal.png", "coverage_fit.csv",
                 "coverage_fit.png", "test_time_grid.csv"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "compute_optimal.csv")))
    assert {r["policy"] for r in rows} == {"compute-optimal", "parallel", "sequential"}
    assert "## Coverage law" in (out / "compute_optimal.md").read_text()


def test_flops_parameters_count_the_output_layer_once_and_not_the_input_embedding(tmp_path):
    import json

    import torch
    from safetensors.torch import save_file

    weights = {"model.embed_tokens.weight": torch.zeros(10, 4), "lm_head.weight": torch.zeros(10, 4),
               "model.norm.weight": torch.zeros(4)}
    save_file(weights, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    assert test_time.count_params(str(tmp_path)) == 44
    (tmp_path / "config.json").write_text(json.dumps({"tie_word_embeddings": False}))
    assert test_time.count_params(str(tmp_path)) == 44, "untied: the input embedding is a lookup, not a matmul"


def test_the_exchange_rate_names_the_budget_where_the_small_model_reaches_the_large_one_greedy():
    from score_rl.eval.test_time_report import exchange_rate

    studies = {"small": test_time.ModelStudy(params=1000), "large": test_time.ModelStudy(params=4000),
               "same": test_time.ModelStudy(params=1100)}
    studies["large"].tokens[(1, 1)] = {"generated": 5, "prefill": 10, "prefill_reused": 10}

    def row(n, acc, low):
        return {"budget": n, "accuracy": acc, "low": low, "high": acc + 0.05, "flops_reused": 1000.0 * n}
    policy = {"small": {1: row(1, 0.4, 0.35), 2: row(2, 0.65, 0.55), 4: row(4, 0.7, 0.62)},
              "large": {1: row(1, 0.6, 0.55)}, "same": {1: row(1, 0.5, 0.45)}}
    lines = exchange_rate(studies, {"small": 0.4, "large": 0.6, "same": 0.5}, [1, 2, 4], policy)
    assert len(lines) == 2, "models of about one size are not compared"
    assert lines[0].startswith("- small (1,000 parameters) vs large's Acc@t1 0.600 (4,000 parameters, 1.2e+05 FLOPs")
    assert "reached at budget 4" in lines[0], "budget 2's point estimate passes, its interval does not"
    assert "same (1,100 parameters)" in lines[1] and "not reached" in lines[1]


def test_a_ppo_critic_scores_an_attempt_by_the_value_before_its_last_token(tmp_path, tiny_model_path):
    import torch

    from score_rl.learner.critic import load_critic

    critic = load_critic(tiny_model_path)
    torch.manual_seed(0)
    with torch.no_grad():
        critic.score.weight.normal_()
    critic.save_pretrained(tmp_path / "critic")
    scorer = test_time.make_scorer(f"critic:{tmp_path / 'critic'}")
    turn = Turn([5, 6, 7], [8, 9], [0.0, 0.0], "x", 1.0)
    with torch.no_grad():
        expected = float(critic(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits[0, 3, 0])
    assert scorer(None, turn) == pytest.approx(expected, abs=1e-5) and expected != 0.0


def test_a_study_is_the_same_whatever_order_its_problems_and_chains_come_in():
    """Random subsets (past max_subsets) draw from each problem's own stream: reordering the problems, or the chains
    of a problem, changes no value (the chains of one cell are exchangeable)."""
    rng = random.Random(1)
    plan = test_time.chain_plan([1, 2, 4, 8], 4)
    chains = {f"p{i}": _episodes(f"p{i}", [[rng.choice([7, 7, 1, 2]) for _ in range(n)] for n, c in plan
                                           for _ in range(c)], truth=7) for i in range(12)}
    difficulty = {p: _episodes(p, [[7], [1]], truth=7) for p in chains}

    def values(order, flip):
        ordered = {p: (list(reversed(chains[p])) if flip else chains[p]) for p in order}
        return test_time.study_model(ordered, difficulty, None, [1, 2, 4, 8], 4, params=10, max_subsets=5).values

    reference = values(sorted(chains), False)
    assert values(sorted(chains, reverse=True), False) == reference
    exact = test_time.study_model(chains, difficulty, None, [1, 2, 4, 8], 4, params=10, max_subsets=10 ** 6).values
    flipped = {p: (list(reversed(c))) for p, c in chains.items()}
    assert test_time.study_model(flipped, difficulty, None, [1, 2, 4, 8], 4, params=10,
                                 max_subsets=10 ** 6).values == exact
