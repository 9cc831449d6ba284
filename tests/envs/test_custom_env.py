"""The custom-environment example in docs/envs.md works as written, through env.target."""

from __future__ import annotations

import re
import sys

import pytest

from score_rl.config import ConfigError, EnvConfig, PromptConfig
from score_rl.envs import make_env
from tests.conftest import REPO


@pytest.fixture
def example_on_path(tmp_path, monkeypatch):
    doc = (REPO / "docs" / "envs.md").read_text()
    block = re.search(r"`my_env.py`.*?```python\n(.*?)```", doc, re.S).group(1)
    (tmp_path / "my_env.py").write_text(block)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("my_env", None)


def test_doc_example_runs_through_env_target(example_on_path):
    env = make_env(EnvConfig(target="my_env:MyEnv", params={"size": 5}), PromptConfig(first_attempt="Q: {problem}"))
    train, test = env.problems("train"), env.problems("test")
    assert len(train) == len(test) == 5
    problem = test[0]
    assert env.first_attempt_prompt(problem).startswith("Q: Which is larger")
    assert env.verify(f"The answer is {problem.reference}", problem.reference).reward == 1.0
    assert env.verify("no idea", problem.reference).reason == "no answer extracted"
    assert env.get_problem(problem.id) == problem


@pytest.mark.parametrize("target, message", [
    ("my_env", "must look like 'package.module:ClassName'"),
    ("no_such_module_xyz:Env", "cannot import"),
    ("json:dumps", "does not implement the Env protocol"),
])
def test_bad_targets_are_config_errors(target, message):
    with pytest.raises(ConfigError, match=message):
        make_env(EnvConfig(target=target), PromptConfig())


def test_unknown_param_of_a_custom_env_names_the_key(example_on_path):
    with pytest.raises(ConfigError, match="env.params.sise"):
        make_env(EnvConfig(target="my_env:MyEnv", params={"sise": 5}), PromptConfig())
