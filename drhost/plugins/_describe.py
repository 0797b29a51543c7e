"""Describing one plugin: importing it, in a sandbox, under a deadline — or reading the description cache.

The class of a plugin is what it declares, and it declares it only once imported; so the sandbox
is chosen before: the class a plugin lock gives it (when the lock approves exactly the installed
files), else ``third_party`` — untrusted code gets the strictest class. A ``core`` plugin is
imported into the host only for a run; describing it is running unvetted code, so that happens in
the ``business`` class's process sandbox. Where containers cannot be started and weaker isolation is
not allowed, the ``business`` process sandbox stands in for the container (cgroups, own network
namespace, unprivileged) and the registry says so; a plugin is never described unconfined: when no
sandbox can be made, it is broken with the reason.

Everything the describe starts ends with it: the runner is closed in ``finally``, which kills the
worker's cgroup or container (daemons that left the process group included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from drhost_hookspecs import PluginClass

from ..errors import RefusedError
from ..policy import ClassPolicy, class_policy
from ..supervisor import (
    CallOutcome,
    CgroupSandbox,
    Sandbox,
    WeakerSandbox,
    WorkerDied,
    WorkerRunner,
    cgroup_support,
    container_available,
    innermost,
    isolation,
    make_sandbox,
    process_alive,
    remove_run_cgroups,
)
from ._cache import DescriptionCache, cache_key
from ._digest import Installed, describer_digest

#: The class whose policy describes a plugin no lock vouches for.
UNTRUSTED = PluginClass.THIRD_PARTY
#: The process class that describes core plugins, and untrusted ones where no container can be started.
PROCESS_STAND_IN = PluginClass.BUSINESS
_MESSAGE_LIMIT = 4 * 1024 * 1024
_LABEL_PREFIX = "discover-"


@dataclass(frozen=True)
class DescribeSettings:
    """What a describe needs from the config."""

    config: Mapping[str, Any]
    timeout_s: float
    grace_s: float
    use_cache: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, use_cache: bool = True) -> DescribeSettings:
        discovery = config.get("discovery") or {}
        return cls(config=config, timeout_s=float(discovery.get("timeout_s", 30)),
                   grace_s=float((config.get("run") or {}).get("kill_grace_s", 3.0)),
                   use_cache=use_cache and bool(discovery.get("cache", True)))


@dataclass(frozen=True)
class Described:
    """How a describe ended: the plugin's description, or why it is broken; where it ran."""

    description: Mapping[str, Any] | None
    error: str = ""
    #: "container" or "process"; None when no sandbox could be made.
    described_in: str | None = None
    cached: bool = False
    #: Set when the describe ran in another sandbox than the class asked for (no container here).
    note: str = ""


def describe_policy(config: Mapping[str, Any], locked_class: PluginClass | None) -> ClassPolicy:
    """The policy a plugin is described under: its locked class's, else the untrusted class's; never a thread."""
    policy = class_policy(config, locked_class or UNTRUSTED)
    if not isolation(policy.isolation).in_worker:
        policy = class_policy(config, PROCESS_STAND_IN)
        if not isolation(policy.isolation).in_worker:
            policy = dataclasses.replace(policy, isolation="process")
    return policy


def _kind(policy: ClassPolicy) -> str:
    # a describe policy always runs in a worker (describe_policy), so its isolation is a sandbox kind
    return policy.isolation


def _key(installed: Installed, policy: ClassPolicy, kind: str, config: Mapping[str, Any]) -> str:
    return cache_key({
        "format": 1, "plugin": installed.name, "entry_point": installed.value,
        "distribution": installed.distribution, "version": installed.version, "digest": installed.digest,
        "locations": list(installed.files.locations()), "describer": describer_digest(),
        "sandbox": {"class": policy.plugin_class.value, "kind": kind, "memory_mb": policy.memory_mb,
                    "cpu_percent": policy.cpu_percent, "pids": policy.pids, "nofile": policy.nofile,
                    "process": config.get("process"), "container": config.get("container") if kind == "container"
                    else None},
    })


def _sandbox(policy: ClassPolicy, settings: DescribeSettings, label: str) -> tuple[Sandbox, ClassPolicy, str]:
    """The sandbox for ``policy``, or the process stand-in where no container can be started (with a note)."""
    config = dict(settings.config)
    try:
        sandbox = make_sandbox(policy, label=label, message_limit=_MESSAGE_LIMIT, config=config)
    except RefusedError as exc:
        weaker = isolation(policy.isolation).weaker
        if weaker is None:
            raise
        stand_in = describe_policy(config, PROCESS_STAND_IN)
        if isolation(stand_in.isolation).weaker is not None:
            stand_in = dataclasses.replace(stand_in, isolation=weaker)
        sandbox = make_sandbox(stand_in, label=label, message_limit=_MESSAGE_LIMIT, config=config)
        available, why = container_available(config)
        return sandbox, stand_in, (f"no container can be started here ({why if not available else exc}), so "
                                   f"plugins no lock vouches for were described in the "
                                   f"{stand_in.plugin_class.value} class's process sandbox instead (cgroups, own "
                                   f"namespaces, its limits)")
    if isinstance(sandbox, WeakerSandbox):
        return sandbox, policy, (f"{sandbox.why}; plugins no lock vouches for were described in a process sandbox "
                                 f"with the {policy.plugin_class.value} limits (run.allow_weaker_isolation)")
    return sandbox, policy, ""


