"""Sandboxes: how a worker process is confined. The worker runner is the same for all of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any, Protocol

import psutil

from drhost_hookspecs._runtime import WORKER_MODULE

from ..policy import Isolation
from ..transport import stop_process_group


class Sandbox(Protocol):
    """Confinement of one worker: built before each launch, torn down when the runner closes.

    ``enforces_memory`` says whether the kernel holds the worker to its memory limit
    (a cgroup); when it does not, the supervisor's health monitor stops a worker
    whose sampled memory goes over the limit.
    """

    kind: Isolation
    memory_limit_bytes: int | None
    enforces_memory: bool

    # Read-only to callers (properties here, so an implementation may hold a narrower type or a class constant).
    @property
    def enforces_processes(self) -> bool:
        """Whether the kernel holds the worker to ``process_limit``; when not, the health monitor samples it."""
        ...

    @property
    def process_limit(self) -> int | None:
        """The most processes the worker may hold, or None when the class sets none."""
        ...

    @property
    def cpu_percent(self) -> int | None:
        """The CPU share of the class, named when it throttled a step that timed out; None when none is set."""
        ...

    @property
    def exit_limit(self) -> str | None:
        """The limit that ended the last worker (``memory``, ``pids``, ``cpu_time``), set by :meth:`explain_exit`."""
        ...

    @property
    def inner(self) -> Sandbox | None:
        """The sandbox this one wraps (confinement, weaker-isolation notes), or None for the one holding the limits."""
        ...

    def limit_counters(self) -> dict[str, float]:
        """The kernel's limit counters of the current launch (``pids_refused``, ``oom_kill``, ...); {} if none."""
        ...

    def command(self, entry_point: str) -> list[str]:
        """The argv that starts the worker for ``entry_point``."""
        ...

    def environment(self) -> dict[str, str]:
        """The environment of the launched command (never the host's own environment)."""
        ...

    def prepare(self) -> None:
        """Called before every launch (for example: create the cgroup)."""
        ...

    def started(self, pid: int) -> None:
        """Called with the pid of the launched command."""
        ...

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float) -> None:
        """End everything the worker started, without its cooperation; return when it is gone."""
        ...

    def explain_exit(self, returncode: int) -> str | None:
        """When a limit of this sandbox ended the worker, name it (for example the cgroup OOM kill)."""
        ...

    def usage(self) -> dict[str, Any]:
        """Current usage: ``memory_bytes``, ``processes``, ``cpu_percent`` where measurable."""
        ...

    def in_force(self) -> dict[str, Any]:
        """The limits in force and the mechanism of each, for events, records and ``drhost doctor``."""
        ...

    def close(self) -> None:
        """Release what the sandbox holds (cgroups, containers); idempotent."""
        ...


