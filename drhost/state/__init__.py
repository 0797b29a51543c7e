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
    "RunLock",
    "RunState",
    "StateFile",
    "atomic_write",
    "cache_root",
    "find_run",
    "iter_journal",
    "new_run_id",
    "read_journal",
    "run_in_use",
    "runs_dir",
    "state_root",
    "write_private_json",
]
