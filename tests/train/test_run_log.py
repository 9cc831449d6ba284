"""RunLogger: after a resume metrics.jsonl holds each step once (rows from the resumed step on, and torn lines, are
dropped before new rows are appended)."""

from __future__ import annotations

import json

import pytest

from score_rl.train.run_log import RunLogger


@pytest.mark.parametrize("initial_step, kept", [(0, []), (2, [0, 1]), (5, [0, 1, 2, 3])])
def test_a_resumed_logger_keeps_only_the_steps_before_the_checkpoint(tmp_path, initial_step, kept):
    rows = [json.dumps({"step": s, "loss": 0.1 * s}) for s in range(4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 4, "lo')  # a line torn by a kill
    logger = RunLogger(tmp_path, 6, initial_step, progress_bar=False)
    for step in range(initial_step, 6):
        logger.log(step, {"loss": 1.0})
    logger.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == kept + list(range(initial_step, 6))


def test_damaged_lines_are_dropped_with_one_warning_and_rows_kept(tmp_path):
    from score_rl.train.run_log import _cut_back

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0}\n\xff\xfe\nnull\n{"step": "x"}\n{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    warnings = []
    _cut_back(path, 2, warnings.append)
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n'
    assert len(warnings) == 1 and "3 unreadable line(s)" in warnings[0] and "line 2" in warnings[0]