def describe(installed: Installed, locked_class: PluginClass | None, settings: DescribeSettings,
             cache: DescriptionCache, logger: logging.Logger) -> Described:
    """Describe one plugin: from the cache when its files, its sandbox and drhost are unchanged, else in a sandbox."""
    policy = describe_policy(settings.config, locked_class)
    kind = _kind(policy)
    key = _key(installed, policy, kind, settings.config)
    if settings.use_cache:
        hit = cache.get(key, installed.name)
        if hit is not None:
            return Described(hit.description, described_in=hit.described_in, cached=True)
    label = f"{_LABEL_PREFIX}{os.getpid()}/{installed.name}"
    try:
        sandbox, used, note = _sandbox(policy, settings, label)
    except Exception as exc:  # no sandbox, no describe: never unconfined
        return Described(None, error=f"no sandbox to describe it in: {exc}")
    described_in = sandbox.kind
    if (used, described_in) != (policy, kind):
        # Described in a stand-in: cached under the sandbox really used, so a later container is not skipped.
        key = _key(installed, used, described_in, settings.config)
        hit = cache.get(key, installed.name) if settings.use_cache else None
        if hit is not None:
            sandbox.close()
            return Described(hit.description, described_in=hit.described_in, cached=True, note=note)
    description, error = _run(installed, sandbox, settings, logger.getChild(installed.name))
    if description is not None and settings.use_cache:
        cache.put(key, installed.name, description, described_in)
    return Described(description, error=error, described_in=described_in, note=note)


def _run(installed: Installed, sandbox: Sandbox, settings: DescribeSettings,
         logger: logging.Logger) -> tuple[Mapping[str, Any] | None, str]:
    runner = WorkerRunner(installed.name, sandbox=sandbox, logger=logger, grace_s=settings.grace_s,
                          message_limit=_MESSAGE_LIMIT, value=installed.value, startup_timeout_s=settings.timeout_s)
    started = time.monotonic()
    try:
        try:
            # The worker imports the plugin before it says hello: the import is bounded by the same deadline.
            runner.start()
        except WorkerDied as exc:
            return None, _start_failure(str(exc), sandbox, settings, time.monotonic() - started)
        remaining = max(0.5, settings.timeout_s - (time.monotonic() - started))
        outcome = runner.call("describe", None, timeout_s=remaining)
    finally:
        runner.close()
    if outcome.ok:
        if not isinstance(outcome.result, dict):
            return None, f"describe returned {type(outcome.result).__name__}, not a description"
        return outcome.result, ""
    return None, _call_failure(outcome, sandbox, settings)


def _deadline(settings: DescribeSettings, killed: bool = True) -> str:
    return f"describe did not finish within {settings.timeout_s:g} s ({'killed' if killed else 'stopped'})"


def _mib(sandbox: Sandbox) -> str:
    limit = sandbox.memory_limit_bytes
    return f"{limit // (1024 * 1024)} MiB" if limit else "the"


def _start_failure(reason: str, sandbox: Sandbox, settings: DescribeSettings, elapsed: float) -> str:
    """Why the worker never said hello: the deadline, a limit, or the plugin's own error at import."""
    if elapsed >= settings.timeout_s:  # the runner gave up waiting for the hello and killed the worker
        return _deadline(settings)
    limit = sandbox.exit_limit
    if limit == "memory" or reason.startswith("MemoryError"):
        return f"memory limit {_mib(sandbox)} reached while importing ({reason})"
    processes = sandbox.process_limit
    if limit == "pids" or (reason.startswith("BlockingIOError") and _forks_refused(sandbox)):
        return f"process limit {processes} reached while importing (fork refused: {reason})"
    if reason.startswith("BlockingIOError") and processes:
        # EAGAIN at import is what a refused fork raises; the container does not say which limit refused it.
        return f"process limit {processes} probably reached while importing ({reason})"
    return f"worker could not start: {reason}"


def _forks_refused(sandbox: Sandbox) -> bool:
    """Whether the worker's pids cgroup refused a fork (read before the runner removes the cgroup)."""
    inner = innermost(sandbox)
    # only a pids cgroup of drhost's own counts refusals a describe can read (a container's are podman's)
    pids = inner.directories.get("pids") if isinstance(inner, CgroupSandbox) else None
    if pids is None:
        return False
    try:
        events = (pids / "pids.events").read_text()
    except OSError:
        return False
    return any(line.split()[:1] == ["max"] and line.split()[1:2] != ["0"] for line in events.splitlines())


def _call_failure(outcome: CallOutcome, sandbox: Sandbox, settings: DescribeSettings) -> str:
    if outcome.ended == "timeout":
        return _deadline(settings, bool(outcome.detail.get("killed", True)))
    limit = outcome.detail.get("limit") or sandbox.exit_limit
    if outcome.ended == "memory" or limit == "memory":
        return f"memory limit {_mib(sandbox)} reached while describing ({outcome.message})"
    if limit in ("pids", "processes"):
        return (f"process limit {sandbox.process_limit} reached while describing "
                f"({outcome.message})")
    return outcome.message or f"describe ended {outcome.ended}"


def remove_orphaned_cgroups() -> list[str]:
    """Remove the cgroups (and kill what is in them) of describes whose drhost was killed mid-describe."""
    removed: list[str] = []
    with contextlib.suppress(Exception):  # best effort: a cgroup layout we cannot read holds nothing of ours
        support = cgroup_support()
        owners: set[int] = set()
        for base in support.bases.values():
            parent = base / "drhost"
            if parent.is_dir():
                for directory in parent.iterdir():
                    match = re.match(rf"{_LABEL_PREFIX}(\d+)_", directory.name)
                    if match:
                        owners.add(int(match.group(1)))
        for pid in sorted(owners):
            if pid != os.getpid() and not process_alive(pid):
                removed += remove_run_cgroups(f"{_LABEL_PREFIX}{pid}", support)
    return removed

