"""The code sandbox: run model-written Python against trusted tests, isolated from the scoring process.

``runner`` is the parent side (``Sandbox``: spawn, limits, capture, verdict), ``child`` the script that sets up
isolation inside the candidate's process and serves calls to its functions, ``judge`` the trusted process that runs
the tests through proxies, ``wire`` the plain-data encoding between the two, ``procs`` the sweep that kills whatever
an execution left behind.
"""

from score_rl.sandbox.runner import ExecResult, Job, Sandbox, SandboxConfig

__all__ = ["ExecResult", "Job", "Sandbox", "SandboxConfig"]
