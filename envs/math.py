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
   is", case-insensitive; ``$X$``, ``$$X$$`` or, without dollars, the rest of the line);
2. else the last ``\\boxed{X}`` / ``\\fbox{X}`` (balanced braces; ``\\boxed X`` too);
3. else nothing: reward 0, reason ``"no answer extracted"``.

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

Conventions and known limitations (see tests/test_env_math.py)
--------------------------------------------------------------
* A percent sign is optional: ``50\\%`` matches ``50`` (MATH convention) and math-verify also matches it with
  ``0.5``. Units are optional and not compared: ``5 \\text{ m}`` matches ``5 \\text{ cm}``.
* An unsimplified expression equal to the answer is accepted (``2^{10}`` for 1024): equivalence, not form.
* ``(1, 2)`` is ambiguous (open interval or ordered pair); math-verify reads it as either.
* Answers longer than ``MAX_ANSWER_CHARS`` are compared by the string normalisation only.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import re
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from score_rl.config import ConfigError
from score_rl.envs.base import PooledEnv, Problem, Verdict, check_batch

SAMPLE_PATH = Path(__file__).resolve().parent / "data" / "math_sample.jsonl"
MAX_ANSWER_CHARS = 2000  # longer extracted answers never reach sympy (string comparison only)

CORRECT, WRONG, NO_ANSWER, TIMEOUT, ERROR = "correct", "wrong answer", "no answer extracted", "timeout", "verifier error"


# ================================================================================================================
# Answer extraction
# ================================================================================================================
_FINAL_ANSWER = re.compile(r"final answer is", re.IGNORECASE)
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_I_HOPE = re.compile(r"\s*I hope\b", re.IGNORECASE)


def _braced(text: str, open_pos: int) -> Optional[Tuple[str, int]]:
    """The content of the brace group opening at text[open_pos] == '{' and the index after it; None if unbalanced.

    Escaped braces (``\\{``, ``\\}``) are literal characters, not grouping."""
    depth, i = 0, open_pos
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_pos + 1:i], i + 1
        i += 1
    return None


def _balanced(text: str) -> bool:
    depth, i = 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            return False
        i += 1
    return depth == 0


def last_boxed(text: str) -> Optional[str]:
    """Content of the last well-formed ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed X``) in text, else None."""
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        i = match.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            group = _braced(text, i)
            if group is not None:
                return group[0].strip()
        elif i > match.end():  # "\boxed 5": one token
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                return token.group().rstrip(".,;")
    return None


def _dollar_delimited(text: str, start: int) -> Optional[str]:
    """``$X$`` or ``$$X$$`` starting at text[start]; escaped dollars (``\\$``) inside X are kept."""
    n = 2 if text.startswith("$$", start) else 1
    i = start + n
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith("$" * n, i):
            return text[start + n:i]
        i += 1
    return None


def _unwrap_box(answer: str) -> str:
    """``\\boxed{X}`` (the whole answer) → X."""
    s = answer.strip()
    m = _BOX_COMMAND.match(s)
    if m:
        rest = s[m.end():].lstrip()
        if rest.startswith("{"):
            group = _braced(rest, 0)
            if group is not None and group[1] == len(rest):
                return group[0].strip()
    return s


def extract_answer_with_source(text: str) -> Tuple[Optional[str], Optional[str]]:
    """(answer, "final_answer" | "boxed") or (None, None); see the module docstring for the rules."""
    finals = list(_FINAL_ANSWER.finditer(text))
    if finals:
        rest = text[finals[-1].end():]
        stripped = rest.lstrip(" \t:")
        offset = len(rest) - len(stripped)
        answer = None
        if stripped.startswith("$"):
            answer = _dollar_delimited(rest, offset)
        else:
            line = stripped.split("\n", 1)[0]
            hope = _I_HOPE.search(line)
            if hope:
                line = line[:hope.start()]
            line = line.strip()
            if line.endswith("."):
                line = line[:-1]
            answer = line
        if answer is not None:
            answer = _unwrap_box(answer).strip()
            if answer:
                return answer, "final_answer"
    boxed = last_boxed(text)
    if boxed:
        return boxed, "boxed"
    return None, None


