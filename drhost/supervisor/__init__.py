"""The supervisor's parts: runners that execute plugin code in its isolation, sandboxes, call outcomes."""

from ._cgroups import (
    CGROUPS_MODES,
    LIMIT_CONTROLLERS,
    CgroupSandbox,
    CgroupsMode,
    cgroup_support,
    probe_cgroups,
    remove_run_cgroups,
    sanitize_label,
)
from ._confine import innermost, network_namespace_available
from ._container import WeakerSandbox, remove_left_containers
from ._isolation import ISOLATION_KINDS, IsolationKind, Removed, isolation, make_sandbox
from ._outcome import ENDINGS, LIMIT_ENDINGS, CallOutcome, Ending, LimitEnding
from ._podman import container_available
from ._runners import HealthWatch, Runner, WorkerDied, WorkerRunner
from ._sandbox import RlimitSandbox, Sandbox, process_alive, tree_usage, worker_environment
from ._thread_runner import ThreadRunner
from ._worker_dirs import remove_stale_worker_dirs

__all__ = [
    "CGROUPS_MODES",
    "ENDINGS",
    "ISOLATION_KINDS",
    "LIMIT_CONTROLLERS",
    "LIMIT_ENDINGS",
    "CallOutcome",
    "CgroupSandbox",
    "CgroupsMode",
    "Ending",
    "HealthWatch",
    "IsolationKind",
    "LimitEnding",
    "Removed",
    "RlimitSandbox",
    "Runner",
    "Sandbox",
    "ThreadRunner",
    "WeakerSandbox",
    "WorkerDied",
    "WorkerRunner",
    "cgroup_support",
    "container_available",
    "innermost",
    "isolation",
    "make_sandbox",
    "network_namespace_available",
    "probe_cgroups",
    "process_alive",
    "remove_left_containers",
    "remove_run_cgroups",
    "remove_stale_worker_dirs",
    "sanitize_label",
    "tree_usage",
    "worker_environment",
]
