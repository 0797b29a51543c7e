"""The words a run's state records: a target's, a run's, a stage's and a step's status, and the drive's mode.

Literals, not Enums: they are written into ``state.json`` as they are and read back by status, the report and
resume; a Literal keeps them plain strings there while mypy (strict equality) rejects a misspelt one.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = [
    "PHASES",
    "RUN_MODES",
    "RUN_STATUSES",
    "STAGE_STATUSES",
    "STEP_STATUSES",
    "TARGET_STATUSES",
    "Phase",
    "RunMode",
    "RunStatus",
    "StageStatus",
    "StepStatus",
    "TargetStatus",
]

#: What a drive of a run does: the first upgrade, a resume, or a rollback (``run.started`` records it).
RunMode = Literal["upgrade", "resume", "rollback"]
#: What a target's record is on its way to (``phase``): the new version, its rollback, or nothing more.
Phase = Literal["upgrade", "rollback", "done"]
#: A target's ``status`` in the run's state. ``rollback_failed`` is only in states of earlier versions (today a
#: rollback that does not verify leaves the target ``inconsistent``).
TargetStatus = Literal["pending", "running", "rolling_back", "succeeded", "up_to_date", "rolled_back", "failed",
                       "aborted", "interrupted", "inconsistent", "rollback_failed", "unreachable", "locked", "refused"]
#: How a run ended (its exit code follows), or where it stands while it runs.
RunStatus = Literal["created", "running", "rolling_back", "succeeded", "rolled_back", "failed", "aborted",
                    "interrupted", "refused"]
#: A stage's status in a target's record (``stages``); a rollback's stages are ``done`` or ``failed``.
StageStatus = Literal["pending", "running", "completed", "failed", "done"]
#: A step's status in a target's record (``steps``): ``cleaned`` after its cleanup ran for a stage restart.
StepStatus = Literal["pending", "started", "done", "failed", "skipped", "cleaned"]

PHASES: Final[tuple[Phase, ...]] = get_args(Phase)
RUN_MODES: Final[tuple[RunMode, ...]] = get_args(RunMode)
TARGET_STATUSES: Final[tuple[TargetStatus, ...]] = get_args(TargetStatus)
RUN_STATUSES: Final[tuple[RunStatus, ...]] = get_args(RunStatus)
STAGE_STATUSES: Final[tuple[StageStatus, ...]] = get_args(StageStatus)
STEP_STATUSES: Final[tuple[StepStatus, ...]] = get_args(StepStatus)
