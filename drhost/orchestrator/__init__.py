"""The orchestrator: drives every target through the stages, applies policies, rolls back."""

from ._env import Decide, Executor, RunEnv
from ._records import TERMINAL, new_target_record
from ._run import RUN_EXIT_CODES, RunSummary, create_run, drive, run_status

__all__ = [
    "RUN_EXIT_CODES",
    "TERMINAL",
    "Decide",
    "Executor",
    "RunEnv",
    "RunSummary",
    "create_run",
    "drive",
    "new_target_record",
    "run_status",
]
