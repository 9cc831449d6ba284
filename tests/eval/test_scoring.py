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


def test_a_bad_row_leaves_no_temporary_file(tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_text('{"problem_id": "test/27+58", "response": "85"}\n{"problem_id": "nope", "response": "1"}\n')
    with pytest.raises(ConfigError):
        run_score("arithmetic", src, tmp_path / "o.jsonl", {}, io.StringIO(), io.StringIO())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]


def test_rows_are_written_as_they_are_scored(tmp_path, monkeypatch):
    """Streaming: when the verifier gets its second chunk, the first chunk's rows are already out."""
    import score_rl.envs as envs

    real_make_env = envs.make_env
    out = io.StringIO()
    lines_out_at_each_batch = []

    def recording_env(*args, **kwargs):
        env = real_make_env(*args, **kwargs)
        verify_batch = env.verify_batch

        def verify(responses, references):
            lines_out_at_each_batch.append(out.getvalue().count("\n"))
            return verify_batch(responses, references)

        env.verify_batch = verify
        return env

    monkeypatch.setattr(envs, "make_env", recording_env)
    src = _write(tmp_path / "r.jsonl", [{"problem_id": "test/27+58", "response": str(i)} for i in range(150)])
    run_score("arithmetic", src, None, {}, out, io.StringIO())
    assert lines_out_at_each_batch == [0, 64, 128]
    assert out.getvalue().count("\n") == 150


def _peak_bytes(tmp_path, n):
    import tracemalloc

    row = json.dumps({"problem_id": "test/27+58", "response": "The sum is 85. " * 8, "model": "m"}) + "\n"
    src = tmp_path / f"r{n}.jsonl"
    src.write_text(row * n)
    tracemalloc.start()
    try:
        run_score("arithmetic", src, tmp_path / f"o{n}.jsonl", {}, io.StringIO(), io.StringIO())
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_flat_in_the_number_of_rows(tmp_path):
    """Issue 14, item 9: every row was held in memory (484 MB at 200,000 rows). Peak traced memory for 10x the rows
    stays about the same (holding the rows, 10,000 of them take ~10 MB more than 1,000: this fails)."""
    run_score("arithmetic", _write(tmp_path / "warm.jsonl", [{"problem_id": "test/27+58", "response": "85"}]),
              tmp_path / "warm_out.jsonl", {}, io.StringIO(), io.StringIO())  # imports and caches outside the trace
    small, large = _peak_bytes(tmp_path, 1_000), _peak_bytes(tmp_path, 10_000)
    assert large < small * 1.2 + 256 * 1024, (small, large)
    assert (tmp_path / "o10000.jsonl").read_text().count("\n") == 10_000
