"""What happens when an operation runs out of time: the evidence, the classified report, the event.

An operation is anything drhost runs under a deadline on a target: a step, its cleanup or rollback, a
plugin-wide hook (cleanup, rollback, verification), a version probe, a context collection, a lock. The
runner has already stopped it (and confirmed it) when this runs. Here the
context of the moment is gathered — the target's /proc through the session, the
controller's through psutil, and every plugin's ``drhost_collect_context`` — saved
with the run, and summed up in one message whose every figure is a measurement.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from drhost_hookspecs import Category, OperationName, PluginClass, Stage

from ..plan import PlannedStep
from ..policy import Isolation
from ..state import write_private_json
from ..supervisor import CallOutcome
from ..supervisor import isolation as isolation_kind
from ..transport import TargetSession
from ..watchdog import (
    Environment,
    StepWatch,
    TimeoutReport,
    as_event_fields,
    collect_controller_context,
    collect_target_context,
    format_timeout,
)

__all__ = ["OP_LABELS", "Operation", "TimeoutEvidence", "diagnose_timeout", "measurement_for"]

#: (plugin name) -> the plugin's collect_context outcome.
AskPlugin = Callable[[str], CallOutcome]


#: What is watched: an operation on a plugin, or drhost's own taking of a target's lock.
WatchedKind = Literal[OperationName, "lock"]
#: A step's own operations: the step, and its cleanup and rollback (which have the step's timeout).
StepOperation = Literal["run_step", "cleanup_step", "rollback_step"]

#: What each kind of operation is called in its report and events (``rollback dr-database.restore_db``).
OP_LABELS: dict[WatchedKind, str] = {
    "run_step": "step", "cleanup_step": "cleanup", "rollback_step": "rollback", "cleanup": "cleanup hook",
    "rollback": "rollback hook", "manual_rollback_steps": "manual rollback steps", "verify": "verification",
    "installed_version": "version probe", "collect_context": "context collection", "lock": "lock",
}


@dataclasses.dataclass(frozen=True)
class Operation:
    """One watched operation on a target: what it is, whose it is, its budget and where that budget is set."""

    kind: WatchedKind
    plugin: str
    stage: Stage | None
    step: str | None
    category: Category
    timeout_s: float
    #: The key that sets the budget: a ``[timeouts]`` key (``upgrade.x``) for a step, its cleanup and rollback;
    #: else the full key (``watchdog.verify_timeout_s``).
    timeout_key: str
    plugin_class: PluginClass | None = None
    isolation: Isolation | None = None
    #: The history key its durations are kept under.
    history_key: str = ""
    #: verify's phase (``completed``, ``rolled_back``), shown in the label.
    phase: str | None = None

    @property
    def label(self) -> str:
        """``rollback dr-database.restore_db``, ``version probe dr-core``, ``verification (completed) dr-core``."""
        what = OP_LABELS.get(self.kind, self.kind)
        if self.phase:
            what = f"{what} ({self.phase})"
        if not self.plugin:  # drhost's own operation (a lock)
            return what
        return f"{what} {self.plugin}.{self.step}" if self.step else f"{what} {self.plugin}"

    @property
    def report_step(self) -> str:
        """The report's ``step:`` row: a step keeps its ``name (plugin)``; any other operation shows its label."""
        return f"{self.step} ({self.plugin})" if self.kind == "run_step" else self.label

    @classmethod
    def of_step(cls, step: PlannedStep, kind: StepOperation = "run_step") -> Operation:
        """A step, or its cleanup or rollback (which have the step's timeout)."""
        key = step.key if kind == "run_step" else f"{step.key}#{kind}"
        return cls(kind=kind, plugin=step.plugin, stage=step.stage, step=step.name, category=step.category,
                   timeout_s=step.timeout_s, timeout_key=step.timeout_key,
                   plugin_class=step.plugin_class, isolation=step.isolation, history_key=key)


@dataclasses.dataclass(frozen=True)
class TimeoutEvidence:
    """What the executor knows about the timed-out call when it hands it over."""

    target: str
    step: Operation
    attempt: int
    watch: StepWatch
    #: Seconds from the step's start until its stop was confirmed.
    elapsed_s: float
    outcome: CallOutcome
    stopped_commands: tuple[Mapping[str, Any], ...]
    install_root: str
    package_size: int


def _how_stopped(evidence: TimeoutEvidence) -> dict[str, Any]:
    detail = evidence.outcome.detail
    isolation = evidence.step.isolation
    how: dict[str, Any]
    if isolation is None:
        # drhost's own operation (a lock): the watch cannot stop it; its commands are bounded on their own.
        how = {"how": "drhost's own operation; it returned after its budget (its commands have their own bound)",
               "confirmed": True}
    elif not isolation_kind(isolation).in_worker:
        hung = bool(detail.get("hung_thread"))
        how = {"how": "thread asked to stop; it did not return and was abandoned" if hung
               else "thread aborted (it returned after the stop request)", "confirmed": not hung}
    else:
        what = isolation_kind(isolation).noun
        killed = bool(detail.get("killed"))
        how = {"how": f"{what} killed with everything it started" if killed
               else f"{what} stopped the step when asked", "confirmed": True}
    if evidence.stopped_commands:
        how["remote_commands"] = [dict(c) for c in evidence.stopped_commands]
    return how


