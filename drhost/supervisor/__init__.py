"""The supervisor's parts: runners that execute plugin code in its isolation, and call outcomes."""

from ._outcome import ENDINGS, CallOutcome
from ._runners import ProcessRunner, Runner, ThreadRunner

__all__ = ["ENDINGS", "CallOutcome", "ProcessRunner", "Runner", "ThreadRunner"]
