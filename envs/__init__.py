"""Task environments (installed as ``score_rl.envs``)."""

from score_rl.envs.base import Env, Problem, Verdict, make_env, register_env

__all__ = ["Env", "Problem", "Verdict", "make_env", "register_env"]
