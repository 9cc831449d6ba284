"""score-rl score: offline verification of user responses; bad rows fail before anything is scored."""

from __future__ import annotations

import io
import json

import pytest

from score_rl.config import ConfigError
from score_rl.eval.scoring import run_score


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_scores_rows_and_writes_reward_and_reason(tmp_path):
    src = _write(tmp_path / "r.jsonl", [
        {"problem_id": "test/27+58", "response": " 85", "model": "m1"},
        {"problem_id": "test/31+92", "response": "no idea"},
        {"problem_id": "test/59+92", "response": "It is 150"},
    ])
    out, err = io.StringIO(), io.StringIO()
    assert run_score("arithmetic", src, tmp_path / "o.jsonl", {}, out, err) == 0
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [(r["reward"], r["reason"]) for r in rows] == [
        (1.0, "correct"), (0.0, "no answer extracted"), (0.0, "wrong answer")]
    assert rows[0]["model"] == "m1", "extra input fields are kept"
    assert "scored 3 responses: mean reward 0.333" in out.getvalue()


def test_stdout_mode_prints_rows_and_summary_on_stderr(tmp_path):
    src = _write(tmp_path / "r.jsonl", [{"problem_id": "test/27+58", "response": "85"}])
    out, err = io.StringIO(), io.StringIO()
    run_score("arithmetic", src, None, {}, out, err)
    assert json.loads(out.getvalue())["reward"] == 1.0
    assert "mean reward 1.000" in err.getvalue()


@pytest.mark.parametrize("line, message", [
    ('{"problem_id": "nope", "response": "1"}', "r.jsonl:2: unknown problem_id 'nope'"),
    ('{"problem_id": "test/27+58"}', "r.jsonl:2: field 'response' missing"),
    ("not json", "r.jsonl:2: not valid JSON"),
])
def test_bad_rows_name_the_line_and_nothing_is_written(tmp_path, line, message):
    src = tmp_path / "r.jsonl"
    src.write_text('{"problem_id": "test/27+58", "response": "85"}\n' + line + "\n")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        run_score("arithmetic", src, tmp_path / "o.jsonl", {}, io.StringIO(), io.StringIO())
    assert not (tmp_path / "o.jsonl").exists()
