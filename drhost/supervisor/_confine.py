"""Confinement of process workers: own namespaces, no network, an unprivileged identity.

A plugin reaches its target only through the Context: the host performs every effect.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from ..errors import RefusedError
from ._sandbox import Sandbox


@functools.lru_cache(maxsize=1)
def network_namespace_available() -> tuple[bool, str]:
    """Whether ``unshare --net`` works here (it needs root or user namespaces); probed once."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False, "unshare(1) not found (util-linux)"
    probe = subprocess.run([unshare, "--net", "--", "true"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        return False, f"unshare --net failed: {probe.stderr.strip()[-200:]}"
    return True, unshare


class ConfinedSandbox:
    """Runs the inner sandbox's worker in a new, empty network namespace (only a down loopback)."""

    def __init__(self, inner: Sandbox, unshare: str) -> None:
        self.inner = inner
        self._unshare = unshare
        self.kind = inner.kind
        self.memory_limit_bytes = inner.memory_limit_bytes
        self.enforces_memory = inner.enforces_memory
        self.process_limit = getattr(inner, "process_limit", None)
        self.enforces_processes = getattr(inner, "enforces_processes", True)

    def __getattr__(self, name: str) -> Any:
        # What else the runner asks of the real sandbox (exit_limit after a cgroup OOM kill), read when asked.
        return getattr(self.inner, name)

    def command(self, entry_point: str) -> list[str]:
        # unshare execs the worker in place: same pid, same process group, same cgroup.
        return [self._unshare, "--net", "--", *self.inner.command(entry_point)]

    def environment(self) -> dict[str, str]:
        return self.inner.environment()

    def prepare(self) -> None:
        self.inner.prepare()

    def started(self, pid: int) -> None:
        self.inner.started(pid)

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float) -> None:
        self.inner.stop(proc, grace_s)

    def explain_exit(self, returncode: int) -> str | None:
        return self.inner.explain_exit(returncode)

    def usage(self) -> dict[str, Any]:
        return self.inner.usage()

    def in_force(self) -> dict[str, Any]:
        return {**self.inner.in_force(), "network": "none (own network namespace)"}

    def close(self) -> None:
        self.inner.close()


def confine_process(sandbox: Sandbox, config: Mapping[str, Any]) -> Sandbox:
    """Process workers get an empty network namespace unless ``[process] network = host``."""
    if sandbox.kind != "process" or (config.get("process") or {}).get("network", "none") != "none":
        return sandbox
    available, unshare = network_namespace_available()
    if not available:
        raise RefusedError(f"process workers cannot be cut off the network here ({unshare}); "
                           f"set [process] network = host to run them with the host's network")
    return ConfinedSandbox(sandbox, unshare)


def innermost(sandbox: Sandbox) -> Sandbox:
    """The sandbox that holds the limits, under any wrappers (confinement, weaker-isolation notes)."""
    while (inner := getattr(sandbox, "inner", None)) is not None:
        sandbox = inner
    return sandbox
