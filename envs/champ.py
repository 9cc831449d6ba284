"""CHAMP (Mao, Kim and Zhou 2024, "CHAMP: A Competition-level Dataset for Fine-Grained Analyses of LLMs' Mathematical
Reasoning Capabilities", MIT licence): 270 competition problems in five categories, read from the installed
``champ-dataset`` package (``champ_dataset/dataset_files/v0.json``; nothing is downloaded).

The math env scores an answer with math-verify, so only problems whose final answer is one value in notation
math-verify reads are kept. CHAMP writes its math between ``@@`` marks in plain-text notation; the value is taken from

* a number or one ``@@…@@`` expression (``239``, ``@@4^n@@``, ``@@(x^2+x+1)(x^2-x+1)@@``),
* ``… , or equivalently @@X@@`` (``C(10, 5), or equivalently 252`` → ``252``),
* a value with a comment or a counted noun (``100 (i.e., all values)``, ``0 roots``, ``2 inequalities``),
* ``X is the only possible value``, ``The limit exists and is equal to X``, ``The only possible value … is X``,

and kept when it is one value without named functions (``sqrt``, ``floor``, ``C(n, k)``, ``sum_``), factorials,
``±``, ellipses or non-ASCII symbols, whose plain-text spelling math-verify would misread. Left out, with the reason
counted by :func:`load_champ`: yes/no and prose answers ("No integer solutions"), several values ("9642 and 87531",
``x=6, y=5``), and the notation above. tests/envs/test_env_math.py checks that math-verify parses every kept answer.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

from score_rl.errors import ConfigError

VERSION = "v0"
_NUMBER = r"-?\d+(?:\.\d+)?"
_VALUE = r"(?:@@([^@]+)@@|(" + _NUMBER + r"))"  # one @@expression@@ or a bare number
_FORMS = [re.compile(pattern) for pattern in (
    r"^" + _VALUE + r"$",
    r"^.*, or equivalently " + _VALUE + r"$",
    r"^" + _VALUE + r" \([^()]*\)$",  # a comment: "100 (i.e., all values)"
    r"^" + _VALUE + r" [a-z]+$",  # a counted noun: "0 roots"
    r"^" + _VALUE + r" is the only possible value$",
    r"^The limit exists and is equal to " + _VALUE + r"$",
    r"^The only possible value [a-z ]*is " + _VALUE + r"$",
)]
_SPAN = re.compile(r"@@(.*?)@@")
_SEVERAL = re.compile(r"[,=]| and | or ")
_MISREAD = re.compile(r"[a-z]{2,}\(|sqrt|floor|ceil|sum_|\bC\(|!|±|\.\.\.|[\[\]<>]|[^\x00-\x7f]")


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
    raw = raw.strip()
    for form in _FORMS:
        match = form.match(raw)
        if match:
            value = (match.group(1) or match.group(2)).strip()
            if _MISREAD.search(value):
                return "", "notation math-verify would misread"
            if _SEVERAL.search(value):
                return "", "several values"
            return value, ""
    if len(_SPAN.findall(raw)) > 1 or re.search(r"\d,? and \d", raw):
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
