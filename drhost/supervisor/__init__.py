"""The supervisor's parts: runners that execute plugin code in its isolation, sandboxes, call outcomes."""

from ._factory import make_sandbox
from ._outcome import ENDINGS, CallOutcome
from ._runners import HealthWatch, Runner, WorkerRunner
from ._sandbox import RlimitSandbox, Sandbox, tree_usage, worker_environment
from ._thread_runner import ThreadRunner

__all__ = [
    "ENDINGS",
    "CallOutcome",
    "HealthWatch",
    "RlimitSandbox",
    "Runner",
    "Sandbox",
    "ThreadRunner",
    "WorkerRunner",
    "make_sandbox",
    "tree_usage",
    "worker_environment",
]
