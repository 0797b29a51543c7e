"""Choose the sandbox for a plugin from its class policy and what this machine can do."""

from __future__ import annotations

from typing import Any

from ..policy import ClassPolicy
from ._sandbox import RlimitSandbox, Sandbox


def make_sandbox(policy: ClassPolicy, *, label: str, message_limit: int, config: dict[str, Any]) -> Sandbox:
    """The sandbox a worker of ``policy``'s class gets. ``label`` names it (run, plugin, target)."""
    del label, config  # used by the cgroup and container sandboxes
    if policy.isolation == "process":
        return RlimitSandbox(policy.worker_limits(), message_limit=message_limit, process_limit=policy.pids)
    raise ValueError(f"no sandbox for isolation {policy.isolation!r}")
