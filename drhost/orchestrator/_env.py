"""What every part of a run shares: state, plan, config, events, runners and target sessions."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drhost_hookspecs import (
    Category,
    LoadedPlugin,
    OperationName,
    PackageInfo,
    PluginClass,
    Stage,
    TargetInfo,
    VerifyPhase,
)
from drhost_hookspecs._runtime import call_label, json_problem, not_json_message

from .._stdout import plugin_code
from ..context import HostContext
from ..errors import RefusedError, message_phrase, phrase
from ..events import Event, EventBus, EventName, NetworkEventName, WatchdogEventName
from ..i18n import N_
from ..plan import Plan, PlannedStep, PluginEntry
from ..policy import Decision, RunOnFailure, class_policy, retry_wait_s, stage_policy
from ..state import RunState
from ..supervisor import CallOutcome, Runner, ThreadRunner, WorkerRunner, isolation, make_sandbox
from ..transport import TRANSPORTS, ConnectionType, TargetSession, TransportError
from ..watchdog import (
    BUDGET_KEYS,
    Environment,
    StepHistory,
    StepWatch,
    Watchdog,
    WatchdogSettings,
    budget_key,
    budget_s,
    eta_extra,
    remaining_for,
    remaining_s,
    render_watchdog_event,
    sample_controller,
    sample_target,
)
from ._abandoned import AbandonedThreads
from ._network import NetworkEvents
from ._output_budget import CallOutput, HeldProgress, OutputBudget, OutputLimits
from ._status_check import StatusChecks
from ._timeouts import Operation, TimeoutEvidence, diagnose_timeout

#: (target, stage, failure message) -> what to do about the failed stage
Decide = Callable[[str, Stage, str], Decision]
#: ``[run] on_failure`` values under which a failed stage may be retried.
_MAY_RETRY: tuple[RunOnFailure, ...] = ("retry", "ask")


@dataclass
class RunEnv:
    state: RunState
    plan: Plan
    config: Mapping[str, Any]
    package: PackageInfo
    bus: EventBus
    decide: Decide
    logger: logging.Logger
    stop: threading.Event = field(default_factory=threading.Event)
    #: Why this run lost a target's lock (someone broke it), or None: set by the run's TargetLocks.
    lock_lost: Callable[[str], str | None] = field(default=lambda target: None)

    def emit(self, event: EventName, *, target: str | None = None, stage: Stage | None = None, step: str | None = None,
             plugin: str | None = None, message: str = "", **data: Any) -> None:
        self.bus.emit(Event(event, self.state.run_id, target=target, stage=stage.value if stage else None,
                            step=step, plugin=plugin, message=message, data=data))


def open_session(name: str, target: Mapping[str, Any], config: Mapping[str, Any], run_id: str,
                 run_dir: Path | None = None,
                 on_network: Callable[[NetworkEventName, str, dict[str, Any]], None] | None = None,
                 connection: ConnectionType = "plugin_exec") -> TargetSession:
    kind = TRANSPORTS.get(str(target["transport"]))
    if kind is None:
        raise RefusedError.worded("target {target}: transport {transport} is not built in this drhost",
                                  target=repr(name), transport=repr(target["transport"]))
    return kind.connect(name, target, config, run_id=run_id, run_dir=run_dir, on_network=on_network,
                        connection=connection)


def target_info(name: str, target: Mapping[str, Any], run_id: str) -> TargetInfo:
    root = str(target["root"])
    return TargetInfo(name=name, host=str(target.get("host", "localhost")), transport=str(target["transport"]),
                      install_root=root, work_dir=f"{root}/.drhost/{run_id}")


class Executor:
    """Runs one plugin operation for one target: context, runner, deadline, durable plugin state."""

    def __init__(self, env: RunEnv) -> None:
        self.env = env
        self._lock = threading.Lock()
        self._runners: dict[tuple[str, str], Runner] = {}
        self._loaded: dict[str, LoadedPlugin] = {}
        self._sessions: dict[tuple[str, ConnectionType], TargetSession] = {}
        self._active: set[HostContext] = set()
        self._launches_seen: dict[int, int] = {}
        self._upload_slots = threading.Semaphore(int(env.config["run"].get("max_parallel_uploads", 4)))
        self.watchdog = Watchdog(WatchdogSettings.from_config(env.config))
        self.history = StepHistory()
        #: Core threads a timeout left running, and the targets they may still be changing.
        self.abandoned = AbandonedThreads(env)
        #: Which call runs on which target, so a reconnect's event lands on the right row and step.
        self.network = NetworkEvents(env.emit)
        self.status_checks = StatusChecks(env.state, env.emit)

    # -- resources ------------------------------------------------------------------
    def session(self, target: str, connection: ConnectionType = "plugin_exec") -> TargetSession:
        """The target's session for one row of the ``[ssh:*]`` table: ``plugin_exec`` (the steps' commands and
        files; uploads open their ``transfer`` connections from it), ``control`` (locks, reachability, stopping
        what a killed controller left) or ``status_check`` (resources and timeout context; manual reconnect). A
        transport without connections serves them all with one session."""
        spec = self.env.config["targets"][target]
        kind = TRANSPORTS.get(str(spec["transport"]))
        if kind is not None and not kind.separate_connections:
            connection = "plugin_exec"
        with self._lock:
            key = (target, connection)
            if key not in self._sessions:
                self._sessions[key] = open_session(target, spec, self.env.config, self.env.state.run_id,
                                                   self.env.state.run_dir, self.network.listener(target),
                                                   connection=connection)
            return self._sessions[key]

    def control(self, target: str) -> TargetSession:
        """The target's control connection (``[ssh:control]``)."""
        return self.session(target, "control")

    def _status_sample(self, target: str) -> Environment:
        """The target's resources over its status-check connection; unknown while that waits for the operator."""
        try:
            session = self.session(target, "status_check")
        except (TransportError, RefusedError):
            return Environment()
        self.status_checks.before_use(target, session)
        sample = sample_target(session)
        self.status_checks.after_use(target, session)
        return sample

    def _runner(self, plugin: PluginEntry, target: str) -> Runner:
        with self._lock:
            key = (plugin.name, target)
            if key not in self._runners:
                grace = float(self.env.config["run"]["kill_grace_s"])
                if not isolation(plugin.isolation).in_worker:
                    if plugin.name not in self._loaded:
                        with plugin_code():  # what its module prints at import goes to stderr, never stdout
                            self._loaded[plugin.name] = LoadedPlugin.from_entry_point(plugin.name)
                    self._runners[key] = ThreadRunner(
                        self._loaded[plugin.name], grace_s=grace,
                        memory_mb=class_policy(self.env.config, plugin.plugin_class).memory_mb)
                else:
                    policy = class_policy(self.env.config, plugin.plugin_class)
                    limit = int(self.env.config["run"]["worker_message_limit_bytes"])
                    # The controller's pid in the label: a later sweep kills only cgroups of a controller that is gone.
                    label = f"{self.env.state.run_id}/{os.getpid()}/{plugin.name}/{target}"
                    sandbox = make_sandbox(policy, label=label,
                                           message_limit=limit, config=dict(self.env.config))
                    self._runners[key] = WorkerRunner(
                        plugin.name, sandbox=sandbox, logger=self.env.logger.getChild(f"plugin.{plugin.name}.{target}"),
                        grace_s=grace, message_limit=limit, value=plugin.value or None,
                    )
            return self._runners[key]

    def close(self) -> None:
        with self._lock:
            runners, self._runners = list(self._runners.values()), {}
            sessions, self._sessions = list(self._sessions.values()), {}
        self.watchdog.close()
        self.history.flush()  # what targets that did not finish (interrupted, stopped) noted
        for runner in runners:
            runner.close()
        for session in sessions:
            session.close()
        self.status_checks.close()

    def _note_launches(self, runner: Runner, target: str, plugin: str) -> None:
        """Emit ``worker.launched`` once for every launch of a worker, with the limits in force."""
        if not isinstance(runner, WorkerRunner):
            return
        with self._lock:
            seen = self._launches_seen.get(id(runner), 0)
            self._launches_seen[id(runner)] = runner.launches
        if runner.launches > seen and runner.pid is not None:
            self.env.emit("worker.launched", target=target, plugin=plugin, isolation=runner.isolation,
                          pid=runner.pid, launches=runner.launches, limits=runner.sandbox.in_force(),
                          applied=runner.hello.get("limits", {}))

    def prewarm(self, target: str) -> None:
        """Launch this target's workers in the background, so their start overlaps earlier steps."""

        def launch(runner: WorkerRunner, plugin: str) -> None:
            # A failure here is not reported: the first call launches again and reports it with the step.
            with contextlib.suppress(Exception):
                runner.start()
                self._note_launches(runner, target, plugin)

        for plugin in self.env.plan.plugins:
            if not isolation(plugin.isolation).in_worker:
                continue
            try:
                runner = self._runner(plugin, target)
            except Exception:  # the same error is raised, with its step, by the first call
                continue
            if isinstance(runner, WorkerRunner):
                threading.Thread(target=launch, args=(runner, plugin.name), name=f"prewarm-{plugin.name}-{target}",
                                 daemon=True).start()

    def stop_active(self) -> None:
        """Ask every call in flight to stop (Ctrl-C, SIGTERM)."""
        with self._lock:
            active = list(self._active)
        for ctx in active:
            ctx.stop()

    # -- calls ----------------------------------------------------------------------
    def call(self, target: str, plugin_name: str, op: OperationName, *, stage: Stage | None = None,
             step: str | None = None, phase: VerifyPhase | None = None, timeout_s: float = 300.0,
             attempt: int = 1) -> CallOutcome:
        env = self.env
        plugin = env.plan.plugin(plugin_name)
        spec = env.config["targets"][target]
        with env.state.reading_target(target) as record:
            # A deep copy: a plugin in a thread of the host changes what it is given in place, and must never
            # change (or put a non-JSON value into) the run's state behind a checkpoint's back.
            plugin_state = json.loads(json.dumps(record["plugin_state"].get(plugin_name, {})))
        started = time.monotonic()
        watch: StepWatch | None = None

        def report_progress(args: Mapping[str, Any]) -> None:
            if watch is not None:
                watch.report_progress(float(args.get("done") or 0), float(args.get("total") or 0),
                                      str(args.get("unit", "")))

        def write_progress(report: HeldProgress) -> None:
            args = report.args
            env.emit("step.progress", target=target, stage=stage, step=step, plugin=plugin_name,
                     done=args.get("done"), total=args.get("total"), unit=args.get("unit", ""),
                     elapsed_s=round(report.at - started, 3))

        def write_log(args: Mapping[str, Any]) -> None:
            env.emit("plugin.log", target=target, stage=stage, step=step, plugin=plugin_name,
                     message=str(args.get("message", "")), level=args.get("level", "info"))

        # Every ctx.progress / ctx.log of the call passes here; the budget bounds what reaches the run directory.
        notify = CallOutput(OutputBudget(OutputLimits.from_config(env.config)), watch=report_progress,
                            write_progress=write_progress, write_log=write_log)

        def persist(state: dict[str, Any]) -> None:
            with env.state.reading_target(target) as record:
                # Most calls leave their plugin's state as it was: comparing is cheaper than encoding the
                # record to find out that nothing is to be written.
                if record["plugin_state"].get(plugin_name) == state:
                    return
            with env.state.mutate_target(target) as record:
                record["plugin_state"][plugin_name] = state

        try:
            session = self.session(target)
        except (TransportError, RefusedError) as exc:
            # Unreachable, or refused (host key, authentication): this call fails with the reason.
            return CallOutcome("failed", message=phrase("cannot reach target {target}: {error}", target=target,
                                                        error=message_phrase(exc)),
                               retryable=not isinstance(exc, RefusedError), state=plugin_state)
        info = target_info(target, spec, env.state.run_id)
        package = dataclasses.replace(
            env.package, remote_path=f"{info.install_root}/staging/{os.path.basename(env.package.local_path)}")
        ctx = HostContext(
            session=session, run_id=env.state.run_id, target=info,
            package=package, config=dict(env.config["plugins"].get(plugin_name, {})), state=plugin_state,
            notify=notify, persist=persist, upload_slots=self._upload_slots, cancel=threading.Event(),
            deadline=time.monotonic() + timeout_s,
            logger=env.logger.getChild(f"plugin.{plugin_name}.{target}"),
            plugin=plugin_name, plugin_class=plugin.plugin_class, paths=plugin.paths, commands=plugin.commands,
            on_refused=lambda message, refused: env.emit("context.refused", target=target, stage=stage, step=step,
                                                         plugin=plugin_name, message=message, op=op, **refused),
            call=call_label(plugin_name, op, step=step, stage=stage.value if stage else None),
        )
        if env.stop.is_set():
            return CallOutcome("cancelled", message=N_("run is stopping"), state=plugin_state)
        planned = env.plan.find_step(stage, plugin_name, step) if op == "run_step" and stage and step else None
        # Every operation with a budget is watched, not only steps: cleanups, rollbacks, verification, probes.
        operation = self.operation(op, plugin_name, stage=stage, step=step, phase=phase, timeout_s=timeout_s)
        with self._lock:
            self._active.add(ctx)
        self.network.started(target, ctx, stage=stage, step=step, plugin=plugin_name, op=op)
        try:
            try:
                runner = self._runner(plugin, target)
            except Exception as exc:  # the sandbox could not be made: this plugin fails here, the run goes on
                return CallOutcome("failed", message=phrase("cannot start the plugin's sandbox: {error}",
                                                            error=message_phrase(exc)),
                                   retryable=False, state=plugin_state)
            watch = self._watch(target, operation, started, attempt)
            # The runner holds the watch's deadline exactly: one budget, measured from one start.
            budget = timeout_s if watch is None else max(0.0, watch.deadline - time.monotonic())
            try:
                outcome = runner.call(op, ctx, stage=stage, step=step, phase=phase, timeout_s=budget)
            finally:
                stopped_at = time.monotonic()
            self._note_launches(runner, target, plugin_name)
            if watch is not None:
                outcome = self._after_watch(watch, operation, outcome, ctx, session, target, attempt, stopped_at)
        finally:
            if watch is not None:
                self.watchdog.release(watch)
            with self._lock:
                self._active.discard(ctx)
            self.network.ended(target, ctx)
            self._close_output(notify, target, stage, step, plugin_name)
        outcome = self._json_checked(outcome, ctx)
        persist(outcome.state)
        self.abandoned.note(outcome, target=target, plugin=plugin_name, op=op, stage=stage, step=step)
        if outcome.detail.get("host_memory"):
            self._host_memory_finding(outcome.detail["host_memory"], ctx, target, plugin_name, op, stage, step,
                                      planned, attempt)
        return outcome

    @staticmethod
    def _json_checked(outcome: CallOutcome, ctx: HostContext) -> CallOutcome:
        """The outcome with its state as a detached JSON copy; or, when the state or result the plugin handed
        back is not JSON, the call failed (not retryable), named, with the state the host last stored."""
        try:
            problem = json_problem(outcome.state, "ctx.state")
            if problem is None and outcome.ok:
                problem = json_problem(outcome.result, "the result")
            if problem is None:
                return dataclasses.replace(outcome, state=json.loads(json.dumps(outcome.state)))
        except (RuntimeError, RecursionError, TypeError, ValueError) as exc:  # changed while read: a live thread
            problem = f"ctx.state could not be read ({type(exc).__name__}: {exc})"
        message = not_json_message(ctx.call, problem)
        detail = {**outcome.detail, "not_json": problem}
        if outcome.ended in ("ok", "skipped", "up_to_date", "failed"):
            also = f" (the call had also failed: {outcome.message})" if outcome.ended == "failed" else ""
            return CallOutcome("failed", message=message + also, retryable=False, state=ctx.saved_state,
                               detail=detail, duration_s=outcome.duration_s)
        # Stopped for another reason (timeout, killed, ...): that ending stays; the state is not taken.
        return dataclasses.replace(outcome, message=f"{outcome.message}; {message}", retryable=False,
                                   state=ctx.saved_state, detail=detail)

    def _host_memory_finding(self, grown: Mapping[str, Any], ctx: HostContext, target: str, plugin: str,
                             op: OperationName, stage: Stage | None, step: str | None, planned: PlannedStep | None,
                             attempt: int) -> None:
        """A thread-class call grew the host past its class's memory_mb: warn, and record it with the step."""
        text = (f"{ctx.call}: host memory grew to {grown['peak_mib']} MiB (from {grown['start_mib']} MiB), over "
                f"[class:{self.plugin_class(plugin).value}] memory_mb = {grown['memory_mb']} (not enforced: "
                f"{self.plugin_class(plugin).value} plugins run inside the host; move the plugin to a class with "
                f"process isolation, such as business, to enforce a limit)")
        self.env.logger.warning("%s", text)
        self.env.emit("plugin.host_memory", target=target, stage=stage, step=step, plugin=plugin, message=text,
                      op=op, attempt=attempt, **grown)
        finding = {"ts": time.time(), "kind": "host_memory", "op": op, "attempt": attempt, "message": text, **grown}
        with self.env.state.mutate_target(target) as record:
            entry = record["steps"].get(planned.key) if planned is not None and op == "run_step" else None
            if entry is not None:
                entry.setdefault("findings", []).append(finding)
            else:
                record.setdefault("findings", []).append(
                    {**finding, "stage": stage.value if stage else None, "step": step})

    def _close_output(self, output: CallOutput, target: str, stage: Stage | None, step: str | None,
                      plugin: str) -> None:
        """The call's last held progress, then one note of what its output budget kept off disk: log lines it
        dropped or shortened. Progress written once an interval is the budget's design, not an overrun (every
        upload reports far more often): coalesced reports alone are no note and no warning."""
        dropped = output.close()
        if not dropped or not (dropped.log_lines or dropped.log_bytes or dropped.truncated):
            return
        limits = output.output_budget.limits
        text = (f"{plugin}: output over its budget: {dropped.log_lines} log lines ({dropped.log_bytes} bytes, "
                f"{dropped.truncated} lines shortened) and {dropped.progress} progress reports not written "
                f"(limits per call: {limits.log_lines} lines, {limits.log_bytes} bytes, {limits.line_chars} "
                f"characters a line, one progress report per {limits.progress_interval_s:g} s)")
        self.env.logger.getChild(f"plugin.{plugin}.{target}").warning("%s", text)
        self.env.emit("plugin.output_dropped", target=target, stage=stage, step=step, plugin=plugin, message=text,
                      log_lines=dropped.log_lines, log_bytes=dropped.log_bytes, truncated=dropped.truncated,
                      progress=dropped.progress, limits=limits.to_json())

    # -- the watchdog's part of a step ------------------------------------------------
    def expected_s(self, target: str, step_key: str) -> float | None:
        """The step's usual duration on this target (median of history); None when never seen."""
        return self.history.expected_s(target, step_key)

    def operation(self, op: OperationName, plugin_name: str, *, stage: Stage | None = None, step: str | None = None,
                  phase: VerifyPhase | None = None, timeout_s: float) -> Operation:
        """What a call of ``op`` is, for its watch and its timeout report: a step's own, else the plugin's."""
        planned = self.env.plan.find_step(stage, plugin_name, step) if stage and step else None
        if planned is not None and op in ("run_step", "cleanup_step", "rollback_step"):
            return dataclasses.replace(Operation.of_step(planned, op), timeout_s=timeout_s)
        plugin = self.env.plan.plugin(plugin_name)
        # Verification after a rollback is part of the rollback, and has its budget.
        kind = "rollback" if op == "verify" and phase is VerifyPhase.ROLLED_BACK else op
        key = budget_key(kind) if kind in BUDGET_KEYS else f"{op} (built in)"
        where = f"/{stage.value}" if stage is not None else ""
        return Operation(kind=op, plugin=plugin_name, stage=stage, step=step, category=Category.PLUGIN,
                         timeout_s=timeout_s, timeout_key=key, plugin_class=plugin.plugin_class,
                         isolation=plugin.isolation, history_key=f"{op}{where}/{plugin_name}",
                         phase=phase.value if phase is not None else None)

    def lock_operation(self) -> Operation:
        """Taking a target's lock: drhost's own remote commands, watched against ``[watchdog] lock_timeout_s``."""
        return Operation(kind="lock", plugin="", stage=None, step=None, category=Category.NETWORK,
                         timeout_s=self.budget_s("lock"), timeout_key=budget_key("lock"), history_key="lock")

    def budget_s(self, kind: str) -> float:
        """The configured budget of an operation that is not a step (``[watchdog] verify_timeout_s`` ...)."""
        return budget_s(self.env.config, kind)

    def _eta_extra(self, target: str, operation: Operation, attempt: int) -> dict[str, Any]:
        """The retries and stage restart the policy still allows this step, and what they would cost."""
        planned = (self.env.plan.find_step(operation.stage, operation.plugin, operation.step)
                   if operation.kind == "run_step" and operation.stage and operation.step else None)
        if planned is None:
            return {}
        config = self.env.config
        policy = class_policy(config, planned.plugin_class)
        attempts = policy.attempts if planned.retryable else 1
        # Only a failure that fails the stage (class policy "abort") can restart it, and only when the run's
        # failure decision may be "retry" and the stage policy reruns the stage.
        restarts_left = 0
        if (policy.on_failure == "abort" and config["run"].get("on_failure") in _MAY_RETRY
                and stage_policy(config, planned.stage).restart in ("stage", "cleanup_then_stage")):
            with self.env.state.reading_target(target) as record:
                used = int(record.get("stage_attempts", {}).get(planned.stage.value) or 0)
            restarts_left = max(0, int(config["run"]["stage_retries"]) - used)
        stage_steps = [(target, s.key) for s in self.env.plan.stage_steps(planned.stage)]
        return eta_extra(expected_s=self.expected_s(target, planned.key), retry_wait_s=retry_wait_s(policy, config),
                         retries_left=max(0, attempts - attempt),
                         stage_expected_s=remaining_for(stage_steps, self.history) if restarts_left else None,
                         restarts_left=restarts_left)

    def _watch(self, target: str, operation: Operation, started: float, attempt: int = 1) -> StepWatch:
        env = self.env
        expected = self.expected_s(target, operation.history_key)

        def emit(name: WatchdogEventName, data: dict[str, Any]) -> None:
            stage = operation.stage.value if operation.stage is not None else ""
            text = render_watchdog_event(name, data, stage=stage, step_label=operation.report_step) or ""
            env.emit(name, target=target, stage=operation.stage, step=operation.step,
                     plugin=operation.plugin or None, message=text, operation=operation.label, op=operation.kind,
                     **data)

        return self.watchdog.watch(
            timeout_s=operation.timeout_s, started=started, emit=emit,
            sample=lambda: self._status_sample(target), sample_controller=lambda: sample_controller(),
            estimate=lambda elapsed, fraction: remaining_s(expected, elapsed, fraction),
            eta_extra=self._eta_extra(target, operation, attempt),
        )

    @contextlib.contextmanager
    def watched(self, target: str, operation: Operation, session: TargetSession) -> Iterator[StepWatch]:
        """Watch drhost's own operation on ``target`` (a lock): progress lines, warnings, and, when it returned
        past its budget, the classified timeout report. Its commands carry their own bound; the watch explains."""
        started = time.monotonic()
        watch = self._watch(target, operation, started)
        try:
            yield watch
        finally:
            stopped_at = time.monotonic()
            self.watchdog.release(watch)
            if watch.expired(stopped_at):
                outcome = CallOutcome("timeout", message=phrase(
                    "{operation} took {seconds} s, over its budget of {budget} s", operation=operation.label,
                    seconds=f"{stopped_at - started:.1f}", budget=f"{operation.timeout_s:g}"),
                    duration_s=stopped_at - started)
                self._diagnose(watch, operation, outcome, (), session, target, 1, stopped_at)
            else:
                self.history.note(target, operation.history_key, stopped_at - started)

    def _after_watch(self, watch: StepWatch, operation: Operation, outcome: CallOutcome, ctx: HostContext,
                     session: TargetSession, target: str, attempt: int, stopped_at: float) -> CallOutcome:
        if outcome.ok:
            self.history.note(target, operation.history_key, outcome.duration_s)
            return outcome
        # A command stopped by the step's deadline ends the step as "cancelled" a moment before the runner's
        # own timer fires: still a timeout, and reported as one.
        ran_out = outcome.ended == "timeout" or (outcome.ended == "cancelled" and watch.expired(stopped_at)
                                                 and not self.env.stop.is_set())
        if not ran_out:
            return outcome
        return self._diagnose(watch, operation, outcome, tuple(ctx.stopped_commands), session, target, attempt,
                              stopped_at)

    def _diagnose(self, watch: StepWatch, operation: Operation, outcome: CallOutcome,
                  stopped_commands: tuple[Mapping[str, Any], ...], session: TargetSession, target: str,
                  attempt: int, stopped_at: float) -> CallOutcome:
        """Gather the context of a timeout, emit its ``watchdog.timeout`` report, and word the outcome."""
        spec = self.env.config["targets"][target]
        evidence = TimeoutEvidence(
            target=target, step=operation, attempt=attempt, watch=watch, elapsed_s=watch.elapsed(stopped_at),
            outcome=outcome, stopped_commands=stopped_commands, install_root=str(spec["root"]),
            package_size=int(self.env.package.size))
        # A context collection that timed out does not ask the plugins again: that is what just hung.
        with_hook = ([] if operation.kind == "collect_context"
                     else [p.name for p in self.env.plan.plugins_with("drhost_collect_context")])

        def ask(plugin_name: str) -> CallOutcome:
            return self.call(target, plugin_name, "collect_context", timeout_s=self.budget_s("collect_context"))

        try:
            report, fields = diagnose_timeout(evidence, session=session, ask_plugin=ask,
                                              plugins_with_context=with_hook, run_dir=self.env.state.run_dir)
        except Exception as exc:  # the diagnosis must never turn a timeout into a crash of the run
            self.env.logger.exception("timeout diagnosis of %s on %s failed", operation.label, target)
            fields = {"error": f"diagnosis failed: {type(exc).__name__}: {exc}"}
            message = f"no result after {operation.timeout_s:g} s (diagnosis failed: {exc})"
        else:
            self.env.emit("watchdog.timeout", target=target, stage=operation.stage, step=operation.step,
                          plugin=operation.plugin or None, message=str(fields.pop("text")), **fields)
            # The runner's words say how the step was stopped; the report adds how long it ran and where to look.
            stopped = (outcome.message if outcome.ended == "timeout"
                       else f"no result after {operation.timeout_s:g} s")
            message = f"{stopped} (ran {report.elapsed_s:g} s; context saved in {report.context_path})"
        detail = {**outcome.detail, "timeout": fields}
        return dataclasses.replace(outcome, ended="timeout", message=message, detail=detail,
                                   retryable=outcome.retryable)

    def unreachable(self, target: str) -> str | None:
        """Why ``target`` cannot be reached right now (a trivial command through its session), or None."""
        problem = self.probe(target)
        return None if problem is None else str(problem)

    def probe(self, target: str, timeout_s: float = 15.0) -> TransportError | RefusedError | None:
        """What keeps ``target`` from answering a trivial command right now, or None: the error itself, so a
        refusal (a changed host key, rejected credentials: a :class:`RefusedError`) can be told from an outage.
        ``timeout_s`` bounds the whole look (a wait that is nearly over looks for no longer than it has left)."""
        try:
            self.control(target).probe(timeout_s)  # one bound for the whole probe: connects and retries included
        except (TransportError, RefusedError) as exc:
            return exc
        return None

    def plugin_class(self, plugin_name: str) -> PluginClass:
        return self.env.plan.plugin(plugin_name).plugin_class
