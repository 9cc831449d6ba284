"""The code sandbox: run model-written Python against trusted tests, isolated from the scoring process.

``runner`` is the parent side (``Sandbox``: spawn, limits, capture, proof of completion), ``child`` the script that
sets up isolation inside the new process, ``procs`` the sweep that kills whatever an execution left behind.
"""

from score_rl.sandbox.runner import ExecResult, Sandbox, SandboxConfig

__all__ = ["ExecResult", "Sandbox", "SandboxConfig"]
