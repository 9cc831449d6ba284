"""``score-rl score``: check a verifier on your own responses, offline, before paying for a cluster run.

Input: JSONL rows with ``problem_id`` and ``response``. Output: the same rows plus ``reward`` and ``reason``
(and the verifier's ``info``). ``--output`` is checked to be writable before anything else; then every row is
validated (one pass over the file) before anything is scored, so a bad row costs nothing; then the rows are scored
in a second pass, ``chunk`` at a time, each written as soon as it is scored. Memory stays flat in the number of rows:
no row is kept beyond its chunk, only running totals for the summary.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Optional, TextIO, Tuple

from score_rl.config import EnvConfig, PromptConfig
from score_rl.errors import ConfigError
from score_rl.utils import dumps_json


def iter_rows(path: Path) -> Iterator[Tuple[int, Dict]]:
    """(line number, row) of each row, read one line at a time; a row without a string problem_id / response, a line
    that is not a JSON object or not UTF-8 is a ConfigError naming the file and the line."""
    if not path.is_file():
        raise FileNotFoundError(f"responses file not found: {path}")
    from score_rl.utils import iter_jsonl_objects

    for lineno, row in iter_jsonl_objects(path):
        for key in ("problem_id", "response"):
            if not isinstance(row.get(key), str):
                raise ConfigError(f"{path}:{lineno}: field '{key}' missing or not a string")
        yield lineno, row


def _reference(env, row: Dict, path: Path, lineno: int):
    try:
        return env.get_problem(row["problem_id"]).reference
    except KeyError:
        raise ConfigError(f"{path}:{lineno}: unknown problem_id '{row['problem_id']}' for env "
                          f"'{env.name}'") from None


def check_rows(env, path: Path) -> int:
    """The number of rows; a ConfigError at the first bad one (fields, an unknown problem id). Keeps no row."""
    n = 0
    for lineno, row in iter_rows(path):
        _reference(env, row, path, lineno)
        n += 1
    if not n:
        raise ConfigError(f"{path}: no rows to score")
    return n


def iter_scored(env, path: Path, chunk: int = 64, total: Optional[int] = None,
                progress: bool = True) -> Iterator[Dict]:
    """Each row of ``path`` with ``reward``, ``reason`` and ``info``, in file order; ``chunk`` rows verified at a
    time."""
    from tqdm.auto import tqdm

    def flush(part):
        verdicts = env.verify_batch([row["response"] for row, _ in part], [ref for _, ref in part])
        for (row, _), verdict in zip(part, verdicts):
            scored = {k: v for k, v in row.items() if k != "_line"}  # as before: an input '_line' was dropped
            scored.update(reward=verdict.reward, reason=verdict.reason, info=verdict.info)
            yield scored

    with tqdm(total=total, desc="scoring", disable=not progress) as bar:
        part: List[Tuple[Dict, object]] = []
        for lineno, row in iter_rows(path):
            part.append((row, _reference(env, row, path, lineno)))
            if len(part) == chunk:
                yield from flush(part)
                bar.update(len(part))
                part = []
        if part:
            yield from flush(part)
            bar.update(len(part))


class Summary:
    """Running totals of scored rows: count, reward sum, reasons (in first-seen order for ties)."""

    def __init__(self):
        self.count, self.reward_sum, self.reasons = 0, 0.0, Counter()

    def add(self, row: Dict) -> None:
        self.count += 1
        self.reward_sum += row["reward"]
        self.reasons[row["reason"]] += 1

    def text(self) -> str:
        mean = self.reward_sum / self.count
        lines = [f"scored {self.count} responses: mean reward {mean:.3f}"]
        lines += [f"  {count:6d}  {reason}" for reason, count in self.reasons.most_common()]
        return "\n".join(lines)


def _open_output(output: Path) -> Tuple[Path, TextIO]:
    """The temporary file next to ``output`` (renamed onto it at the end), opened for writing: a ConfigError naming the
    path when it cannot be written."""
    if output.is_dir():
        raise ConfigError(f"--output {output}: is a directory")
    tmp = output.with_name(output.name + ".tmp")
    try:
        return tmp, open(tmp, "w")
    except OSError as err:
        raise ConfigError(f"--output {output}: cannot write there ({err.strerror or err})") from None


def run_score(env_name: str, responses: Path, output: Optional[Path], params: Dict, out: TextIO, err: TextIO) -> int:
    from score_rl.envs import make_env

    if not responses.is_file():
        raise FileNotFoundError(f"responses file not found: {responses}")
    tmp, sink = _open_output(output) if output is not None else (None, out)  # before any env start-up or scoring
    done = False
    try:
        target = env_name if ":" in env_name else None
        env = make_env(EnvConfig(name=env_name if target is None else "custom", target=target, params=params),
                       PromptConfig())
        try:
            total = check_rows(env, responses)
            totals = Summary()
            for row in iter_scored(env, responses, total=total, progress=output is not None):
                sink.write(dumps_json(row, default=str) + "\n")
                totals.add(row)
        finally:
            if callable(getattr(env, "close", None)):
                env.close()
        if tmp is not None:
            sink.close()
            tmp.replace(output)
        done = True
    finally:
        if tmp is not None and not done:
            sink.close()
            tmp.unlink(missing_ok=True)
    if output is not None:
        print(totals.text(), file=out)
        print(f"wrote {output}", file=out)
    else:
        print(totals.text(), file=err)
    return 0
