"""score-rl eval and plot: side-by-side K-turn metrics, per-problem records, scaling CSVs and readable PNGs."""

from __future__ import annotations

import json

from score_rl.eval.evaluation import TRAINED_MARKER, evaluate_models, parse_model_args
from score_rl.eval.plots import plot_training_curves


def test_eval_writes_table_records_scaling_and_plots(cfg, tmp_path, tiny_model_path):
    cfg.ray.enabled = False
    cfg.eval.num_problems, cfg.eval.num_turns, cfg.eval.scaling_samples = 5, 3, 4
    cfg.eval.output_dir = str(tmp_path / "out")
    report = evaluate_models(cfg, parse_model_args([f"base={tiny_model_path}"]), log=lambda *_: None)
    assert list(report.metrics) == ["base (Self-Refine)"]
    assert {"acc_t1", "acc_t2", "acc_t3", "delta", "delta_i2c", "delta_c2i", "fix_rate"} <= set(report.metrics[
        "base (Self-Refine)"])
    assert "Acc@t3" in report.table()
    out = tmp_path / "out"
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(records) == 5 and all(len(r["attempts"]) == 3 for r in records)
    assert "Self-Refine" in (out / "summary.md").read_text()
    for name in ("pass_at_k.png", "majority_vote.png", "pass_at_k.csv", "majority_vote.csv", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "pass_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trained_models_are_not_labelled_self_refine(tmp_path, tiny_model_path):
    import shutil

    trained = tmp_path / "trained"
    shutil.copytree(tiny_model_path, trained)
    (trained / TRAINED_MARKER).write_text("{}")
    from score_rl.eval.evaluation import model_label

    assert model_label("t", str(trained)) == "t"
    assert model_label("b", tiny_model_path) == "b (Self-Refine)"


def test_plot_training_curves_from_metrics_jsonl(tmp_path):
    rows = [{"step": s, "stage": 1 if s < 3 else 2, "acc_t1": 0.5, "acc_t2": 0.5 + s / 20, "delta": s / 20,
             "delta_i2c": s / 15, "delta_c2i": 0.02, "kl_turn1": 0.01 * s, "kl_turn2": 0.02} for s in range(6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = plot_training_curves(tmp_path)
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"


def test_eval_majority_votes_pool_answers_by_the_env_equivalence(tmp_path, monkeypatch):
    """evaluate_models hands its env to the scaling tables (math: 1/2 = 0.5 = \\frac{1}{2}) and closes it after."""
    import score_rl.envs as envs
    import score_rl.eval.evaluation as evaluation
    from score_rl.episode import Episode, Turn
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path)
    cfg.ray.enabled, cfg.env.name, cfg.env.params = False, "math", {"workers": 1, "timeout_s": 10.0}
    cfg.eval.num_problems, cfg.eval.num_turns, cfg.eval.scaling_samples, cfg.eval.output_dir = 1, 2, 4, None
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    answers = [(r"\frac{1}{2}", 1.0), ("3", 0.0), ("0.5", 1.0), ("3", 0.0)]  # raw strings: "3" wins; pooled: a tie

    def fake_episodes(workers, problems, seed, num_turns, temperature, samples_per_problem=1, progress=None):
        return [Episode(problems[0].id, i, [Turn([], [], [], a, r, info={"extracted": a})] * num_turns)
                for i, (a, r) in enumerate(answers[:samples_per_problem])]

    made = []
    monkeypatch.setattr(envs, "make_env", lambda *a: made.append(envs.base.make_env(*a)) or made[-1])
    monkeypatch.setattr(evaluation, "make_workers", lambda cfg, path: None)
    monkeypatch.setattr(evaluation, "release", lambda workers: None)
    monkeypatch.setattr(evaluation, "run_eval_episodes", fake_episodes)
    report = evaluate_models(cfg, [("m", str(tmp_path / "model"))], log=lambda *_: None)
    # budget 4: the 1/2 class (\frac{1}{2}, 0.5) ties with "3" and was seen first, so the vote is right
    assert report.scaling["m (Self-Refine)"]["majority"] == [(2, 1.0, 1.0), (4, 1.0, 1.0)]
    assert made[0]._pool is None, "the env (and its verifier pool) is closed after the eval"
