"""The environment protocol: dataset splits, turn-1 prompt, correction instruction, and a verifier.

The verifier's reward is a binary oracle used for training and evaluation only; the model never sees it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Type

from score_rl.config import EnvConfig, PromptConfig
from score_rl.errors import ConfigError


@dataclass(frozen=True)
class Problem:
    id: str
    text: str  # inserted into the turn-1 prompt template as {problem}
    reference: Any  # what verify() compares against; never shown to the model


@dataclass
class Verdict:
    reward: float
    reason: str  # short, human-readable: "correct", "wrong answer", "no answer extracted", ...
    info: Dict[str, Any] = field(default_factory=dict)


class Env:
    """Base class of every environment. Subclasses set ``Params`` (a dataclass) and implement the abstract parts."""

    name: str = "base"
    split_names: tuple = ("train", "test")
    # Verdict reasons that say nothing about the answer (the verifier failed, not the answer): majority vote never
    # elects an answer on such a verdict and never asks same_answer about such an answer.
    unsettled_reasons: tuple = ()

    @dataclass
    class Params:
        pass

    def __init__(self, params: Optional[Dict[str, Any]] = None, prompt: Optional[PromptConfig] = None, seed: int = 0):
        self.params = self._parse_params(params or {})
        self.prompt = prompt or PromptConfig()
        self.seed = seed

    @classmethod
    def _parse_params(cls, params: Dict[str, Any]):
        valid = {f.name: f for f in dataclasses.fields(cls.Params)}
        try:
            types = typing.get_type_hints(cls.Params)
        except Exception:  # annotations that cannot be resolved: no type check
            types = {}
        parsed = {}
        for key, value in params.items():
            if key not in valid:
                raise ConfigError(f"unknown config key 'env.params.{key}' for env '{cls.name}' "
                                  f"(valid: {sorted(valid)})")
            expected = types.get(key)
            if expected in (int, float, bool, str):  # scalar params: wrong types name the key (no TypeError later)
                if expected is float and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                    raise ConfigError(f"config key 'env.params.{key}' expects {expected.__name__}, got {value!r}")
            parsed[key] = value
        return cls.Params(**parsed)

    # --- dataset -------------------------------------------------------------------------------------------------
    def problems(self, split: str) -> List[Problem]:
        raise NotImplementedError

    def get_problem(self, problem_id: str) -> Problem:
        """Look a problem up by id in any split (``score-rl score`` uses it)."""
        if not hasattr(self, "_by_id"):
            self._by_id = {p.id: p for split in self.split_names for p in self.problems(split)}
        if problem_id not in self._by_id:
            raise KeyError(f"env '{self.name}' has no problem with id '{problem_id}'")
        return self._by_id[problem_id]

    # --- prompts (templates come from the config, never from code) -------------------------------------------------
    def first_attempt_prompt(self, problem: Problem) -> str:
        """The turn-1 prompt of ``problem``. Deterministic: a rollout asks once per problem and gives every sample
        of it the same prompt (the group shares it)."""
        return self.prompt.first_attempt.replace("{problem}", problem.text)

    def correction_instruction(self) -> str:
        return self.prompt.correction

    # --- verifier ------------------------------------------------------------------------------------------------
    def verify(self, response: str, reference: Any) -> Verdict:
        raise NotImplementedError

    def verify_batch(self, responses: Sequence[str], references: Sequence[Any]) -> List[Verdict]:
        """Verify many responses; environments with slow verifiers override this with a process pool."""
        check_batch(responses, references)
        return [self.verify(r, ref) for r, ref in zip(responses, references)]

    # --- answer equivalence (majority vote) -------------------------------------------------------------------
    def same_answer(self, a: str, b: str) -> bool:
        """Whether two extracted answers are the same answer, so that a majority vote pools them.

        ``a`` is the earlier answer (a vote class's representative) and is judged in the role of a reference, ``b``
        in that of an attempt: an equivalence is meant to be symmetric, but a verifier's need not be exactly.
        Default: equality after ``default_answer_text`` (surrounding whitespace dropped, inner runs of whitespace
        made one space). Environments whose verifier accepts answers written differently (the math env: ``0.5``
        for ``\\frac{1}{2}``) override this with the equivalence their verifier uses. It must be reflexive and
        should never raise: an undecidable pair is simply not the same answer.
        """
        return default_answer_text(a) == default_answer_text(b)

    def first_same_answer(self, answer: str, candidates: Sequence[str]) -> Optional[int]:
        """Index of the first of ``candidates`` that ``same_answer(candidate, answer)`` accepts, else None.

        Majority vote calls this once per distinct answer, with the representatives of the classes found so far.
        Environments with an expensive equivalence override it to decide cheap pairs first and batch the rest.
        """
        for j, candidate in enumerate(candidates):
            if self.same_answer(candidate, answer):
                return j
        return None

    def close(self) -> None:
        """Release pools or other resources held by the environment."""


class PooledEnv(Env):
    """An environment whose verifier runs batches in a pool: verify() is a batch of one."""

    def verify(self, response: str, reference: Any) -> Verdict:
        return self.verify_batch([response], [reference])[0]


def default_answer_text(answer: Any) -> str:
    """The default canonical text of an answer for ``Env.same_answer``: ``str(answer)`` with surrounding whitespace
    dropped and every inner run of whitespace made one space."""
    return " ".join(str(answer).split())


def check_batch(responses: Sequence[str], references: Sequence[Any]) -> None:
    if len(responses) != len(references):
        raise ValueError(f"verify_batch: {len(responses)} responses but {len(references)} references")


_REGISTRY: Dict[str, Callable[[], Type[Env]]] = {}


def register_env(name: str, loader: Callable[[], Type[Env]]) -> None:
    _REGISTRY[name] = loader


def load_target(target: str) -> Type[Env]:
    """'package.module:ClassName' → the class (a custom environment implementing the Env protocol)."""
    import importlib

    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"config key 'env.target' must look like 'package.module:ClassName', got '{target}'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"config key 'env.target': cannot import '{target}' ({err})") from None
    missing = [m for m in ("problems", "verify", "first_attempt_prompt", "correction_instruction")
               if not callable(getattr(obj, m, None))]
    if not isinstance(obj, type) or missing:
        raise ConfigError(f"config key 'env.target': '{target}' does not implement the Env protocol "
                          f"(missing {missing})")
    return obj


def make_env(cfg: EnvConfig, prompt: PromptConfig) -> Env:
    if cfg.target:
        return load_target(cfg.target)(dict(cfg.params), prompt, cfg.seed)
    if cfg.name not in _REGISTRY:
        raise ConfigError(f"config key 'env.name': unknown environment '{cfg.name}' (known: {sorted(_REGISTRY)})")
    return _REGISTRY[cfg.name]()(dict(cfg.params), prompt, cfg.seed)


def _arithmetic() -> Type[Env]:
    from score_rl.envs.arithmetic import ArithmeticEnv

    return ArithmeticEnv


def _math() -> Type[Env]:
    from score_rl.envs.math import MathEnv

    return MathEnv


def _code() -> Type[Env]:
    from score_rl.envs.code import CodeEnv

    return CodeEnv


register_env("arithmetic", _arithmetic)
register_env("math", _math)
register_env("code", _code)
