"""Competition math (MATH, GSM8K or any file in their formats), verified by answer equivalence.

Data (``env.params.train_path`` / ``test_path``: a local ``.jsonl`` file, one JSON object a line, or ``.parquet``)
-----------------------------------------------------------------------------------------------------------------
Each record is in one of two styles:

* MATH style: ``problem`` (the problem text) and ``solution`` (a worked solution; the reference answer is the
  content of its last ``\\boxed{...}``). An ``answer`` field, when present and non-empty, is the reference instead
  (MATH-500 has one). Optional: ``level``, ``type`` (kept in ``env.metadata[problem_id]``), and an id,
  ``unique_id`` or ``id``.
* GSM8K style: ``question`` (the problem text) and ``answer`` (a worked solution whose final answer follows the last
  ``####``, e.g. ``... #### 1,250``; thousands separators are dropped: the reference is ``1250``). An ``answer``
  without ``####`` is the reference as it is. Optional id: ``unique_id`` or ``id``.

A problem's id is its record's ``unique_id`` or ``id`` field, else ``"<split>/<record index>"`` (0-based, ``split``
= the split the file was given for). Ids must be unique. Without any path, a small sample set shipped with the
package (``envs/data/math_sample.jsonl``, hand-written MATH-style problems) is split by ``env.seed`` into
``num_test`` test problems (at most a quarter) and the rest for training; with ``train_path`` but no ``test_path``
the test split is carved out of the train file the same way; with ``test_path`` alone there is no train split.

Answer extraction (from a model's attempt)
------------------------------------------
1. The paper's format, ``Final Answer: The final answer is $X$. I hope it is correct.`` (the last "final answer
   is", case-insensitive, that states an answer — "The final answer is correct." is a verdict, and the one before it
   counts; ``$X$``, ``$$X$$`` or, without dollars, the rest of the line);
2. else the last ``\\boxed{X}`` / ``\\fbox{X}`` (balanced braces; ``\\boxed X`` too);
3. else the last "answer is X", read the same way (real small instruct models write "So, the answer is $4$." or "The
   answer is 8." however the prompt asks; tests/envs/fixtures/smollm2_math.jsonl holds SmolLM2-135M's own);
4. else nothing: reward 0, reason ``"no answer extracted"``.

A response longer than ``MAX_RESPONSE_CHARS`` is not read: reward 0, reason ``"too long"``. Extraction and the string
normalisation run in linear time on any text (docs/envs.md, "Bounds on a response").

Verification (reward 1 = equivalent to the reference, else 0)
-------------------------------------------------------------
* A MATH-style string normalisation first (in the calling process, cheap): ``\\left``/``\\right``, spacing
  commands, ``\\dfrac``, degrees, dollar and percent signs, known units, ``\\text{...}`` wrappers, a leading
  ``x =`` (when only one side has one), ``.5`` vs ``0.5``, ``1,000`` vs ``1000``, ``\\frac12`` ... are normalised and
  the strings compared (empty strings are never equal).
* If the strings differ: math-verify's ``parse`` + ``verify`` (symbolic and numeric equivalence; sets, intervals,
  matrices, equations) on the extracted answer against the reference, in a process pool with a wall-clock limit
  per item (``timeout_s``) enforced here: math-verify's own SIGALRM timeouts are off (they only work in a main
  thread). A worker that runs past its item's deadline is killed with the pool, which is rebuilt, so one hung item
  never blocks the others (reason ``"timeout"``); a worker that dies (e.g. out of memory, ``memory_mb``) gives
  ``"verifier error"``.
* Known units are removed here (a whitelist) and math-verify's own unit stripping is switched off: it drops any
  trailing ``\\text{...}``, which would accept hedges such as ``4 \\text{ or 3}`` for 4.

Answer equivalence between attempts (``same_answer``, used by majority vote)
---------------------------------------------------------------------------
Two extracted answers are the same answer when the verifier would accept one against the other as reference: the
same string normalisation, then math-verify in the same pool with the same per-item deadline (``timeout_s``), so
``\\frac{1}{2}``, ``0.5`` and ``1/2`` are one answer. Identical strings are the same answer without any check; an
answer that is huge, holds an unescaped ``$`` or has unbalanced braces (on either side) is compared as a string only;
a pair that times out or crashes the verifier is not the same answer.

Conventions and known limitations (see tests/envs/test_env_math.py)
--------------------------------------------------------------
* A percent sign is optional: ``50\\%`` matches ``50`` (MATH convention) and math-verify also matches it with
  ``0.5``. Units are optional and not compared: ``5 \\text{ m}`` matches ``5 \\text{ cm}``.
* An unsimplified expression equal to the answer is accepted (``2^{10}`` for 1024): equivalence, not form.
* ``(1, 2)`` is ambiguous (open interval or ordered pair); math-verify reads it as either.
* Answers longer than ``MAX_ANSWER_CHARS`` are compared by the string normalisation only.
"""


