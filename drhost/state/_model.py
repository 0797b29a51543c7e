"""The shape of a target's record in the run state: what drhost writes, and the one place that names it.

TypedDicts, not dataclasses: the record is stored as JSON and read back by ``drhost status``, the report and
later versions of drhost, so it stays a plain mapping; the types let mypy check every key the orchestrator
reads or writes against this one description. Keys are optional (``total=False``) because a record grows as
its target goes through a run, and a run written by an earlier drhost may lack the newer ones.
"""

from __future__ import annotations

from typing import Any, TypedDict

from drhost_hookspecs import Stage


class StepRecord(TypedDict, total=False):
    """One step of one target: how many times it ran, how the last run ended."""

    status: str  # pending, started, done, failed, skipped, cleaned
    attempts: int
    runs: int
    seq: int  # the order steps started in on this target (rollback runs them last first)
    started: float
    ended: float
    message: str
    ended_as: str
    attempt: int
    duration_s: float
    findings: list[dict[str, Any]]


class RollbackRecord(TypedDict, total=False):
    """How far the target's rollback got: per stage and step, and what failed or did not verify."""

    stages: dict[str, str]
    steps: dict[str, str]
    problems: list[str]
    errors: list[str]
    failed_calls: dict[str, list[dict[str, Any]]]
    verification: dict[str, dict[str, Any]]
    #: The errors and problems of earlier rollback passes, when the rollback was asked again.
    history: list[dict[str, Any]]


class TargetRecord(TypedDict, total=False):
    """One target's record: its status and phase, every step, the plugins' state, errors and the rollback."""

    status: str
    phase: str  # upgrade, rollback, done
    stage: str | None
    version_before: str | None
    version: str | None
    stages: dict[str, str]
    stage_attempts: dict[str, int]
    steps: dict[str, StepRecord]
    plugin_state: dict[str, Any]
    plugins: dict[str, dict[str, Any]]  # how each plugin ended on this target
    skipped_plugins: dict[str, str]
    errors: list[dict[str, Any]]
    cleanups: list[dict[str, Any]]
    rollback: RollbackRecord
    seq: int
    #: A stage restart decided but not yet carried out (cleanup, then its steps reset).
    pending_restart: dict[str, Any] | None
    #: A command that may still run on the target and must be stopped before anything else touches it.
    pending_stop: dict[str, Any] | None
    #: The status-check connection is lost and waits for the operator (``drhost reconnect``).
    status_check: dict[str, Any]
    abandoned_threads: list[dict[str, Any]]
    manual_procedure: list[str]
    evidence: str
    #: What the host noticed during a call that had no step record (host memory, ...).
    findings: list[dict[str, Any]]


def checked_keys(record_type: type, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields``, when every key is one ``record_type`` (a TypedDict of this module) declares; TypeError naming
    the others: a misspelt key must fail where it is written, not be stored for no reader to find."""
    unknown = sorted(set(fields) - set(getattr(record_type, "__optional_keys__", ())) -
                     set(getattr(record_type, "__required_keys__", ())))
    if unknown:
        raise TypeError(f"{record_type.__name__} has no key {', '.join(unknown)}")
    return fields


def new_target_record() -> TargetRecord:
    """The record of a target no step has touched yet."""
    return {
        "status": "pending",
        "phase": "upgrade",
        "stage": None,
        "version_before": None,
        "version": None,
        "stages": {stage.value: "pending" for stage in Stage.ordered()},
        "stage_attempts": {stage.value: 0 for stage in Stage.ordered()},
        "steps": {},
        "plugin_state": {},
        "skipped_plugins": {},
        "errors": [],
        "cleanups": [],
        "rollback": {"stages": {}, "steps": {}, "problems": [], "errors": []},
        "seq": 0,
        "pending_restart": None,
    }