def extract_answer(text: str) -> Optional[str]:
    """The final answer of a response: the paper's "The final answer is $X$" line, else the last \\boxed{X}."""
    return extract_answer_with_source(text)[0]


# ================================================================================================================
# String normalisation (MATH style) and unit stripping
# ================================================================================================================
# Units written without \text{} ("5 cm"): a whitelist, as a bare letter after a number is usually a variable
_BARE_UNITS = [
    "millimeter", "millimetre", "centimeter", "centimetre", "meter", "metre", "kilometer", "kilometre", "mm", "cm",
    "km", "inch", "inches", "foot", "feet", "ft", "yard", "yd", "mile", "unit", "liter", "litre", "milliliter",
    "millilitre", "ml", "gallon", "quart", "pint", "acre", "hectare", "milligram", "gram", "kilogram", "mg", "kg",
    "pound", "lb", "lbs", "ounce", "oz", "ton", "tonne", "second", "sec", "minute", "min", "hour", "hr", "day",
    "week", "month", "year", "yr", "mph", "kph", "degree", "deg", "radian", "dollar", "cent", "cents", "euro",
]
_BARE_ALT = "|".join(sorted((re.escape(u) for u in _BARE_UNITS), key=len, reverse=True))
_POWER = r"(?:\s*\^\s*(?:\{\s*[23]\s*\}|[23]))?"
_TEXT_CMD = r"\\(?:text|textrm|textnormal|textit|mbox|mathrm|rm)"
# a trailing \text{...} group of a few words: a unit or a counted noun ("5 \text{ cm}^2", "12 \text{ students}")
_TEXT_TAIL = re.compile(rf"\s*{_TEXT_CMD}\s*\{{(?:[\s~]|\\[ ,;])*([A-Za-z][A-Za-z.\-/ ]{{0,40}}?)(?:[\s~]|\\[ ,;])*\}}{_POWER}\s*$")
_BARE_TAIL = re.compile(rf"(?<=[\d}}\s])\s*(?:(?:square|cubic)\s+)?(?:{_BARE_ALT})(?:e?s)?\.?{_POWER}\s*$")
# Words that turn a trailing text into a statement about the answer ("4 \text{ or 3}", "4 \text{ is wrong}"): such
# a text is not stripped (math-verify's own unit rule would drop any trailing \text{...}; it is switched off).
_HEDGE_WORDS = frozenset(
    "or and not nor no yes either neither maybe perhaps possibly probably approximately approx about roughly nearly "
    "almost wrong incorrect false true correct except but unless if otherwise else than is are was be".split()
)
_PERCENT_WORD = re.compile(rf"\s*(?:{_TEXT_CMD}\s*\{{\s*percent\s*\}}|\bpercent)\s*$")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree(?![a-zA-Z])")


def _strip_tail_once(s: str) -> str:
    m = _TEXT_TAIL.search(s)
    if m and not (set(re.split(r"[\s.\-/]+", m.group(1).lower())) & _HEDGE_WORDS):
        return s[:m.start()].strip()
    return _BARE_TAIL.sub("", s).strip()


def strip_units(answer: str) -> str:
    """Remove trailing units and counted nouns (``5 \\text{ cm}^2``, ``12 \\text{ students}``, ``5 cm``,
    ``30^\\circ``); a trailing "percent" becomes ``\\%``. Never returns an empty string."""
    s = _DEGREES.sub("", answer).strip()
    s = _PERCENT_WORD.sub(r"\\%", s)
    for _ in range(2):
        new = _strip_tail_once(s)
        if not new or new == s:
            break
        s = new
    return s or answer.strip()


