"""Durable run state: checkpoints, the event journal, run directories and locks."""

from ._files import (
    STATE_FORMAT,
    Journal,
    JournalSkips,
    StateFile,
    atomic_write,
    iter_journal,
    read_journal,
    write_private_json,
)
from ._model import RollbackRecord, StepRecord, TargetRecord, checked_keys, new_target_record
from ._runs import (
    CACHE_ENV,
    RunLock,
    RunState,
    cache_root,
    find_run,
    new_run_id,
    run_in_use,
    runs_dir,
    state_root,
)

__all__ = [
    "CACHE_ENV",
    "STATE_FORMAT",
    "Journal",
    "JournalSkips",
    "RollbackRecord",
    "RunLock",
    "RunState",
    "StateFile",
    "StepRecord",
    "TargetRecord",
    "atomic_write",
    "cache_root",
    "checked_keys",
    "find_run",
    "iter_journal",
    "new_run_id",
    "new_target_record",
    "read_journal",
    "run_in_use",
    "runs_dir",
    "state_root",
    "write_private_json",
]
