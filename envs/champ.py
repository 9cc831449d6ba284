"""CHAMP (Mao, Kim and Zhou 2024, "CHAMP: A Competition-level Dataset for Fine-Grained Analyses of LLMs' Mathematical
Reasoning Capabilities", MIT licence): 270 competition problems in five categories, read from the installed
``champ-dataset`` package (``champ_dataset/dataset_files/v0.json``; nothing is downloaded).

The math env scores an answer with math-verify, so only problems whose final answer is one mathematical expression
are kept. CHAMP writes its math between ``@@`` marks in plain-text notation; an answer is kept when it is

* a number (``239``, ``-1``, ``0.5``), or a number followed by an explanation (``100 (i.e., all values)``),
* ``… , or equivalently @@N@@`` with N a number (``C(10, 5), or equivalently 252`` → ``252``),
* one ``@@…@@`` expression without words (``4^n``, ``1/2``, ``(x^2+x+1)(x^2-x+1)``).

Left out, with the reason counted by :func:`load_champ`: yes/no and prose answers ("0 is the only possible value",
"Infinitely many solutions"), several values ("9642 and 87531"), and expressions with named functions
(``2^floor(n/2)*floor(n/2)!``, ``C(n, k)``), whose plain-text notation math-verify would misread.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

from score_rl.config import ConfigError

VERSION = "v0"
_NUMBER = r"-?\d+(?:\.\d+)?"
_SPAN = re.compile(r"@@(.*?)@@")
_EXPRESSION = re.compile(r"[0-9a-z^+\-*/()., ]+")  # letters allowed only as single-letter variables (no words)


def champ_file() -> Path:
    """The dataset file inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec("champ_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("env.params.dataset=champ needs the champ-dataset package (a dependency of score-rl: "
                          "pip install champ-dataset)")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_files" / f"{VERSION}.json"
    if not path.is_file():
        raise ConfigError(f"champ-dataset is installed but has no {path.name} (expected at {path})")
    return path


def final_answer(raw: str) -> Tuple[str, str]:
    """(the answer math-verify can check, "") or ("", why it is left out) for CHAMP's ``_raw_answer``."""
    plain = raw.replace("@@", "").strip()
    if re.fullmatch(_NUMBER, plain):
        return plain, ""
    equivalent = re.search(r"or equivalently @@(" + _NUMBER + r")@@\s*$", raw)
    if equivalent:
        return equivalent.group(1), ""
    explained = re.fullmatch(r"(?:@@)?(" + _NUMBER + r")(?:@@)? \((?:i\.e\.|e\.g\.),? [^()]*\)", raw.strip())
    if explained:
        return explained.group(1), ""
    spans = _SPAN.findall(raw)
    if len(spans) == 1 and raw.strip() == f"@@{spans[0]}@@":
        expression = spans[0].strip()
        if _EXPRESSION.fullmatch(expression) and not re.search(r"[a-z]{2}", expression):
            return expression, ""
        return "", "an expression with named functions"
    if len(spans) > 1 or " and " in plain:
        return "", "several values"
    return "", "a prose or yes/no answer"


def load_champ() -> Tuple[List[Dict[str, Any]], Counter]:
    """MATH-style records (problem, answer, unique_id, type) of the checkable CHAMP problems, in the file's order,
    and the count of left-out problems by reason."""
    problems = json.loads(champ_file().read_text())["problems"]
    records, left_out = [], Counter()
    for identifier, p in problems.items():
        answer, why = final_answer(p["_raw_answer"])
        if why:
            left_out[why] += 1
            continue
        records.append({"problem": p["_raw_text"].replace("@@", ""), "answer": answer, "unique_id": identifier,
                        "type": p.get("category")})
    return records, left_out
