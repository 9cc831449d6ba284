"""The arithmetic environment (envs/arithmetic.py, installed as score_rl.envs.arithmetic) and envs/base.py."""

from __future__ import annotations

import pytest

from score_rl.config import ConfigError, EnvConfig, PromptConfig
from score_rl.envs import Problem, make_env
from score_rl.envs.arithmetic import ArithmeticEnv, forgot_carry_sum


@pytest.fixture(scope="module")
def env() -> ArithmeticEnv:
    return ArithmeticEnv({}, PromptConfig(), seed=0)


def _operands(problem: Problem):
    a, b = (int(x) for x in problem.text.split(" + "))
    return a, b


# --- verifier --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("response,reference,reward,reason", [
    ("42", 42, 1.0, "correct"),
    (" 42", 42, 1.0, "correct"),
    ("The answer is 42.", 42, 1.0, "correct"),
    ("42 is my final answer\nAnswer: 42", 42, 1.0, "correct"),
    ("41", 42, 0.0, "wrong answer"),
    (" 24", 42, 0.0, "wrong answer"),
    ("4 2", 42, 0.0, "wrong answer"),  # the first integer counts
    ("", 42, 0.0, "no answer extracted"),
    ("I do not know.", 42, 0.0, "no answer extracted"),
    ("-5", -5, 1.0, "correct"),
    ("it is -5 apples", -5, 1.0, "correct"),
    ("5", -5, 0.0, "wrong answer"),
    ("-42", 42, 0.0, "wrong answer"),
])
def test_verifier(env, response, reference, reward, reason):
    verdict = env.verify(response, reference)
    assert verdict.reward == reward, f"verify({response!r}, {reference}) must give reward {reward}"
    assert verdict.reason == reason


def test_verifier_reports_what_it_extracted(env):
    assert env.verify("sum: 75 (I think)", 85).info == {"extracted": 75}
    assert env.verify("none", 85).info == {"extracted": None}


def test_verifier_on_every_test_problem(env):
    for p in env.problems("test")[:50]:
        a, b = _operands(p)
        assert env.verify(f" {a + b}", p.reference).reward == 1.0
        assert env.verify(f" {a + b + 1}", p.reference).reward == 0.0


# --- splits ----------------------------------------------------------------------------------------------------
def test_splits_are_disjoint_and_cover_every_pair(env):
    train, test = env.problems("train"), env.problems("test")
    assert len(test) == 500, "num_test default is 500"
    train_ids, test_ids = {p.id for p in train}, {p.id for p in test}
    assert not train_ids & test_ids, "train and test problems must be disjoint"
    pairs = {_operands(p) for p in train} | {_operands(p) for p in test}
    assert pairs == {(a, b) for a in range(10, 100) for b in range(10, 100)}
    assert len(train) + len(test) == 90 * 90, "no duplicates"


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_test_problem_has_its_commuted_twin_in_train(seed):
    """Held-out unordered pairs: a + b and b + a are in the same split (no memorised-twin leak into the test set)."""
    env = ArithmeticEnv({}, PromptConfig(), seed=seed)
    train = {_operands(p) for p in env.problems("train")}
    test = {_operands(p) for p in env.problems("test")}
    assert len(test) == 500 and not train & test
    assert not {(b, a) for a, b in test} & train, "a test problem's commuted twin is in train"
    assert {(b, a) for a, b in test} == test, "both orders of every held-out pair are in test"


