"""The orchestrator: drives every target through the stages, applies policies, rolls back."""

from ._abandoned import abandoned_view
from ._env import Decide, Executor, RunEnv, target_info
from ._fleet import ApproveBatch
from ._records import TERMINAL, new_target_record
from ._rollback import plugins_last_first, rollback_verdict
from ._rollout import Batch, Budget, RolloutError, batches_for
from ._run import RUN_EXIT_CODES, RunSummary, create_run, drive, run_status
from ._status_check import ask_reconnect, waiting_line
from ._statuses import (
    PHASES,
    RUN_MODES,
    RUN_STATUSES,
    STAGE_STATUSES,
    STEP_STATUSES,
    TARGET_STATUSES,
    Phase,
    RunMode,
    RunStatus,
    StageStatus,
    StepStatus,
    TargetStatus,
)

__all__ = [
    "PHASES",
    "RUN_EXIT_CODES",
    "RUN_MODES",
    "RUN_STATUSES",
    "STAGE_STATUSES",
    "STEP_STATUSES",
    "TARGET_STATUSES",
    "TERMINAL",
    "ApproveBatch",
    "Batch",
    "Budget",
    "Decide",
    "Executor",
    "Phase",
    "RolloutError",
    "RunEnv",
    "RunMode",
    "RunStatus",
    "RunSummary",
    "StageStatus",
    "StepStatus",
    "TargetStatus",
    "abandoned_view",
    "ask_reconnect",
    "batches_for",
    "create_run",
    "drive",
    "new_target_record",
    "plugins_last_first",
    "rollback_verdict",
    "run_status",
    "target_info",
    "waiting_line",
]