class DelegatingSandbox:
    """A wrapper that adds something (confinement, a note) to the sandbox holding the limits.

    Everything not overridden is the inner sandbox's; ``inner`` is public so that callers
    can find the sandbox under any wrappers (``_confine.innermost``).
    """

    def __init__(self, inner: Sandbox) -> None:
        self.inner: Sandbox = inner
        self.kind = inner.kind
        self.memory_limit_bytes = inner.memory_limit_bytes
        self.enforces_memory = inner.enforces_memory
        self.process_limit = inner.process_limit
        self.enforces_processes = inner.enforces_processes
        self.cpu_percent = inner.cpu_percent

    @property
    def exit_limit(self) -> str | None:
        # read when asked: the inner sandbox sets it as the worker exits
        return self.inner.exit_limit

    def limit_counters(self) -> dict[str, float]:
        return self.inner.limit_counters()

    def command(self, entry_point: str) -> list[str]:
        return self.inner.command(entry_point)

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
        return self.inner.in_force()

    def close(self) -> None:
        self.inner.close()


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_environment(limits: dict[str, Any], message_limit: int) -> dict[str, str]:
    """The explicit environment of a worker process on this machine."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": os.environ.get("HOME", "/"),
        "DRHOST_WORKER_LIMITS": json.dumps(limits),
        # glibc creates an arena per thread; with RLIMIT_AS they exhaust the budget early.
        "MALLOC_ARENA_MAX": "2",
        "PYTHONUNBUFFERED": "1",
        "DRHOST_WORKER_MESSAGE_LIMIT": str(message_limit),
    }
    for passthrough in ("PYTHONPATH", "DRHOST_INSTANT_RETRIES"):
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    return env


def cpu_time_exit(returncode: int, limit_s: Any, used_s: float | None) -> str | None:
    """Name ``RLIMIT_CPU`` when it ended the worker: SIGXCPU at the soft limit, or SIGKILL at the hard one.

    drhost sets soft = hard, so the kernel sends SIGKILL; a SIGKILL is named the CPU time limit only when the
    worker had used (nearly) its whole budget of CPU time (``used_s``: the last measurement, up to a sample
    behind).
    """
    if not limit_s:
        return None
    limit = float(limit_s)
    if returncode == -signal.SIGXCPU:
        return f"CPU time limit {limit:g} s reached (RLIMIT_CPU; killed by SIGXCPU)"
    if returncode == -signal.SIGKILL and used_s is not None and used_s >= limit - max(0.5, 0.05 * limit):
        return f"CPU time limit {limit:g} s reached (RLIMIT_CPU; killed by SIGKILL after {used_s:.1f} s of CPU)"
    return None


def tree_usage(pid: int | None) -> dict[str, Any]:
    """Memory (PSS), CPU seconds and process count of a process and its descendants; empty when gone."""
    if pid is None:
        return {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    rss = 0
    cpu = 0.0
    for proc in procs:
        try:
            # PSS, not RSS: forked children share pages, and RSS would count them once per process.
            rss += proc.memory_full_info().pss
            times = proc.cpu_times()
            cpu += times.user + times.system
        except psutil.Error:
            continue
    return {"memory_bytes": rss, "processes": len(procs), "cpu_seconds": round(cpu, 3)}


class RlimitSandbox:
    """A child process limited by rlimits it sets on itself before importing the plugin.

    The fallback where no cgroup can be created: RLIMIT_AS bounds address space
    (not resident memory), RLIMIT_NOFILE open files; there is no CPU share and, for
    root, no process-count limit. The health monitor adds a sampled RSS limit.
    """

    kind: Isolation = "process"
    enforces_memory = False
    enforces_processes = False

    def __init__(self, limits: dict[str, Any], *, message_limit: int, command: list[str] | None = None,
                 process_limit: int | None = None) -> None:
        self.process_limit = process_limit
        #: rlimits give no CPU share
        self.cpu_percent: int | None = None
        #: the sandbox holding the limits: it wraps nothing
        self.inner: Sandbox | None = None
        self._limits = dict(limits)
        self._message_limit = message_limit
        self._command = command
        self.memory_limit_bytes: int | None = limits.get("memory_bytes")
        self._pid: int | None = None
        #: The limit that ended the last worker (``cpu_time``), set by :meth:`explain_exit`.
        self.exit_limit: str | None = None
        self._cpu_seen: float | None = None

    def command(self, entry_point: str) -> list[str]:
        return self._command or [sys.executable, "-m", WORKER_MODULE, entry_point]

    def environment(self) -> dict[str, str]:
        return worker_environment(self._limits, self._message_limit)

    def prepare(self) -> None:
        self.exit_limit = None
        self._cpu_seen = None

    def started(self, pid: int) -> None:
        self._pid = pid

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float) -> None:
        stop_process_group(proc, grace_s)

    def explain_exit(self, returncode: int) -> str | None:
        cpu = cpu_time_exit(returncode, self._limits.get("cpu_seconds"), self._cpu_seen)
        if cpu is not None:
            self.exit_limit = "cpu_time"
        return cpu

    def usage(self) -> dict[str, Any]:
        found = tree_usage(self._pid)
        if "cpu_seconds" in found:
            self._cpu_seen = float(found["cpu_seconds"])
        return found

    def in_force(self) -> dict[str, Any]:
        found: dict[str, Any] = {"mechanism": "rlimit"}
        for key in ("memory_bytes", "nofile", "cpu_seconds", "core_bytes"):
            if key in self._limits:
                found[key] = self._limits[key]
        if self.memory_limit_bytes:
            found["rss_watch_bytes"] = self.memory_limit_bytes
        if self.process_limit:
            found["process_watch"] = self.process_limit
        return found

    def limit_counters(self) -> dict[str, float]:
        # rlimits keep no counters: a limit is named from the exit status alone
        return {}

    def close(self) -> None:
        return None