from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from score_rl.errors import ConfigError
from score_rl.envs.base import PooledEnv, Problem, Verdict, check_batch
from score_rl.envs.math_answers import (  # noqa: F401 - re-exported
    _THOUSANDS, _balanced, extract_answer, extract_answer_with_source, last_boxed, normalize_answer, strings_equivalent,
    strip_units,
)
from score_rl.envs.math_verifier import VerifierPool

SAMPLE_PATH = Path(__file__).resolve().parent / "data" / "math_sample.jsonl"
MAX_ANSWER_CHARS = 2000  # longer extracted answers never reach sympy (string comparison only)
MAX_RESPONSE_CHARS = 200_000  # longer responses are not read: "too long" (1024 generated tokens stay far below)

CORRECT, WRONG, NO_ANSWER, TIMEOUT, ERROR = ("correct", "wrong answer", "no answer extracted", "timeout",
                                             "verifier error")
TOO_LONG = "too long"
EQUAL, UNEQUAL = "equal", "unequal"  # the pool's statuses of a judged pair (besides TIMEOUT and "error")


def _sympy_safe(answer: str) -> bool:
    """Whether an answer may reach math-verify: not huge, no unescaped ``$`` (e.g. two inline answers), balanced
    braces. Others are compared by the string normalisation only."""
    return len(answer) <= MAX_ANSWER_CHARS and "$" not in answer.replace("\\$", "") and _balanced(answer)


def _read_records(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"math data file not found: '{path}'")
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            records = pd.read_parquet(path).to_dict(orient="records")
        except Exception as err:  # pyarrow's errors (not a parquet file, truncated) have no common base
            raise ConfigError(f"math data file {path}: cannot be read as parquet "
                              f"({' '.join(str(err).split()) or type(err).__name__})") from None
    elif path.suffix in (".jsonl", ".json"):
        from score_rl.utils import read_jsonl_objects

        records = [record for _, record in read_jsonl_objects(path, "math data file ")]
    else:
        raise ConfigError(f"math data file '{path}' must be .jsonl (one JSON object a line) or .parquet")
    if not records:
        empty = " (it is empty)" if path.stat().st_size == 0 else ""
        raise ConfigError(f"math data file {path} holds no records{empty}")
    return records


def gsm8k_final_answer(answer: str) -> str:
    """The text after the last '####' (thousands separators dropped), or the answer itself without one."""
    final = str(answer).rsplit("####", 1)[-1].strip()
    if _THOUSANDS.fullmatch(final):
        final = final.replace(",", "")
    return final


def _to_problem(record: Dict[str, Any], split: str, index: int, where: str) -> Tuple[Problem, Dict[str, Any]]:
    def present(key):
        value = record.get(key)
        return value is not None and str(value).strip() != ""

    raw_id = record.get("unique_id") if present("unique_id") else record.get("id") if present("id") else None
    pid = str(raw_id) if raw_id is not None else f"{split}/{index}"
    if present("problem"):
        text = str(record["problem"])
        if present("answer"):
            reference = str(record["answer"]).strip()
        else:
            reference = last_boxed(str(record.get("solution") or ""))
            if not reference:
                raise ConfigError(f"{where}: MATH-style record has neither 'answer' nor a \\boxed{{}} answer "
                                  "in 'solution'")
    elif present("question"):
        text = str(record["question"])
        if not present("answer"):
            raise ConfigError(f"{where}: GSM8K-style record has no 'answer'")
        reference = gsm8k_final_answer(record["answer"])
        if not reference:
            raise ConfigError(f"{where}: GSM8K-style 'answer' has nothing after '####'")
    else:
        raise ConfigError(f"{where}: a record needs 'problem' (MATH style) or 'question' (GSM8K style); "
                          f"got fields {sorted(record)}")
    meta = {k: record[k] for k in ("level", "type") if present(k)}
    return Problem(id=pid, text=text, reference=reference), meta


