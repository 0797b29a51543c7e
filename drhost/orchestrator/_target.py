"""One target's way through the five stages: steps, retries, cleanup and the failure decision."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Literal

from drhost_hookspecs import Stage, VerifyPhase

from ..errors import joined, phrase
from ..events import EventName
from ..failpoints import failpoint
from ..i18n import N_
from ..plan import PlannedStep
from ..policy import ClassOnFailure, Decision, class_policy, retry_wait_s, stage_policy
from ..supervisor import CallOutcome
from ..watchdog import remaining_for
from ._env import Executor, RunEnv
from ._records import TERMINAL, TOUCHED, TargetRecord, plugin_ending
from ._rollback import RollbackFlow, plugins_last_first
from ._statuses import TargetStatus
from ._stray_commands import Unstopped, confirm_stopped, queued_message


def said_label(step: PlannedStep) -> str:
    """``step.label`` as a phrase: its stage said in the operator's language, its names as they are."""
    return phrase("[{stage}] {step} ({plugin})", stage=phrase(step.stage.value), step=step.name, plugin=step.plugin)


@dataclass(frozen=True)
class StageFailure:
    """Why a stage failed, and what a retry of it must do first."""

    message: str
    step: PlannedStep | None = None
    plugin: str | None = None
    needs_cleanup: bool = False
    #: Found started-but-unfinished after a crash: cleanup and restart, no question asked.
    interrupted: bool = False
    #: A hung in-process thread: retrying next to it is unsafe.
    force_rollback: bool = False


_STAGE_INDEX = {stage: index for index, stage in enumerate(Stage.ordered())}


def _sort_position(step: PlannedStep) -> tuple[int, int, str, str]:
    return (_STAGE_INDEX[step.stage], step.order, step.plugin, step.name)


#: Why a stage stopped short other than by failing: the target's status says it.
_Stopped = Literal["interrupted", "up_to_date", "unreachable", "refused"]

