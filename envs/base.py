"""The environment protocol: dataset splits, turn-1 prompt, correction instruction, and a verifier.

The verifier's reward is a binary oracle used for training and evaluation only; the model never sees it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Type

from score_rl.config import ConfigError, EnvConfig, PromptConfig


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
                raise ConfigError(f"unknown config key 'env.params.{key}' for env '{cls.name}' (valid: {sorted(valid)})")
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

    # --- prompts (templates come from the config, never from code) -------------------------------------------------
    def first_attempt_prompt(self, problem: Problem) -> str:
        return self.prompt.first_attempt.replace("{problem}", problem.text)

    def correction_instruction(self) -> str:
        return self.prompt.correction

    # --- verifier ------------------------------------------------------------------------------------------------
    def verify(self, response: str, reference: Any) -> Verdict:
        raise NotImplementedError


_REGISTRY: Dict[str, Callable[[], Type[Env]]] = {}


def register_env(name: str, loader: Callable[[], Type[Env]]) -> None:
    _REGISTRY[name] = loader


def make_env(cfg: EnvConfig, prompt: PromptConfig) -> Env:
    if cfg.name not in _REGISTRY:
        raise ConfigError(f"config key 'env.name': unknown environment '{cfg.name}' (known: {sorted(_REGISTRY)})")
    return _REGISTRY[cfg.name]()(dict(cfg.params), prompt, cfg.seed)


def _arithmetic() -> Type[Env]:
    from score_rl.envs.arithmetic import ArithmeticEnv

    return ArithmeticEnv


register_env("arithmetic", _arithmetic)
