"""The sandboxes of the worker kinds, from a class policy and what this machine can do (see ``_isolation``)."""

from __future__ import annotations

from typing import Any

from ..errors import RefusedError, message_phrase
from ..policy import ClassPolicy
from ._cgroups import process_sandbox
from ._confine import confine_process
from ._container import ContainerSandbox, WeakerSandbox
from ._podman import ContainerUnavailable
from ._sandbox import Sandbox

#: Processes a container may hold when the class sets no ``pids``.
DEFAULT_CONTAINER_PIDS = 64


def process_worker_sandbox(policy: ClassPolicy, *, label: str, message_limit: int,
                           config: dict[str, Any]) -> Sandbox:
    """A worker process: cgroups where [process] cgroups allows and the machine gives them, else rlimits; then the
    worker's own namespaces, identity and read-only view of the host."""
    return confine_process(process_sandbox(policy, label=label, message_limit=message_limit, config=config), config)


def container_sandbox(policy: ClassPolicy, *, label: str, message_limit: int, config: dict[str, Any]) -> Sandbox:
    """A podman container; without podman, a refusal, or the process sandbox if weaker isolation is allowed."""
    try:
        return ContainerSandbox(memory_mb=policy.memory_mb, cpu_percent=policy.cpu_percent, nofile=policy.nofile,
                                pids_limit=policy.pids or DEFAULT_CONTAINER_PIDS, label=label,
                                message_limit=message_limit, config=config)
    except ContainerUnavailable as exc:
        why = message_phrase(exc)
    if (config.get("run") or {}).get("allow_weaker_isolation"):
        inner = process_worker_sandbox(policy, label=label, message_limit=message_limit, config=config)
        return WeakerSandbox(inner, f"container unavailable: {why}")
    raise RefusedError.worded(
        "{plugin_class} plugins run in a container, and none can be started here: {why}. Third-party plugins will "
        "not run unconfined; install podman (and a working OCI runtime), or accept the weaker process isolation "
        "with --set run.allow_weaker_isolation=true", plugin_class=policy.plugin_class.value, why=why)