_SPACING = re.compile(r"(?<!\\)\\[,;:!> ]|\\q?quad(?![a-zA-Z])|~")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big|bigg|Bigg)(?![a-zA-Z])")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|textit|textnormal|mbox|mathrm|mathbf|mathit|rm|operatorname)\s*\{([^{}]*)\}")
_ASSIGNMENT = re.compile(r"^[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?=(?!=)")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"-?\d+\.\d+")


def normalize_answer(answer: str) -> str:
    """A canonical string for MATH-style string comparison (see the module docstring)."""
    s = _unwrap_box(str(answer)).replace("\n", " ")
    s = _SPACING.sub(" ", s)
    s = _LEFT_RIGHT.sub("", s)
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    s = s.replace("\\displaystyle", "")
    s = strip_units(s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")  # a percent sign is optional (MATH convention)
    for _ in range(3):  # nested wrappers
        s = _TEXT_WRAPPER.sub(r"\1", s)
    s = re.sub(r"\s+", "", s)
    s = s.replace("\\varnothing", "\\emptyset").replace("\\infinity", "\\infty")
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1]
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)  # .5 → 0.5
    if _DECIMAL.fullmatch(s):
        s = s.rstrip("0").rstrip(".")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    m = re.fullmatch(r"(-?)(\d+)/(\d+)", s)
    if m:
        s = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    m = re.fullmatch(r"\(([A-Za-z])\)", s)
    if m:
        s = m.group(1)
    if re.fullmatch(r"[A-Za-z]{2,}", s):
        s = s.lower()
    return s


def strings_equivalent(pred: str, gold: str) -> bool:
    """MATH-style string equivalence; a leading ``x =`` is dropped when only one side has one."""
    a, b = normalize_answer(pred), normalize_answer(gold)
    if not a or not b:
        return False
    if a == b:
        return True
    a_assign, b_assign = _ASSIGNMENT.match(a), _ASSIGNMENT.match(b)
    if bool(a_assign) != bool(b_assign):
        if a_assign and a.count("=") == 1:
            a = a[a_assign.end():]
        if b_assign and b.count("=") == 1:
            b = b[b_assign.end():]
        return bool(a) and a == b
    return False


# ================================================================================================================
# math-verify, run inside the pool's worker processes
# ================================================================================================================
_MV_CONFIG = None


def _math_verify_config():
    global _MV_CONFIG
    if _MV_CONFIG is None:
        from latex2sympy2_extended import NormalizationConfig
        from math_verify import LatexExtractionConfig

        # units=False: units are stripped by strip_units (a whitelist); math-verify's own rule drops any trailing
        # \text{...}, which would accept hedges like "4 \text{ or 3}".
        _MV_CONFIG = [LatexExtractionConfig(
            boxed_match_priority=0,
            try_extract_without_anchor=False,
            normalization_config=NormalizationConfig(
                basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False,
            ),
        )]
    return _MV_CONFIG


def _mv_parse(answer: str):
    from math_verify import parse

    return parse("\\boxed{" + answer + "}", extraction_config=_math_verify_config(), fallback_mode="no_fallback",
                 extraction_mode="first_match", parsing_timeout=None)


def math_verify_equal(pred: str, gold: str) -> bool:
    """math-verify's equivalence of two extracted answers (no timeout: call it in a pool worker, or trusted input)."""
    from math_verify import verify

    gold_parsed = _mv_parse(strip_units(gold))
    pred_parsed = _mv_parse(strip_units(pred))
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None, allow_set_relation_comp=True))


