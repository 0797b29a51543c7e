"""Policies as data: per-class retry, limits and failure action; per-stage rules."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from drhost_hookspecs import PluginClass, Stage

#: Set to 1 to make every retry wait instant (tests, drills). Child processes inherit it.
INSTANT_RETRIES_ENV = "DRHOST_INSTANT_RETRIES"


@dataclass(frozen=True)
class ClassPolicy:
    """What a plugin class gets: isolation, limits, retries and the action after the last retry."""

    plugin_class: PluginClass
    isolation: str
    memory_mb: int
    cpu_percent: int
    retries: int
    retry_interval_s: float
    on_failure: str
    nofile: int
    #: Processes a worker may have at once (pids cgroup, else sampled); None for threads.
    pids: int | None = None

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def worker_limits(self) -> dict[str, Any]:
        """Limits a worker of this class applies to itself before importing the plugin."""
        return {"memory_bytes": self.memory_mb * 1024 * 1024, "nofile": self.nofile, "core_bytes": 0}


@dataclass(frozen=True)
class StagePolicy:
    stage: Stage
    restart: str
    rollback_rule: str
    rollback_when: str


def class_policy(config: Mapping[str, Any], plugin_class: PluginClass) -> ClassPolicy:
    data = config["classes"][plugin_class.value]
    return ClassPolicy(
        plugin_class=plugin_class,
        isolation=str(data["isolation"]),
        memory_mb=int(data["memory_mb"]),
        cpu_percent=int(data["cpu_percent"]),
        retries=int(data["retries"]),
        retry_interval_s=float(data["retry_interval_s"]),
        on_failure=str(data["on_failure"]),
        nofile=int(data["nofile"]),
        pids=int(data["pids"]) if "pids" in data else None,
    )


def stage_policy(config: Mapping[str, Any], stage: Stage) -> StagePolicy:
    data = config["stages"][stage.value]
    return StagePolicy(stage, str(data["restart"]), str(data["rollback_rule"]),
                       str(data["rollback_when"]))


def retry_wait_s(policy: ClassPolicy, config: Mapping[str, Any]) -> float:
    """The wait before the next attempt; zero under :func:`instant_retries`."""
    if os.environ.get(INSTANT_RETRIES_ENV) == "1":
        return 0.0
    return policy.retry_interval_s * float(config["run"]["retry_wait_scale"])


@contextlib.contextmanager
def instant_retries() -> Iterator[None]:
    """Within this block (and in processes it starts) retries do not wait."""
    before = os.environ.get(INSTANT_RETRIES_ENV)
    os.environ[INSTANT_RETRIES_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(INSTANT_RETRIES_ENV, None)
        else:
            os.environ[INSTANT_RETRIES_ENV] = before