def measurement_for(step: PlannedStep | Operation, contexts: Mapping[str, Mapping[str, Any]], *,
                    latency_ms: float | None, progress_total_bytes: float | None, package_size: int) -> dict[str, Any]:
    """The figure the reason line carries for the step's category (see ``drhost_collect_context``)."""
    category = step.category
    if category is Category.PLUGIN:
        return {"plugin": step.plugin}
    # The step's own plugin knows best what it was doing; then any plugin that measured the same thing.
    wanted = {Category.NETWORK: "latency_ms", Category.DATABASE: "data_bytes", Category.FILE: "file_bytes",
              Category.SERVICE: "port"}[category]
    # A file is the step's own business; the service's port, the catalog's size and the link's latency are the
    # target's, whichever plugin measured them.
    others = [] if category is Category.FILE else sorted(name for name in contexts if name != step.plugin)
    ordered = [step.plugin, *others]
    for name in ordered:
        measured = contexts.get(name, {}).get("measurement")
        if isinstance(measured, Mapping) and measured.get(wanted) is not None:
            return {key: measured[key] for key in (wanted, "label") if key in measured}
    if category is Category.NETWORK:
        return {"latency_ms": latency_ms}
    if category is Category.FILE and progress_total_bytes:
        return {"file_bytes": progress_total_bytes}
    if category is Category.FILE and step.stage is Stage.TRANSFER:
        return {"file_bytes": package_size, "label": "package"}
    return {wanted: None}


def _context_name(evidence: TimeoutEvidence) -> str:
    step = evidence.step
    where = step.stage.value if step.stage is not None else "run"
    what = step.step if step.kind == "run_step" else f"{step.step or ''}{'-' if step.step else ''}{step.kind}"
    return f"{evidence.target}-{where}-{step.plugin}-{what}-attempt{evidence.attempt}"


def diagnose_timeout(evidence: TimeoutEvidence, *, session: TargetSession, ask_plugin: AskPlugin,
                     plugins_with_context: list[str], run_dir: Path) -> tuple[TimeoutReport, dict[str, Any]]:
    """Gather and save the context of a timeout; return the report and the ``watchdog.timeout`` event fields."""
    step = evidence.step
    environment, controller = evidence.watch.environment_at_deadline()
    started = time.monotonic()
    target_context = collect_target_context(session, install_root=evidence.install_root)
    controller_context = collect_controller_context()
    contexts: dict[str, dict[str, Any]] = {}
    ordered = sorted(plugins_with_context, key=lambda name: name != step.plugin)
    for name in ordered:
        outcome = ask_plugin(name)
        if outcome.ok and isinstance(outcome.result, dict):
            contexts[name] = outcome.result
        else:
            contexts[name] = {"error": f"{outcome.ended}: {outcome.message}"}
    latency = session.latency_ms() if step.category is Category.NETWORK else None
    progress = evidence.watch.progress
    total_bytes = progress.total if progress is not None and progress.unit == "bytes" else None
    measurement = measurement_for(step, contexts, latency_ms=latency, progress_total_bytes=total_bytes,
                                  package_size=evidence.package_size)
    stopped = _how_stopped(evidence)
    report = TimeoutReport(
        stage=step.stage.value if step.stage is not None else "", step=step.report_step,
        category=step.category,
        measurement=measurement, configured_s=step.timeout_s, elapsed_s=round(evidence.elapsed_s, 1),
        environment=environment,
        controller_environment=controller if step.category is Category.PLUGIN else None,
        # The class's CPU share that throttled the worker meanwhile (measured by the runner from cpu.stat).
        cpu_throttled=evidence.outcome.detail.get("cpu_throttled") or None,
    )
    cls = step.plugin_class.value if step.plugin_class is not None else None
    record: dict[str, Any] = {
        "target": evidence.target, "stage": step.stage.value if step.stage is not None else None,
        "step": step.step, "plugin": step.plugin or None, "operation": step.label, "op": step.kind,
        "class": cls, "isolation": step.isolation, "attempt": evidence.attempt,
        "timeout_key": step.timeout_key, **as_event_fields(report), "measurement": measurement,
        "controller_environment": (controller or Environment()).as_dict(), "stopped": stopped,
        "target_context": target_context, "controller_context": controller_context, "plugin_contexts": contexts,
        "collected_in_s": round(time.monotonic() - started, 2),
    }
    path = write_private_json(run_dir / "timeouts", _context_name(evidence), record)
    report = dataclasses.replace(report, context_path=str(path))
    fields = {**as_event_fields(report), "measurement": measurement, "attempt": evidence.attempt,
              "operation": step.label, "op": step.kind,
              "class": cls, "isolation": step.isolation, "timeout_key": step.timeout_key,
              "controller_environment": record["controller_environment"], "stopped": stopped,
              "text": format_timeout(report)}
    return report, fields
