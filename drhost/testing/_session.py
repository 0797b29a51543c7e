"""Call plugins for one disposable target exactly as a run does.

The session is a real run underneath: a run directory with its checkpointed state,
the plan built from the discovered plugins, and the orchestrator's ``Executor`` —
so every call gets the production context, runner, sandbox (thread, cgroup'd
process, podman container), deadline and watchdog. What it leaves out is the
orchestrator's *policy* (retries, restarts, the failure decision): a test decides
what to call next.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from drhost_hookspecs import OperationName, Stage, VerifyPhase

from ..config import LoadedConfig
from ..events import Event, EventBus
from ..orchestrator import Executor, RunEnv, create_run, plugins_last_first
from ..plan import Plan, PlannedStep
from ..plugins import Registry
from ..preflight import container_check, validate_run_inputs
from ..supervisor import CallOutcome, isolation
from ._target import DisposableTarget

#: The target's name in the session's inventory and run state.
TARGET = "plugin-test"
#: Deadline of the plugin-wide hooks (cleanup, rollback, verify), as in a run.
HOOK_TIMEOUT_S = 300.0


class PluginSession:
    """One target, the plugins of ``plan``, and a run's machinery to call them with."""

    def __init__(self, target: DisposableTarget, config: LoadedConfig, plan: Plan, *,
                 logger: logging.Logger | None = None) -> None:
        self.target = target
        self.config = config
        self.events: list[Event] = []
        self.state = create_run(config=config.data, config_files=config.files, plan=plan, package=target.package)
        bus = EventBus()
        self._journal = self.state.journal()
        bus.subscribe(self._journal)
        bus.subscribe(self.events.append)
        self.env = RunEnv(state=self.state, plan=plan, config=config.data, package=target.package, bus=bus,
                          decide=lambda target, stage, message: "abort",
                          logger=logger or logging.getLogger("drhost.testing"))
        self.executor = Executor(self.env)
        #: Steps that ran since the stage was last cleaned up or rolled back, oldest first, per stage.
        self.ran: dict[Stage, list[PlannedStep]] = {stage: [] for stage in Stage.ordered()}

    @property
    def plan(self) -> Plan:
        return self.env.plan

    @property
    def run_dir(self) -> Path:
        return self.state.run_dir

    # -- calls ------------------------------------------------------------------------
    def call(self, plugin: str, op: OperationName, *, stage: Stage | None = None, step: str | None = None,
             phase: VerifyPhase | None = None, timeout_s: float = HOOK_TIMEOUT_S) -> CallOutcome:
        """One operation of one plugin, in the plugin's isolation, with the production context."""
        return self.executor.call(TARGET, plugin, op, stage=stage, step=step, phase=phase, timeout_s=timeout_s)

    def run_step(self, step: PlannedStep, *, timeout_s: float | None = None, attempt: int = 1) -> CallOutcome:
        """Run one planned step under the watchdog; ``timeout_s`` replaces its budget for this call only."""
        plan = self.env.plan
        if timeout_s is not None:
            shorter = dataclasses.replace(step, timeout_s=timeout_s)
            steps = tuple(shorter if s.key == step.key else s for s in plan.steps)
            self.env.plan = dataclasses.replace(plan, steps=steps)
        try:
            outcome = self.executor.call(TARGET, step.plugin, "run_step", stage=step.stage, step=step.name,
                                         timeout_s=timeout_s or step.timeout_s, attempt=attempt)
        finally:
            self.env.plan = plan
        self.ran[step.stage].append(step)
        return outcome

    def cleanup(self, stage: Stage) -> list[str]:
        """The stage's cleanup as a run does it: step cleanups last-run-first, then plugin-wide hooks."""
        errors = self._compensate(stage, "cleanup")
        self.ran[stage] = []
        return errors

    def rollback(self, stage: Stage) -> list[str]:
        """The stage's rollback as a run does it: step rollbacks last-run-first, then plugin-wide hooks."""
        errors = self._compensate(stage, "rollback")
        self.ran[stage] = []
        return errors

    def _compensate(self, stage: Stage, kind: Literal["cleanup", "rollback"]) -> list[str]:
        ran = list(dict.fromkeys(self.ran[stage]))  # a step that ran twice is compensated once
        seq: dict[str, dict[str, object]] = {step.key: {"seq": index} for index, step in enumerate(self.ran[stage])}
        errors: list[str] = []
        for step in sorted(ran, key=lambda s: int(str(seq[s.key]["seq"])), reverse=True):
            if not (step.has_cleanup if kind == "cleanup" else step.has_rollback):
                continue
            step_op: OperationName = "cleanup_step" if kind == "cleanup" else "rollback_step"
            outcome = self.call(step.plugin, step_op, stage=stage, step=step.name, timeout_s=step.timeout_s)
            if not outcome.ok:
                errors.append(f"{step.label} {kind} {outcome.ended}: {outcome.message}")
        for name in plugins_last_first(ran, seq):
            if f"drhost_{kind}" not in self.plan.plugin(name).hooks:
                continue
            outcome = self.call(name, kind, stage=stage)
            if not outcome.ok:
                errors.append(f"{name} drhost_{kind} {outcome.ended}: {outcome.message}")
        return errors

    def verify(self, stage: Stage, phase: VerifyPhase, plugins: Iterable[str] | None = None) -> dict[str, list[str]]:
        """Problems each plugin's ``drhost_verify`` reports (a hook that did not run is a problem too)."""
        chosen = set(plugins) if plugins is not None else None
        found: dict[str, list[str]] = {}
        for entry in self.plan.plugins_with("drhost_verify"):
            if chosen is not None and entry.name not in chosen:
                continue
            outcome = self.call(entry.name, "verify", stage=stage, phase=phase)
            if not outcome.ok:
                found[entry.name] = [f"verification did not run: {outcome.ended}: {outcome.message}"]
            elif outcome.result:
                found[entry.name] = [str(problem) for problem in outcome.result]
        return found

    def stage_steps(self, stage: Stage) -> list[PlannedStep]:
        return self.plan.stage_steps(stage)

    def events_named(self, *names: str) -> list[Event]:
        return [event for event in self.events if event.event in names]

    # -- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        """Stop every worker and container of the session; the run directory stays for inspection."""
        self.executor.close()
        self._journal.close()
        for name in dict.fromkeys(p.isolation for p in self.plan.plugins):
            isolation(name).clean_up(self.state.run_id, self.config.data, previous_gone=True)

    def __enter__(self) -> PluginSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def session_config(target: DisposableTarget, files: Sequence[Path] = (), overrides: Sequence[str] = ()) -> LoadedConfig:
    """The config of a session: defaults, the one local target and its package, then the caller's files and sets."""
    from ..config import load_config

    inventory: dict[str, Any] = {"run": {"package": str(target.to_package)},
                                 "targets": {TARGET: target.inventory()}}
    return load_config(files, overrides, base=inventory)


def session_plan(config: LoadedConfig, registry: Registry) -> Plan:
    """The plan a run with ``config`` would follow, refused for the same reasons a run is."""
    plan = validate_run_inputs(config, registry)
    container_check(config, plan)
    return plan


__all__ = ["HOOK_TIMEOUT_S", "TARGET", "PluginSession", "session_config", "session_plan"]