class TargetFlow:
    def __init__(self, env: RunEnv, executor: Executor, name: str) -> None:
        self.env = env
        self.executor = executor
        self.name = name
        self.record = TargetRecord(env, name)

    def _emit(self, event: EventName, **kwargs: object) -> None:
        self.env.emit(event, target=self.name, **kwargs)  # type: ignore[arg-type]

    # -- the whole target -------------------------------------------------------------
    def run(self) -> TargetStatus:
        status = self.record.get("status")
        for terminal in TERMINAL:
            if status == terminal:
                return terminal
        if self.record.get("phase") == "rollback":
            return self._rollback()
        self.record.set(status="running")
        self._emit("target.started")
        self.executor.prewarm(self.name)
        if self.record.get("version_before") is None:
            version = self.probe_version()
            self.record.set(version_before=version)
            if version == self.env.package.version and not self.record.get("steps"):
                self.record.set(status="up_to_date", version=version, phase="done")
                self._emit("target.up_to_date", version=version,
                           message=phrase("already at {version}; nothing changed", version=version))
                return "up_to_date"
        for stage in Stage.ordered():
            if self.record.get("stages", stage.value) == "completed":
                continue
            result = self._run_stage_with_policy(stage)
            if result != "completed":
                return result
        version = self.probe_version()
        failpoint("target.finishing")
        self.record.set(status="succeeded", version=version, phase="done")
        self._emit("target.succeeded", version=version)
        return "succeeded"

    def probe_version(self) -> str | None:
        for plugin in self.env.plan.plugins_with("drhost_installed_version"):
            outcome = self.executor.call(self.name, plugin.name, "installed_version",
                                         timeout_s=self.executor.budget_s("installed_version"))
            if outcome.ok and outcome.result:
                return str(outcome.result)
        return None

    # -- one stage, with its failure policy -------------------------------------------------
    def _run_stage_with_policy(self, stage: Stage) -> TargetStatus | Literal["completed"]:
        pending = self.record.get("pending_restart") or {}
        if pending.get("stage") == stage.value:
            self._emit("stage.restart_resumed", stage=stage,
                       message=N_("the controller stopped while preparing a restart of this stage; finishing it"))
            if not self._finish_restart(stage):
                return self._rollback()
        while True:
            if self.env.stop.is_set():
                return self._interrupted()
            self.record.set_stage(stage, "running")
            self._emit("stage.started", stage=stage)
            failure = self._run_stage(stage)
            if failure is None:
                failure = self._verify_completed(stage)
                if failure is None:
                    failpoint(f"stage.verified:{stage.value}")
                    self.record.set_stage(stage, "completed")
                    self._emit("stage.completed", stage=stage)
                    return "completed"
            if isinstance(failure, str):
                if failure in ("unreachable", "refused"):
                    return failure
                return self._interrupted() if failure == "interrupted" else self._up_to_date()
            self.record.set_stage(stage, "failed")
            self._emit("stage.failed", stage=stage, step=failure.step.name if failure.step else None,
                       plugin=failure.plugin, message=failure.message)
            if failure.interrupted:
                if not self._prepare_retry(stage, failure):
                    return self._rollback()
                continue
            decision = self._decide(stage, failure)
            if decision == "retry" and self._prepare_retry(stage, failure):
                continue
            if decision == "abort":
                self.record.set(status="aborted")
                self._emit("target.aborted", stage=stage, message=failure.message)
                return "aborted"
            return self._rollback()

    def _decide(self, stage: Stage, failure: StageFailure) -> Decision:
        if failure.force_rollback:
            self._emit("stage.decision", stage=stage, decision="rollback",
                       message=N_("a hung in-process step forces rollback"))
            return "rollback"
        decision = self.env.decide(self.name, stage, failure.message)
        if decision == "retry":
            limit = int(self.env.config["run"]["stage_retries"])
            used = int(self.record.get("stage_attempts", stage.value) or 0)
            if used >= limit:
                self._emit("stage.decision", stage=stage, decision="rollback",
                           message=phrase("stage retried {count} time(s), the limit of run.stage_retries; rolling "
                                          "back", count=used))
                return "rollback"
        self._emit("stage.decision", stage=stage, decision=decision, message=failure.message)
        return decision

    def _prepare_retry(self, stage: Stage, failure: StageFailure) -> bool:
        """Make the stage ready to run again; False when its cleanup failed."""
        policy = stage_policy(self.env.config, stage)
        restart_whole = policy.restart == "stage" or failure.needs_cleanup or failure.step is None
        needs_cleanup = policy.restart == "cleanup_then_stage" and (failure.needs_cleanup or failure.step is None)
        # The intent is durable before the first cleanup runs: a controller killed mid-cleanup resumes by
        # finishing the cleanup and restarting the stage — never by running the stage over a half-cleaned target.
        with self.env.state.mutate_target(self.name) as record:
            record["stage_attempts"][stage.value] += 0 if failure.interrupted else 1
            record["pending_restart"] = {
                "stage": stage.value, "cleanup": needs_cleanup, "whole": restart_whole,
                "step": failure.step.key if failure.step is not None else None}
        return self._finish_restart(stage)

    def _finish_restart(self, stage: Stage) -> bool:
        """Carry out the recorded restart of ``stage``: cleanup (if asked), then reset its steps."""
        pending = self.record.get("pending_restart") or {}
        if pending.get("cleanup") and not self.cleanup_stage(stage):
            return False
        restart_whole, failed_key = bool(pending.get("whole")), pending.get("step")
        self._emit("stage.retry", stage=stage, message=N_("restarting the stage from its first step") if restart_whole
                   else phrase("retrying step {step}", step=str(failed_key).rsplit('/', 1)[-1]))
        with self.env.state.mutate_target(self.name) as record:
            steps = record["steps"]
            for step in self.env.plan.stage_steps(stage):
                entry = steps.get(step.key)
                if entry is None:
                    continue
                if restart_whole or (step.key == failed_key and entry.get("status") != "skipped"):
                    entry["status"] = "pending"
            record["pending_restart"] = None
        return True

    def cleanup_stage(self, stage: Stage) -> bool:
        """Full environment cleanup: step cleanups last-run-first, then plugin-wide cleanup hooks."""
        steps = self.record.get("steps") or {}
        touched = [s for s in self.env.plan.stage_steps(stage) if steps.get(s.key, {}).get("status") in TOUCHED]
        touched.sort(key=lambda s: steps[s.key].get("seq", 0), reverse=True)
        errors: list[str] = []
        self._emit("stage.cleanup_started", stage=stage, steps=[s.name for s in touched])
        for step in touched:
            if not step.has_cleanup:
                continue
            failpoint(f"cleanup.before:{step.key}")
            outcome = self.executor.call(self.name, step.plugin, "cleanup_step", stage=stage, step=step.name,
                                         timeout_s=step.timeout_s)
            failpoint(f"cleanup.returned:{step.key}")
            self._emit("step.cleanup", stage=stage, step=step.name, plugin=step.plugin, ended=outcome.ended,
                       message=outcome.message)
            if outcome.ok:
                self.record.mark_step(step, "cleaned")
            else:
                errors.append(f"{step.label}: {outcome.message}")
                # A failed cleanup leads to the rollback: what it left running is stopped first (or queued first).
                confirm_stopped(self.env, self.executor, self.name, step, outcome.message)
        for plugin in plugins_last_first(touched, steps):
            if "drhost_cleanup" not in self.env.plan.plugin(plugin).hooks:
                continue
            outcome = self.executor.call(self.name, plugin, "cleanup", stage=stage,
                                         timeout_s=self.executor.budget_s("cleanup"))
            if not outcome.ok:
                errors.append(f"{plugin} drhost_cleanup: {outcome.message}")
        with self.env.state.mutate_target(self.name, steps=()) as record:
            record["cleanups"].append({"stage": stage.value, "ts": time.time(), "errors": errors})
        self._emit("stage.cleanup_finished", stage=stage, errors=errors)
        return not errors

    # -- steps --------------------------------------------------------------------------
    def _run_stage(self, stage: Stage) -> StageFailure | _Stopped | None:
        for step in self.env.plan.stage_steps(stage):
            if self.env.stop.is_set():
                return "interrupted"
            lost = self.env.lock_lost(self.name)
            if lost:
                # Another run broke our lock: two runs must never drive one target, so this one stops here.
                self._emit("target.lock_lost", stage=stage, message=lost)
                return "interrupted"
            # Read each time: a failure earlier in this very stage may have skipped the plugin.
            skipped = self.record.get("skipped_plugins") or {}
            entry = self.record.step(step)
            status = entry.get("status")
            if status in ("done", "skipped"):
                continue
            if step.plugin in skipped:
                self.record.mark_step(step, "skipped", message=f"plugin skipped: {skipped[step.plugin]}")
                self._emit("step.skipped", stage=stage, step=step.name, plugin=step.plugin,
                           message=N_("plugin was skipped earlier in this run"))
                continue
            aborting_class = class_policy(self.env.config, step.plugin_class).on_failure == "abort"
            if not step.retryable and (status == "started" or (status == "failed" and aborting_class)):
                message = (N_("found started but not finished (the controller stopped mid-step); not retryable")
                           if status == "started" else N_("failed earlier in this run; not retryable as it is"))
                self.record.mark_step(step, "failed", message=message)
                self._emit("step.interrupted", stage=stage, step=step.name, plugin=step.plugin, message=message)
                return StageFailure(message, step, step.plugin, needs_cleanup=True, interrupted=True)
            outcome = self._execute(step)
            unstopped = outcome.detail.get("unstopped")
            if isinstance(unstopped, Unstopped):
                return self._unstopped(step, outcome, unstopped)
            failure = self._apply_outcome(step, outcome)
            if failure is not None:
                return failure
        return None

    def _execute(self, step: PlannedStep) -> CallOutcome:
        policy = class_policy(self.env.config, step.plugin_class)
        attempts = policy.attempts if step.retryable else 1
        outcome = CallOutcome("failed", message="not run")
        for attempt in range(1, attempts + 1):
            self.record.mark_step(step, "started", attempt=attempt)
            failpoint(f"step.started:{step.key}")
            expected = self.executor.expected_s(self.name, step.key)
            rest_after, stage_rest_after = self._expected_after(step)
            self._emit("step.started", stage=step.stage, step=step.name, plugin=step.plugin, attempt=attempt,
                       attempts=attempts, timeout_s=step.timeout_s, retryable=step.retryable,
                       isolation=step.isolation, expected_s=None if expected is None else round(expected, 3),
                       rest_after_s=rest_after, stage_rest_after_s=stage_rest_after)
            failpoint(f"step.mid:{step.key}")
            outcome = self.executor.call(self.name, step.plugin, "run_step", stage=step.stage, step=step.name,
                                         timeout_s=step.timeout_s, attempt=attempt)
            failpoint(f"step.returned:{step.key}")
            if outcome.ok:
                self.record.mark_step(step, "done", duration_s=round(outcome.duration_s, 3))
                self.record.plugin_ended(step.plugin, {"ended": "ok"})
                self._emit("step.completed", stage=step.stage, step=step.name, plugin=step.plugin,
                           duration_s=round(outcome.duration_s, 3), attempt=attempt)
                return outcome
            if outcome.ended in ("skipped", "up_to_date"):
                return outcome
            if outcome.ended == "cancelled" and self.env.stop.is_set():
                # Left as "started": a resume treats it as interrupted mid-step.
                self._emit("step.interrupted", stage=step.stage, step=step.name, plugin=step.plugin,
                           message=N_("stopped by the operator"))
                return outcome
            self.record.mark_step(step, "failed", message=outcome.message, ended_as=outcome.ended)
            # Its command may outlive the call (a lost link, a deadline while the link was down): confirmed
            # stopped before the step runs again, is cleaned up or compensated — or the target is queued.
            unstopped = confirm_stopped(self.env, self.executor, self.name, step, outcome.message)
            if unstopped is not None:
                outcome = dataclasses.replace(outcome, detail={**outcome.detail, "unstopped": unstopped})
            retry = (attempt < attempts and step.retryable and outcome.retryable
                     and not outcome.detail.get("hung_thread") and unstopped is None)
            wait = retry_wait_s(policy, self.env.config) if retry else 0.0
            self._emit("step.failed", stage=step.stage, step=step.name, plugin=step.plugin, attempt=attempt,
                       attempts=attempts, ended=outcome.ended, retrying_in_s=wait if retry else None,
                       message=outcome.message, duration_s=round(outcome.duration_s, 3),
                       timeout_s=step.timeout_s, category=step.category.value)
            if not retry:
                break
            if self.env.stop.wait(wait):
                return CallOutcome("cancelled", message=N_("run is stopping"))
        return outcome

    def _expected_after(self, step: PlannedStep) -> tuple[float | None, float | None]:
        """How long this target's steps after ``step`` usually take, in all and in its stage; None where one
        was never timed."""
        with self.env.state.reading_target(self.name) as record:
            # The finished steps' keys only: no copy of the record, which grows with every step.
            finished = {key for key, entry in record.get("steps", {}).items()
                        if entry.get("status") in ("done", "skipped")}
        position = _sort_position(step)
        later = [s for s in self.env.plan.steps
                 if s.key != step.key and s.key not in finished and _sort_position(s) > position]
        history = self.executor.history
        total = remaining_for(((self.name, s.key) for s in later), history)
        in_stage = remaining_for(((self.name, s.key) for s in later if s.stage is step.stage), history)
        return (None if total is None else round(total, 3)), (None if in_stage is None else round(in_stage, 3))

    def _apply_outcome(self, step: PlannedStep, outcome: CallOutcome) -> StageFailure | _Stopped | None:
        if outcome.ok:
            return None
        if outcome.ended == "skipped":
            self.record.mark_step(step, "skipped", message=outcome.message)
            self._emit("step.skipped", stage=step.stage, step=step.name, plugin=step.plugin, message=outcome.message)
            return None
        if outcome.ended == "up_to_date" and step.stage is Stage.PRECHECK:
            self.record.mark_step(step, "done", message=outcome.message)
            return "up_to_date"
        if outcome.ended == "up_to_date":
            outcome = CallOutcome("failed", message=phrase("raised UpToDate in {stage}; it is only meaningful in "
                                                           "precheck, before anything changed", stage=step.stage.value),
                                  retryable=False)
        if outcome.ended == "cancelled" and self.env.stop.is_set():
            return "interrupted"
        policy = class_policy(self.env.config, step.plugin_class)
        actions: dict[ClassOnFailure, str] = {"skip_plugin": "skipped", "continue": "failed, recorded"}
        action = actions.get(policy.on_failure, "failed")
        if outcome.ended in ("killed", "memory", "pids", "cpu_time", "crashed") or outcome.detail.get("killed"):
            action = f"killed, {action}" if action != "failed" else "killed"
        self.record.plugin_ended(step.plugin, plugin_ending(outcome.ended, outcome.message, outcome.detail, action,
                                                            step.timeout_s))
        if policy.on_failure == "skip_plugin":
            with self.env.state.mutate_target(self.name) as record:
                record["skipped_plugins"][step.plugin] = f"{step.label}: {outcome.message}"
            self.record.add_error(stage=step.stage.value, step=step.name, plugin=step.plugin,
                                  message=outcome.message, action="plugin skipped")
            self._emit("plugin.skipped", stage=step.stage, step=step.name, plugin=step.plugin,
                       message=phrase("{plugin} ({plugin_class}) skipped for the rest of the run: {message}",
                                      plugin=step.plugin, plugin_class=step.plugin_class.value,
                                      message=outcome.message))
            return None
        if policy.on_failure == "continue":
            self.record.add_error(stage=step.stage.value, step=step.name, plugin=step.plugin,
                                  message=outcome.message, action="recorded")
            self._emit("plugin.error_recorded", stage=step.stage, step=step.name, plugin=step.plugin,
                       message=phrase("{plugin} ({plugin_class}) failed; error recorded, upgrade continues: "
                                      "{message}", plugin=step.plugin, plugin_class=step.plugin_class.value,
                                      message=outcome.message))
            return None
        self.record.add_error(stage=step.stage.value, step=step.name, plugin=step.plugin, message=outcome.message,
                              action="stage failed")
        return StageFailure(
            phrase("{step} {ended}: {message}", step=said_label(step), ended=phrase(outcome.ended),
                   message=outcome.message),
            step, step.plugin,
            needs_cleanup=not (step.retryable and outcome.retryable),
            force_rollback=bool(outcome.detail.get("hung_thread")),
        )

    def _verify_completed(self, stage: Stage) -> StageFailure | None:
        skipped = self.record.get("skipped_plugins") or {}
        problems: list[str] = []
        for plugin in self.env.plan.plugins_with("drhost_verify"):
            if plugin.name in skipped:
                continue
            outcome = self.executor.call(self.name, plugin.name, "verify", stage=stage, phase=VerifyPhase.COMPLETED,
                                         timeout_s=self.executor.budget_s("verify"))
            found = list(outcome.result or []) if outcome.ok else [phrase("verification did not run: {message}",
                                                                          message=outcome.message)]
            if not found:
                continue
            if class_policy(self.env.config, plugin.plugin_class).on_failure == "abort":
                problems.extend(f"{plugin.name}: {p}" for p in found)
            else:
                self.record.add_error(stage=stage.value, plugin=plugin.name, message="; ".join(found),
                                      action="recorded")
        if not problems:
            return None
        self._emit("stage.verify_failed", stage=stage, problems=problems)
        return StageFailure(phrase("verification failed: {problems}", problems=joined(problems)), None, None,
                            needs_cleanup=True)

    # -- endings ----------------------------------------------------------------------------
    def _interrupted(self) -> TargetStatus:
        self.record.set(status="interrupted")
        self._emit("target.interrupted")
        return "interrupted"

    def _unstopped(self, step: PlannedStep, outcome: CallOutcome,
                   unstopped: Unstopped) -> Literal["unreachable", "refused"]:
        """The step's command could not be confirmed stopped: nothing may touch the target (no retry, cleanup or
        compensation next to a command that may still run); its rollback is queued with the stop first."""
        self.record.add_error(stage=step.stage.value, step=step.name, plugin=step.plugin, message=outcome.message,
                              action="rollback queued: the command may still run")
        self.record.set_stage(step.stage, "failed")
        self.record.set(status=unstopped.status, phase="rollback")
        self._emit("stage.failed", stage=step.stage, step=step.name, plugin=step.plugin,
                   message=phrase("{step} {ended}: {message}", step=said_label(step), ended=phrase(outcome.ended),
                                  message=outcome.message))
        self._emit("target.rollback_queued", stage=step.stage, step=step.name, plugin=step.plugin,
                   status=unstopped.status, pending_stop=True,
                   message=queued_message(unstopped, step, self.env.state.run_id))
        return unstopped.status

    def _up_to_date(self) -> TargetStatus:
        version = self.probe_version() or self.env.package.version
        self.record.set(status="up_to_date", version=version, phase="done")
        self._emit("target.up_to_date", version=version,
                   message=phrase("already at {version}; nothing changed", version=version))
        return "up_to_date"

    def _rollback(self) -> TargetStatus:
        result = RollbackFlow(self.env, self.executor, self.name).run()
        if result == "rolled_back":
            self.record.set(version=self.probe_version())
        return result