def load_problems(path, split: str) -> List[Tuple[Problem, Dict[str, Any]]]:
    """(Problem, metadata) for every record of a MATH- or GSM8K-style .jsonl / .parquet file."""
    path = Path(path).expanduser()
    return [_to_problem(rec, split, i, f"{path} (record {i})") for i, rec in enumerate(_read_records(path))]


# ================================================================================================================
# The environment
# ================================================================================================================
class MathEnv(PooledEnv):
    name = "math"
    split_names = ("train", "test")
    unsettled_reasons = (TIMEOUT, ERROR)

    @dataclass
    class Params:
        train_path: Optional[str] = None  # .jsonl / .parquet, MATH or GSM8K style; None: the shipped sample set
        dataset: Optional[str] = None  # "champ": CHAMP's checkable problems from the installed package (envs/champ.py)
        test_path: Optional[str] = None  # None: num_test problems carved out of the train data
        num_test: int = 500  # held-out problems when test_path is not given (at most a quarter of the data)
        timeout_s: float = 5.0  # wall-clock limit of one item's math-verify check
        workers: int = 2  # verifier processes
        memory_mb: int = 2048  # address-space limit of a verifier process (0: none)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        p = self.params
        for key in ("train_path", "test_path"):
            value = getattr(p, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"config key 'env.params.{key}' expects a file path (str) or null, got {value!r}")
        if not p.timeout_s > 0:
            raise ConfigError(f"config key 'env.params.timeout_s' must be > 0, got {p.timeout_s}")
        if p.workers < 1:
            raise ConfigError(f"config key 'env.params.workers' must be >= 1, got {p.workers}")
        if p.memory_mb < 0 or p.num_test < 0:
            raise ConfigError("config keys 'env.params.memory_mb' and 'env.params.num_test' must be >= 0")
        if p.dataset not in (None, "champ"):
            raise ConfigError(f"config key 'env.params.dataset' must be null (data files) or 'champ', "
                              f"got {p.dataset!r}")
        if p.dataset is not None and (p.train_path is not None or p.test_path is not None):
            raise ConfigError("config keys 'env.params.dataset' and 'env.params.train_path' / 'test_path' exclude each "
                              "other: set one of them")
        self._splits: Dict[str, List[Problem]] = {}
        self.metadata: Dict[str, Dict[str, Any]] = {}
        self.left_out: Dict[str, int] = {}  # dataset=champ: problems without a checkable answer, by reason
        if p.dataset == "champ":
            from score_rl.envs.champ import load_champ

            records, left_out = load_champ()
            self.left_out = dict(left_out)
            self._split_off_test([_to_problem(rec, "train", i, f"CHAMP {rec['unique_id']}")
                                  for i, rec in enumerate(records)])
        elif p.train_path is None and p.test_path is None:
            self._split_off_test(load_problems(SAMPLE_PATH, "train"))
        elif p.test_path is None:
            self._split_off_test(load_problems(p.train_path, "train"))
        else:
            test = load_problems(p.test_path, "test")
            train = load_problems(p.train_path, "train") if p.train_path is not None else []
            self._set_splits(train, test)
        self._pool: Optional[VerifierPool] = None

    def _split_off_test(self, items: List[Tuple[Problem, Dict[str, Any]]]) -> None:
        order = list(range(len(items)))
        random.Random(self.seed).shuffle(order)
        held_out = set(order[:min(self.params.num_test, len(items) // 4)])
        self._set_splits([it for i, it in enumerate(items) if i not in held_out],
                         [it for i, it in enumerate(items) if i in held_out])

    def _set_splits(self, train, test) -> None:
        seen: Dict[str, str] = {}
        for split, items in (("train", train), ("test", test)):
            for problem, meta in items:
                if problem.id in seen:
                    raise ConfigError(f"env 'math': problem id '{problem.id}' appears twice "
                                      f"({seen[problem.id]} and {split}); ids must be unique")
                seen[problem.id] = split
                self.metadata[problem.id] = meta
            self._splits[split] = [problem for problem, _ in items]

    # --- dataset -------------------------------------------------------------------------------------------------
    def problems(self, split: str) -> List[Problem]:
        if split not in self._splits:
            raise ConfigError(f"env '{self.name}' has no split '{split}' (splits: {sorted(self._splits)})")
        if split == "train" and not self._splits["train"] and self.params.train_path is None:
            raise ConfigError("env 'math' has no train split: set env.params.train_path")
        return list(self._splits[split])

    # --- verifier ------------------------------------------------------------------------------------------------
    def verify_batch(self, responses: Sequence[str], references: Sequence[Any]) -> List[Verdict]:
        check_batch(responses, references)
        verdicts: List[Optional[Verdict]] = [None] * len(responses)
        pairs, pair_index = [], []
        for i, (response, reference) in enumerate(zip(responses, references)):
            if len(response or "") > MAX_RESPONSE_CHARS:
                verdicts[i] = Verdict(0.0, TOO_LONG, {"extracted": None, "source": None, "chars": len(response)})
                continue
            answer, source = extract_answer_with_source(response or "")
            info: Dict[str, Any] = {"extracted": answer, "source": source}
            if answer is None:
                verdicts[i] = Verdict(0.0, NO_ANSWER, info)
            else:
                verdicts[i] = Verdict(0.0, WRONG, info)  # placeholder until the pair is judged
                pairs.append((answer, str(reference).strip()))
                pair_index.append(i)
        for i, (status, method, detail) in zip(pair_index, self._judge(pairs)):
            info = {**verdicts[i].info, "method": method}
            if status == EQUAL:
                verdicts[i] = Verdict(1.0, CORRECT, info)
            elif status == UNEQUAL:
                verdicts[i] = Verdict(0.0, WRONG, info)
            elif status == TIMEOUT:
                verdicts[i] = Verdict(0.0, TIMEOUT, {**info, "detail": detail})
            else:
                verdicts[i] = Verdict(0.0, ERROR, {**info, "detail": detail})
        return verdicts  # type: ignore[return-value]

    def _judge(self, pairs: Sequence[Tuple[str, str]], check_gold: bool = False) -> List[Tuple[str, str, str]]:
        """(status, method, detail) for each (answer, gold) pair; the one equivalence of verify and same_answer.

        status: "equal" | "unequal" | "timeout" | "error"; method: "string" (decided by the string normalisation:
        equivalent, or malformed / huge so never handed to sympy) or "math_verify" (the pool, with its deadline).
        ``check_gold``: the gold side is a model's answer too (same_answer), so it must also be safe for sympy.
        """
        results: List[Tuple[str, str, str]] = [(UNEQUAL, "string", "")] * len(pairs)
        jobs, job_index = [], []
        for i, (answer, gold) in enumerate(pairs):
            if strings_equivalent(answer, gold):
                results[i] = (EQUAL, "string", "")
            elif _sympy_safe(answer) and len(gold) <= MAX_ANSWER_CHARS and (not check_gold or _sympy_safe(gold)):
                jobs.append((answer, gold))
                job_index.append(i)
        if jobs:
            for i, (status, detail) in zip(job_index, self._verifier().run(jobs)):
                results[i] = (status, "math_verify", detail)
        return results

    # --- answer equivalence (majority vote) -----------------------------------------------------------------------
    def same_answer(self, a: str, b: str) -> bool:
        """The verifier's equivalence: ``b`` is accepted with ``a`` as the reference (see the module docstring)."""
        return self.first_same_answer(b, [a]) == 0

    def first_same_answer(self, answer: str, candidates: Sequence[str]) -> Optional[int]:
        """Index of the first candidate equivalent to ``answer`` (each candidate in the reference's role), else None.

        Identical strings and the string normalisation decide first, in this process; math-verify then runs, as one
        batch in the pool (with its per-item deadline), only on the candidates before the first string match.
        """
        answer = str(answer)
        candidates = [str(c) for c in candidates]
        string_match = next((j for j, c in enumerate(candidates) if c == answer or strings_equivalent(answer, c)),
                            None)
        earlier = candidates[:len(candidates) if string_match is None else string_match]
        for j, (status, _, _) in enumerate(self._judge([(answer, c) for c in earlier], check_gold=True)):
            if status == EQUAL:
                return j
        return string_match

    def _verifier(self) -> VerifierPool:
        if self._pool is None:
            self._pool = VerifierPool(self.params.workers, self.params.timeout_s, self.params.memory_mb)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