def _worker_init(memory_mb: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it kills the pool
    if memory_mb > 0:
        try:
            import resource

            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" warnings: we enforce our own
    math_verify_equal("1", "1")  # import and warm up sympy before the first deadline starts


def _worker_ping() -> int:
    return os.getpid()


def _worker_verify(pred: str, gold: str) -> Tuple[str, str]:
    """("equal" | "unequal" | "error", detail); never raises (errors are results)."""
    try:
        return ("equal" if math_verify_equal(pred, gold) else "unequal"), ""
    except MemoryError:
        return "error", "out of memory"
    except BaseException as err:  # noqa: BLE001 - a verifier must not crash on model output
        return "error", f"{type(err).__name__}: {err}"[:200]


class VerifierPool:
    """Process pool running ``_worker_verify`` with a per-item wall-clock deadline.

    At most ``workers`` items are in flight, so an item's clock starts when a worker is free for it. An item past
    its deadline is a ``"timeout"``; its worker cannot be interrupted, so every worker is killed and the pool is
    rebuilt (the other in-flight items run again). If a worker dies, the items it may have held run again one at a
    time; one that kills its worker again is an ``"error"``.
    """

    def __init__(self, workers: int, timeout_s: float, memory_mb: int = 0, startup_timeout_s: float = 120.0,
                 func=None):
        self.workers, self.timeout_s, self.memory_mb = workers, timeout_s, memory_mb
        self.startup_timeout_s = startup_timeout_s
        self.func = func or _worker_verify  # a picklable (module-level) function (pred, gold) -> (status, detail)
        self._executor: Optional[ProcessPoolExecutor] = None
        self.restarts = 0  # pools killed after a timeout or a crash (for tests and logs)

    # --- lifecycle -----------------------------------------------------------------------------------------------
    def _start(self) -> ProcessPoolExecutor:
        executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init, initargs=(self.memory_mb,))
        try:
            pings = [executor.submit(_worker_ping) for _ in range(self.workers)]
            done, not_done = wait(pings, timeout=self.startup_timeout_s)
            failure = next((f.exception() for f in done if f.exception() is not None), None)
        except BrokenProcessPool as err:
            not_done, failure = (), err
        if not_done or failure is not None:
            self._kill(executor)
            why = f"{type(failure).__name__}: {failure}" if failure is not None else \
                f"no answer within {self.startup_timeout_s:.0f} s"
            raise RuntimeError(
                f"the math verifier's worker processes did not start ({why}). They are started with "
                "multiprocessing 'spawn', which imports the main script again: a script that verifies math at "
                "import time must guard its entry point with `if __name__ == '__main__':`")
        self._executor = executor
        return executor

    @staticmethod
    def _kill(executor: ProcessPoolExecutor) -> None:
        processes = list((getattr(executor, "_processes", None) or {}).values())
        for process in processes:
            try:
                process.kill()
            except Exception:  # already gone
                pass
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5)

    def _discard(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            self._kill(executor)
            self.restarts += 1

    def worker_pids(self) -> List[int]:
        """Process ids of the current workers (empty before the first run and after close)."""
        if self._executor is None:
            return []
        return sorted((getattr(self._executor, "_processes", None) or {}).keys())

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)

    # --- work ----------------------------------------------------------------------------------------------------
    def run(self, jobs: Sequence[Tuple[str, str]]) -> List[Tuple[str, str]]:
        """One ("equal" | "unequal" | "timeout" | "error", detail) per (pred, gold) job, in order."""
        results: List[Optional[Tuple[str, str]]] = [None] * len(jobs)
        queue = deque(range(len(jobs)))
        suspects: set = set()  # items in flight when a worker died: they run alone
        inflight: Dict[Any, Tuple[int, float]] = {}

        def requeue_all_inflight(broken: bool) -> None:
            for fut, (idx, _) in list(inflight.items()):
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    results[idx] = fut.result()
                elif broken and idx in suspects:
                    results[idx] = ("error", "the verifier process died")
                else:
                    if broken:
                        suspects.add(idx)
                    queue.appendleft(idx)
            inflight.clear()
            self._discard()

        while queue or inflight:
            executor = self._executor or self._start()
            broken = False
            while queue and len(inflight) < self.workers:
                if any(idx in suspects for idx, _ in inflight.values()):
                    break  # a suspect runs alone
                idx = queue[0]
                if idx in suspects and inflight:
                    break
                try:
                    fut = executor.submit(self.func, *jobs[idx])
                except BrokenProcessPool:
                    broken = True
                    break
                queue.popleft()
                inflight[fut] = (idx, time.monotonic() + self.timeout_s)
            if broken:
                requeue_all_inflight(broken=True)
                continue
            next_deadline = min(deadline for _, deadline in inflight.values())
            done, _ = wait(list(inflight), timeout=max(0.0, next_deadline - time.monotonic()),
                           return_when=FIRST_COMPLETED)
            for fut in done:
                if fut.exception() is not None:
                    if isinstance(fut.exception(), BrokenProcessPool):
                        broken = True
                        continue  # handled with the rest of the in-flight items below
                    idx, _ = inflight.pop(fut)
                    results[idx] = ("error", repr(fut.exception())[:200])
                else:
                    idx, _ = inflight.pop(fut)
                    results[idx] = fut.result()
            if broken:
                requeue_all_inflight(broken=True)
                continue
            now = time.monotonic()
            expired = [fut for fut, (_, deadline) in inflight.items() if deadline <= now and not fut.done()]
            if expired:
                for fut in expired:
                    idx, _ = inflight.pop(fut)
                    results[idx] = (TIMEOUT, f"no verdict within {self.timeout_s:g} s")
                requeue_all_inflight(broken=False)  # the hung worker cannot be interrupted: rebuild the pool
        return [r if r is not None else ("error", "no result") for r in results]