@pytest.mark.parametrize("params", [
    {"min_operand": 1, "max_operand": 4, "num_test": 100}, {"min_operand": 0, "max_operand": 2, "num_test": 4},
    {"min_operand": 3, "max_operand": 9, "num_test": 7}, {"num_test": 1}, {"num_test": 0}, {"num_test": 501},
])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_unordered_split_keeps_the_configured_sizes(params, seed):
    env = ArithmeticEnv(params, seed=seed)
    p = env.params
    n = p.max_operand - p.min_operand + 1
    train = [_operands(q) for q in env.problems("train")]
    test = [_operands(q) for q in env.problems("test")]
    assert len(test) == min(p.num_test, n * n // 2), "the test split holds exactly num_test problems (capped)"
    assert sorted(train + test) == sorted((a, b) for a in range(p.min_operand, p.max_operand + 1)
                                          for b in range(p.min_operand, p.max_operand + 1))
    assert not {(b, a) for a, b in test} & set(train)


def test_split_order_does_not_put_twins_side_by_side(env):
    """Evaluation takes the first trainer.eval_problems test problems: they are not a handful of twin pairs."""
    head = [_operands(p) for p in env.problems("test")[:40]]
    assert sum((b, a) == head[i + 1] for i, (a, b) in enumerate(head[:-1])) < 5


def test_problem_reference_is_the_sum(env):
    for p in env.problems("train")[:100]:
        a, b = _operands(p)
        assert p.reference == a + b


def test_splits_are_seeded(env):
    same = ArithmeticEnv({}, PromptConfig(), seed=0)
    other = ArithmeticEnv({}, PromptConfig(), seed=1)
    assert [p.id for p in same.problems("test")] == [p.id for p in env.problems("test")], "same seed, same split"
    assert [p.id for p in same.problems("train")] == [p.id for p in env.problems("train")]
    assert {p.id for p in other.problems("test")} != {p.id for p in env.problems("test")}, "other seed, other split"


def test_num_test_param_and_small_ranges():
    small = ArithmeticEnv({"min_operand": 1, "max_operand": 4, "num_test": 100})
    assert len(small.problems("test")) == 8, "num_test is capped at half the pairs"
    assert len(small.problems("train")) == 8
    assert len(ArithmeticEnv({"num_test": 7}).problems("test")) == 7


def test_unknown_split_is_a_config_error(env):
    with pytest.raises(ConfigError, match="validation"):
        env.problems("validation")


def test_invalid_operand_range_is_a_config_error():
    with pytest.raises(ConfigError, match="min_operand"):
        ArithmeticEnv({"min_operand": 50, "max_operand": 10})


# --- the teacher's systematic slip -----------------------------------------------------------------------------
@pytest.mark.parametrize("a,b,expected", [
    (37, 48, 75),  # 7 + 8 = 15: the carry is dropped
    (12, 34, 46),  # no carry: the right sum
    (55, 55, 100),  # 110 without the carry
    (99, 99, 188),
    (10, 90, 100),  # no carry from the ones place
])
def test_forgot_carry_sum(a, b, expected):
    assert forgot_carry_sum(a, b) == expected


# --- demonstrations --------------------------------------------------------------------------------------------
N_DEMOS = 4000


@pytest.fixture(scope="module")
def demos(env):
    return env.demonstrations(N_DEMOS, seed=123)


def test_demonstrations_attempt1_is_always_the_forgot_carry_sum(demos):
    assert len(demos) == N_DEMOS
    for problem, (first, _) in demos:
        a, b = _operands(problem)
        assert first == f" {forgot_carry_sum(a, b)}", f"attempt 1 of {problem.text} must forget the carry"


def test_demonstrations_come_from_the_train_split_only(env, demos):
    test_ids = {p.id for p in env.problems("test")}
    assert not {p.id for p, _ in demos} & test_ids, "warm-up demonstrations must never use test problems"


def test_demonstrations_attempt2_mix_matches_demo_copy_and_demo_fix(env, demos):
    counts = {"copy": 0, "fix": 0, "other": 0}
    for problem, (first, second) in demos:
        a, b = _operands(problem)
        if forgot_carry_sum(a, b) == a + b:
            continue  # without a carry, copy and fix give the same text
        value = int(second)
        kind = "copy" if second == first else "fix" if value == a + b else "other"
        counts[kind] += 1
        if kind == "other":
            assert value != a + b and value >= 0 and abs(value - (a + b)) <= 20, "a different wrong answer near a+b"
    total = sum(counts.values())
    assert total > 1000, "sanity: about 45% of two-digit pairs carry"
    p = env.params
    assert counts["copy"] / total == pytest.approx(p.demo_copy, abs=0.05), f"copy share vs demo_copy: {counts}"
    assert counts["fix"] / total == pytest.approx(p.demo_fix, abs=0.05), f"fix share vs demo_fix: {counts}"
    assert counts["other"] / total == pytest.approx(1 - p.demo_copy - p.demo_fix, abs=0.05), counts


def test_demonstrations_respect_the_teacher_params():
    always_fix = ArithmeticEnv({"demo_copy": 0.0, "demo_fix": 1.0}, seed=0)
    for problem, (_, second) in always_fix.demonstrations(300, seed=0):
        assert int(second) == problem.reference, "demo_fix=1 must make every second attempt correct"
    always_copy = ArithmeticEnv({"demo_copy": 1.0, "demo_fix": 0.0}, seed=0)
    assert all(first == second for _, (first, second) in always_copy.demonstrations(300, seed=0))


def test_testbed_teacher_first_attempts(env):
    """The ablation testbed's base model: attempt 1 is the right sum on a share demo_first_correct of carry problems
    (else the forgotten-carry slip), and a large sum loses its hundreds digit whatever else."""
    testbed = ArithmeticEnv({"demo_first_correct": 0.3, "demo_drop_hundreds": 1.0, "drop_hundreds_from": 150}, seed=0)
    right = carries = 0
    for problem, (first, _) in testbed.demonstrations(4000, seed=1):
        a, b = _operands(problem)
        if a + b >= 150:
            assert int(first) == (a + b) % 100, f"{problem.text}: the hundreds digit is dropped"
        elif forgot_carry_sum(a, b) != a + b:
            carries += 1
            right += int(first) == a + b
            assert int(first) in (a + b, forgot_carry_sum(a, b))
        else:
            assert int(first) == a + b
    assert right / carries == pytest.approx(0.3, abs=0.04)
    # enabling nothing keeps the quickstart's demonstrations exactly (its cached base model stays valid)
    assert ArithmeticEnv({"demo_drop_hundreds": 0.0}, seed=0).demonstrations(200, seed=5) == \
        env.demonstrations(200, seed=5)


def test_drop_hundreds_below_100_is_an_error():
    with pytest.raises(ConfigError, match="drop_hundreds_from' must be >= 100"):
        ArithmeticEnv({"drop_hundreds_from": 50})


def test_demonstrations_are_seeded(env):
    assert env.demonstrations(50, seed=7) == env.demonstrations(50, seed=7)
    assert env.demonstrations(50, seed=7) != env.demonstrations(50, seed=8)


# --- params and registry (envs/base.py) ------------------------------------------------------------------------
def test_unknown_env_param_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"env\.params\.max_operandd"):
        ArithmeticEnv({"max_operandd": 50})


