"""``score-rl score``: check a verifier on your own responses, offline, before paying for a cluster run.

Input: JSONL rows with ``problem_id`` and ``response``. Output: the same rows plus ``reward`` and ``reason``
(and the verifier's ``info``). Every row is validated before anything is scored, so a bad row costs nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, TextIO

from score_rl.config import ConfigError, EnvConfig, PromptConfig


def read_rows(path: Path) -> List[Dict]:
    if not path.is_file():
        raise FileNotFoundError(f"responses file not found: {path}")
    from score_rl.utils import read_jsonl_objects

    rows = []
    for lineno, row in read_jsonl_objects(path):
        for key in ("problem_id", "response"):
            if not isinstance(row.get(key), str):
                raise ConfigError(f"{path}:{lineno}: field '{key}' missing or not a string")
        row["_line"] = lineno
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no rows to score")
    return rows


def score_rows(env, rows: List[Dict], path: Path, chunk: int = 64, progress: bool = True) -> List[Dict]:
    from tqdm.auto import tqdm

    references = []
    for row in rows:
        try:
            references.append(env.get_problem(row["problem_id"]).reference)
        except KeyError:
            raise ConfigError(f"{path}:{row['_line']}: unknown problem_id '{row['problem_id']}' for env "
                              f"'{env.name}'") from None
    out = []
    with tqdm(total=len(rows), desc="scoring", disable=not progress) as bar:
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            verdicts = env.verify_batch([r["response"] for r in part], references[start:start + chunk])
            for row, verdict in zip(part, verdicts):
                scored = {k: v for k, v in row.items() if k != "_line"}
                scored.update(reward=verdict.reward, reason=verdict.reason, info=verdict.info)
                out.append(scored)
            bar.update(len(part))
    return out


def summary(scored: Iterable[Dict]) -> str:
    scored = list(scored)
    reasons = Counter(r["reason"] for r in scored)
    mean = sum(r["reward"] for r in scored) / len(scored)
    lines = [f"scored {len(scored)} responses: mean reward {mean:.3f}"]
    lines += [f"  {count:6d}  {reason}" for reason, count in reasons.most_common()]
    return "\n".join(lines)


def run_score(env_name: str, responses: Path, output: Optional[Path], params: Dict, out: TextIO, err: TextIO) -> int:
    from score_rl.envs import make_env

    target = env_name if ":" in env_name else None
    env = make_env(EnvConfig(name=env_name if target is None else "custom", target=target, params=params),
                   PromptConfig())
    try:
        rows = read_rows(responses)
        scored = score_rows(env, rows, responses, progress=output is not None)
    finally:
        env.close()
    if output is not None:
        tmp = output.with_name(output.name + ".tmp")
        with open(tmp, "w") as f:
            for row in scored:
                f.write(json.dumps(row, default=str) + "\n")
        tmp.replace(output)
        print(summary(scored), file=out)
        print(f"wrote {output}", file=out)
    else:
        for row in scored:
            print(json.dumps(row, default=str), file=out)
        print(summary(scored), file=err)
    return 0