# ================================================================================================================
# Data loading
# ================================================================================================================
def _read_records(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"math data file not found: '{path}'")
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records")
    if path.suffix not in (".jsonl", ".json"):
        raise ConfigError(f"math data file '{path}' must be .jsonl (one JSON object a line) or .parquet")
    from score_rl.utils import read_jsonl_objects

    records = [record for _, record in read_jsonl_objects(path)]
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
                raise ConfigError(f"{where}: MATH-style record has neither 'answer' nor a \\boxed{{}} answer in 'solution'")
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

    @dataclass
    class Params:
        train_path: Optional[str] = None  # .jsonl / .parquet, MATH or GSM8K style; None: the shipped sample set
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
        self._splits: Dict[str, List[Problem]] = {}
        self.metadata: Dict[str, Dict[str, Any]] = {}
        if p.train_path is None and p.test_path is None:
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
        jobs, job_index = [], []
        for i, (response, reference) in enumerate(zip(responses, references)):
            answer, source = extract_answer_with_source(response or "")
            info: Dict[str, Any] = {"extracted": answer, "source": source}
            gold = str(reference).strip()
            if answer is None:
                verdicts[i] = Verdict(0.0, NO_ANSWER, info)
            elif strings_equivalent(answer, gold):
                verdicts[i] = Verdict(1.0, CORRECT, {**info, "method": "string"})
            elif len(answer) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS or "$" in answer.replace("\\$", "") \
                    or not _balanced(answer):
                verdicts[i] = Verdict(0.0, WRONG, {**info, "method": "string"})  # malformed / huge: no sympy
            else:
                verdicts[i] = Verdict(0.0, WRONG, info)  # placeholder until the pool answers
                jobs.append((answer, gold))
                job_index.append(i)
        if jobs:
            for i, (status, detail) in zip(job_index, self._verifier().run(jobs)):
                info = {**verdicts[i].info, "method": "math_verify"}
                if status == "equal":
                    verdicts[i] = Verdict(1.0, CORRECT, info)
                elif status == "unequal":
                    verdicts[i] = Verdict(0.0, WRONG, info)
                elif status == TIMEOUT:
                    verdicts[i] = Verdict(0.0, TIMEOUT, {**info, "detail": detail})
                else:
                    verdicts[i] = Verdict(0.0, ERROR, {**info, "detail": detail})
        return verdicts  # type: ignore[return-value]

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