@pytest.mark.parametrize("params,key,expected", [
    ({"num_test": "abc"}, "num_test", "int"),
    ({"max_operand": 50.5}, "max_operand", "int"),
    ({"num_test": True}, "num_test", "int"),
    ({"demo_copy": "high"}, "demo_copy", "float"),
])
def test_wrongly_typed_env_param_is_a_config_error_naming_the_key(params, key, expected):
    with pytest.raises(ConfigError, match=rf"'env\.params\.{key}' expects {expected}"):
        make_env(EnvConfig(name="arithmetic", params=params), PromptConfig())


def test_int_env_param_is_accepted_for_a_float():
    env = ArithmeticEnv({"demo_copy": 1, "demo_fix": 0})
    assert env.params.demo_copy == 1.0 and isinstance(env.params.demo_copy, float)


def test_unknown_env_param_via_make_env():
    with pytest.raises(ConfigError, match=r"env\.params\.demo_coppy"):
        make_env(EnvConfig(name="arithmetic", params={"demo_coppy": 0.5}), PromptConfig())


def test_make_env_unknown_name_is_a_config_error():
    with pytest.raises(ConfigError, match=r"env\.name.*'mathh'"):
        make_env(EnvConfig(name="mathh"), PromptConfig())


def test_make_env_builds_the_arithmetic_env_with_params_prompt_and_seed():
    prompt = PromptConfig(first_attempt="Q: {problem} =", correction="\nTry again:")
    env = make_env(EnvConfig(name="arithmetic", params={"num_test": 20, "max_operand": 30}, seed=3), prompt)
    assert isinstance(env, ArithmeticEnv)
    assert env.seed == 3 and env.params.num_test == 20 and env.params.max_operand == 30
    assert len(env.problems("test")) == 20
    assert [p.id for p in env.problems("test")] == [
        p.id for p in ArithmeticEnv({"num_test": 20, "max_operand": 30}, seed=3).problems("test")
    ]
    problem = env.problems("test")[0]
    assert env.first_attempt_prompt(problem) == f"Q: {problem.text} ="
    assert env.correction_instruction() == "\nTry again:"


