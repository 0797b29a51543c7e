"""Limits a worker applies to itself before it imports the plugin.

The worker sets them on itself rather than in a pre-exec hook of the parent, which is
unsafe in the threaded host. What each limit does and does not guarantee is in
docs/architecture.md ("Isolation").
"""

from __future__ import annotations

import resource
from typing import Any

_RLIMITS = {
    "memory_bytes": resource.RLIMIT_AS,
    "nofile": resource.RLIMIT_NOFILE,
    "cpu_seconds": resource.RLIMIT_CPU,
    "nproc": resource.RLIMIT_NPROC,
    "core_bytes": resource.RLIMIT_CORE,
}


def apply_limits(limits: dict[str, Any], pid: int) -> dict[str, Any]:
    """Join the given cgroups, then lower the rlimits. Returns what is in force."""
    applied: dict[str, Any] = {}
    for procs_file in limits.get("cgroup_procs", []):
        with open(procs_file, "w", encoding="ascii") as handle:
            handle.write(str(pid))
        applied.setdefault("cgroups", []).append(procs_file)
    for key, which in _RLIMITS.items():
        value = limits.get(key)
        if value is None:
            continue
        _soft, hard = resource.getrlimit(which)
        wanted = int(value)
        if hard != resource.RLIM_INFINITY:
            wanted = min(wanted, hard)
        # Lower both, so plugin code cannot raise its own soft limit back.
        resource.setrlimit(which, (wanted, wanted))
        applied[key] = wanted
    return applied
