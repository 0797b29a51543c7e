"""Policies as data: per-class retry, limits and failure action; per-stage rules."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, get_args

from drhost_hookspecs import PluginClass, Stage

__all__ = [
    "CLASS_ON_FAILURES",
    "DECISIONS",
    "INSTANT_RETRIES_ENV",
    "ISOLATIONS",
    "RESTART_MODES",
    "ROLLBACK_WHENS",
    "RUN_ON_FAILURES",
    "ClassOnFailure",
    "ClassPolicy",
    "Decision",
    "Isolation",
    "RestartMode",
    "RollbackWhen",
    "RunOnFailure",
    "StagePolicy",
    "class_policy",
    "instant_retries",
    "one_of",
    "retry_wait_s",
    "stage_policy",
]

# Literals, not Enums: these values are read from the config and written into the run's state as they are,
# and a Literal keeps them plain strings there while mypy (strict equality) still rejects a misspelt one.

#: Where a plugin's code runs: a thread of the host, a worker process, or a worker in a container.
Isolation = Literal["thread", "process", "container"]
#: A class's action once a step's last retry failed: fail the stage, skip the plugin, or record and go on.
ClassOnFailure = Literal["abort", "skip_plugin", "continue"]
#: ``[run] on_failure``: what to do when a stage fails — ask the operator, or one fixed :data:`Decision`.
RunOnFailure = Literal["ask", "retry", "rollback", "abort"]
#: What was decided about a failed stage.
Decision = Literal["retry", "rollback", "abort"]
#: How a stage is restarted on retry: the whole stage, or the failed steps' cleanups first.
RestartMode = Literal["stage", "cleanup_then_stage"]
#: When a stage is rolled back: always, or only when it failed.
RollbackWhen = Literal["always", "stage_failed"]

ISOLATIONS: Final[tuple[Isolation, ...]] = get_args(Isolation)
CLASS_ON_FAILURES: Final[tuple[ClassOnFailure, ...]] = get_args(ClassOnFailure)
RUN_ON_FAILURES: Final[tuple[RunOnFailure, ...]] = get_args(RunOnFailure)
DECISIONS: Final[tuple[Decision, ...]] = get_args(Decision)
RESTART_MODES: Final[tuple[RestartMode, ...]] = get_args(RestartMode)
ROLLBACK_WHENS: Final[tuple[RollbackWhen, ...]] = get_args(RollbackWhen)

_Word = TypeVar("_Word", bound=str)


def one_of(value: object, words: tuple[_Word, ...], what: str) -> _Word:
    """``value`` as one of ``words``; the config schema already checked it, so anything else is a bug."""
    for word in words:
        if value == word:
            return word
    raise ValueError(f"{what}: {value!r} is not one of {', '.join(words)}")

#: Set to 1 to make every retry wait instant (tests, drills). Child processes inherit it.
INSTANT_RETRIES_ENV = "DRHOST_INSTANT_RETRIES"


@dataclass(frozen=True)
class ClassPolicy:
    """What a plugin class gets: isolation, limits, retries and the action after the last retry."""

    plugin_class: PluginClass
    isolation: Isolation
    memory_mb: int
    cpu_percent: int
    retries: int
    retry_interval_s: float
    on_failure: ClassOnFailure
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
    restart: RestartMode
    #: Free text: what the stage's rollback does, for the operator.
    rollback_rule: str
    rollback_when: RollbackWhen


def class_policy(config: Mapping[str, Any], plugin_class: PluginClass) -> ClassPolicy:
    data = config["classes"][plugin_class.value]
    return ClassPolicy(
        plugin_class=plugin_class,
        isolation=one_of(data["isolation"], ISOLATIONS, f"classes.{plugin_class.value}.isolation"),
        memory_mb=int(data["memory_mb"]),
        cpu_percent=int(data["cpu_percent"]),
        retries=int(data["retries"]),
        retry_interval_s=float(data["retry_interval_s"]),
        on_failure=one_of(data["on_failure"], CLASS_ON_FAILURES, f"classes.{plugin_class.value}.on_failure"),
        nofile=int(data["nofile"]),
        pids=int(data["pids"]) if "pids" in data else None,
    )


def stage_policy(config: Mapping[str, Any], stage: Stage) -> StagePolicy:
    data = config["stages"][stage.value]
    where = f"stages.{stage.value}"
    return StagePolicy(stage, one_of(data["restart"], RESTART_MODES, f"{where}.restart"), str(data["rollback_rule"]),
                       one_of(data["rollback_when"], ROLLBACK_WHENS, f"{where}.rollback_when"))


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