# --- answer: final (real models) -----------------------------------------------------------------------------------
FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


def _final_env():
    return ArithmeticEnv({"answer": "final", "min_operand": 1, "max_operand": 30}, PromptConfig(), seed=0)


@pytest.mark.parametrize("response, value", [
    ("23 + 45 = 68", 68),  # restated problem: the first integer would be 23
    ("The answer is 68.", 68), ("the answer is: $68$", 68), ("So the answer is 1,234.", 1234),
    (r"We get $23 + 45 = \boxed{68}$.", 68), (r"\boxed{ 68 }, not 23 + 45 = 67", 68),  # boxed wins
    ("Step 1: 20 + 40 = 60. Step 2: 60 + 8 = 68.\n#### 68", 68),
    ("23 + 45 = 68. The answer is 68. Check: 68 - 45 = 23", 68),  # "the answer is" over a later check
    ("23 + 45 = 68, so 68 = 23 + 45", 68),  # a restated equation: "= 23 +" is not a result
    ("The answer is 23 + 45 = 68.", 68), ("The correct answer is 14 + 13 = 27", 27),  # restated after "is"
    ("23 + 45 = 67? No, the answer is **68**", 68), ("23 + 45 = **68**", 68),  # markdown bold
    ("23 + 45 = 68\n- next, 7 + 1 = 8", 8), ("so x = 68\n- a list item", 68),  # an operator on the next line
    ("68.0", 68), (" 68", 68), ("no number here", None), ("= " + "1" * 50, None),
])
def test_final_answer_reads_what_a_model_states(response, value):
    from score_rl.envs.arithmetic import final_number

    assert final_number(response) == value


def test_final_answer_scores_real_smollm2_answers():
    """Greedy answers of SmolLM2-135M-Instruct (both turns, the correction instruction between), captured into a
    fixture: restated problems, "The answer is", equations restated after the result."""
    import json

    env = _final_env()
    rows = [json.loads(line) for line in (FIXTURES / "smollm2_arithmetic.jsonl").read_text().splitlines()]
    assert len(rows) > 30
    for row in rows:
        verdict = env.verify(row["response"], row["reference"])
        assert verdict.info["extracted"] == row["expected"], row
        assert verdict.reward == float(row["expected"] == row["reference"]), row
    first = ArithmeticEnv({}, PromptConfig(), seed=0)  # the default reads the first integer: an operand, here
    assert sum(first.verify(r["response"], r["reference"]).reward for r in rows) < sum(
        env.verify(r["response"], r["reference"]).reward for r in rows)


def test_final_answer_is_linear_on_hostile_text():
    """Long whitespace after "=", "answer is" or a boxed brace, and long digit runs, are read in one pass."""
    import time

    from score_rl.envs.arithmetic import final_number

    for text in ["= " + " " * 100_000 + "x", "answer is" + " " * 100_000, r"\boxed{6" + " " * 30_000 + "7}",
                 "= " + "1" * 50_000 + "+", ("= 1" + " " * 1000) * 100, "=" * 100_000]:
        start = time.monotonic()
        final_number(text)
        assert time.monotonic() - start < 2.0, text[:20]


def test_answer_param_is_checked():
    with pytest.raises(ConfigError, match="env.params.answer"):
        ArithmeticEnv({"answer": "last"}, PromptConfig(), seed=0)
