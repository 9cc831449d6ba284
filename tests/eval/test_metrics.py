"""Self-correction metrics (score_rl/eval/metrics.py) on hand-made episodes."""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import pytest

from score_rl.episode import Episode, Turn
from score_rl.eval.metrics import format_table, self_correction_metrics


def _episode(rewards: Sequence[float], texts: Sequence[str], idx: int = 0) -> Episode:
    turns = [Turn(prompt_ids=[1], response_ids=[2], sampling_logprobs=[-0.1], response_text=x, reward=float(r))
             for r, x in zip(rewards, texts)]
    return Episode(problem_id=f"p{idx}", sample_index=0, turns=turns)


# (r1, r2, attempt-1 text, attempt-2 text, difflib similarity of the stripped texts)
CASES: Sequence[Tuple[int, int, str, str, float]] = [
    (0, 0, "12", "12", 1.0),  # wrong, repeated
    (0, 0, "12", "13", 0.5),  # wrong, changed to another wrong answer
    (0, 1, "75", "85", 0.5),  # fixed (i -> c)
    (1, 0, "46", "99", 0.0),  # broken (c -> i)
    (1, 0, "50", "60", 0.5),  # broken (c -> i)
    (1, 1, "30", " 30\n", 1.0),  # right, repeated (whitespace differences do not count as a change)
    (1, 1, "41", "41", 1.0),
    (1, 1, "22", "22", 1.0),
]
N = len(CASES)  # 8 problems: 5 right at t1, 4 right at t2, 1 fixed, 2 broken, 4 unchanged


@pytest.fixture
def episodes():
    return [_episode((r1, r2), (a, b), i) for i, (r1, r2, a, b, _) in enumerate(CASES)]


def test_accuracies(episodes):
    m = self_correction_metrics(episodes)
    assert m["acc_t1"] == pytest.approx(5 / 8), "acc_t1 = share of problems right at attempt 1"
    assert m["acc_t2"] == pytest.approx(4 / 8), "acc_t2 = share of problems right at attempt 2"
    assert m["delta"] == pytest.approx(-1 / 8), "delta = acc_t2 - acc_t1"


def test_flip_deltas_are_fractions_of_all_problems(episodes):
    m = self_correction_metrics(episodes)
    assert m["delta_i2c"] == pytest.approx(1 / 8), "delta_i2c = #(wrong->right) / #ALL problems (not / #wrong)"
    assert m["delta_c2i"] == pytest.approx(2 / 8), "delta_c2i = #(right->wrong) / #ALL problems (not / #right)"
    assert m["delta"] == pytest.approx(m["delta_i2c"] - m["delta_c2i"]), "binary rewards: delta = i2c - c2i"


def test_fix_and_break_rates_are_conditional(episodes):
    m = self_correction_metrics(episodes)
    assert m["fix_rate"] == pytest.approx(1 / 3), "fix_rate = #(wrong->right) / #(wrong at t1)"
    assert m["break_rate"] == pytest.approx(2 / 5), "break_rate = #(right->wrong) / #(right at t1)"


def test_unchanged_and_edit_ratio(episodes):
    m = self_correction_metrics(episodes)
    assert m["unchanged"] == pytest.approx(4 / 8), "unchanged = share of second answers equal to the first (stripped)"
    assert m["edit_ratio"] == pytest.approx(sum(c[4] for c in CASES) / N), "edit_ratio = mean similarity"


def test_full_collapse_is_detected():
    eps = [_episode((r, r), (f"{i}", f"{i}"), i) for i, r in enumerate([0, 1, 1, 0])]
    m = self_correction_metrics(eps)
    assert m["unchanged"] == 1.0 and m["edit_ratio"] == 1.0
    assert m["delta"] == 0.0 and m["delta_i2c"] == 0.0 and m["delta_c2i"] == 0.0


def test_rates_are_nan_without_a_conditioning_case():
    all_right = self_correction_metrics([_episode((1, 1), ("1", "1")), _episode((1, 0), ("1", "2"), 1)])
    assert math.isnan(all_right["fix_rate"]), "fix_rate is undefined when no first attempt is wrong"
    assert all_right["break_rate"] == pytest.approx(0.5)
    all_wrong = self_correction_metrics([_episode((0, 1), ("1", "2")), _episode((0, 0), ("3", "3"), 1)])
    assert math.isnan(all_wrong["break_rate"]), "break_rate is undefined when no first attempt is right"
    assert all_wrong["fix_rate"] == pytest.approx(0.5)


def test_three_turn_episodes_report_acc_t3():
    eps = [
        _episode((0, 0, 1), ("1", "1", "2"), 0),
        _episode((0, 1, 1), ("1", "2", "2"), 1),
        _episode((1, 1, 0), ("1", "1", "3"), 2),
        _episode((0, 0, 0), ("4", "5", "6"), 3),
    ]
    m = self_correction_metrics(eps)
    assert m["acc_t1"] == pytest.approx(1 / 4)
    assert m["acc_t2"] == pytest.approx(2 / 4)
    assert m["acc_t3"] == pytest.approx(2 / 4), "K=3 turns must report acc_t3"
    assert m["delta"] == pytest.approx(1 / 4), "delta stays acc_t2 - acc_t1"


def test_single_turn_episodes_report_only_accuracy():
    m = self_correction_metrics([_episode((1,), ("1",)), _episode((0,), ("2",), 1)])
    assert m == {"acc_t1": 0.5}


def test_no_episodes_is_an_error():
    with pytest.raises(ValueError):
        self_correction_metrics([])


def test_format_table_renders_names_and_percentages(episodes):
    base = self_correction_metrics(episodes)
    better = dict(base, acc_t1=0.6, acc_t2=0.644, delta=0.044, delta_i2c=0.058, delta_c2i=0.014)
    table = format_table({"base": base, "score": better})
    lines = table.splitlines()
    assert lines[0] == "| model | Acc@t1 | Acc@t2 | Δ(t1,t2) | Δi→c | Δc→i |"
    assert lines[1] == "|---|---:|---:|---:|---:|---:|"
    assert lines[2] == "| base | 62.5 | 50.0 | -12.5 | +12.5 | +25.0 |", "values must be percent; deltas signed"
    assert lines[3] == "| score | 60.0 | 64.4 | +4.4 | +5.8 | +1.4 |"
    assert len(lines) == 4


def test_format_table_with_custom_keys(episodes):
    table = format_table({"run": self_correction_metrics(episodes)}, keys=("fix_rate", "break_rate", "unchanged"))
    assert table.splitlines()[0] == "| model | fix rate | break rate | unchanged |"
    assert table.splitlines()[2] == "| run | 33.3 | 40.0 | 50.0 |"
