"""Choose the sandbox for a plugin from its class policy and what this machine can do."""

from __future__ import annotations

from typing import Any

from ..policy import ClassPolicy
from ._cgroups import process_sandbox
from ._sandbox import Sandbox


def make_sandbox(policy: ClassPolicy, *, label: str, message_limit: int, config: dict[str, Any]) -> Sandbox:
    """The sandbox a worker of ``policy``'s class gets. ``label`` names it (run, plugin, target)."""
    if policy.isolation == "process":
        # cgroups where [process] cgroups allows and the machine gives them, else rlimits
        return process_sandbox(policy, label=label, message_limit=message_limit, config=config)
    raise ValueError(f"no sandbox for isolation {policy.isolation!r}")
