"""Rollback of one target: stage by stage in reverse, compensations LIFO, then verification."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drhost_hookspecs import Stage, VerifyPhase

from ..errors import phrase
from ..events import EventName
from ..failpoints import failpoint
from ..i18n import N_
from ..plan import PlannedStep
from ..policy import class_policy, retry_wait_s, stage_policy
from ..state import write_private_json
from ..supervisor import CallOutcome
from ._env import Executor, RunEnv
from ._manual_evidence import plugins_left, read_from_target
from ._reach import look, queue_rollback, wait_until_reachable
from ._records import TOUCHED, TargetRecord
from ._statuses import TargetStatus
from ._stray_commands import confirm_stopped, stop_pending


def plugins_last_first(touched: list[PlannedStep], steps: dict[str, dict[str, object]]) -> list[str]:
    """Plugins that ran steps, the one whose step ran last first (the order compensations unwind in)."""
    last: dict[str, int] = {}
    for step in touched:
        seq = int(str(steps.get(step.key, {}).get("seq", 0)))
        last[step.plugin] = max(last.get(step.plugin, 0), seq)
    return sorted(last, key=lambda name: last[name], reverse=True)


def _how_it_ended(call: Mapping[str, Any]) -> str:
    """``killed after 30 s``, ``abandoned after 30 s (its thread did not stop)``, ``failed: ...``."""
    ended, seconds = str(call.get("ended")), call.get("timeout_s")
    if ended == "timeout":
        after = f" after {float(seconds):g} s" if seconds else ""
        if call.get("hung_thread"):
            return f"abandoned{after} (its thread did not stop)"
        return f"killed{after}" if call.get("killed") else f"stopped{after} (timeout)"
    return f"{ended}: {call.get('message')}"


def rollback_verdict(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the target's rollback can claim, from evidence only: the compensations that did not finish and
    what each plugin's ``drhost_verify(stage, rolled_back)`` reported in the latest pass of every stage.

    ``verdict`` is ``NO`` (a verification reported a problem), ``unknown`` (a verification did not run, or
    none exists), or ``unconfirmed`` (every verification reported the old state, but a compensation did not
    finish); ``label`` says it in one line, e.g. "rollback of stage upgrade: dr-database/upgrade_db_schema
    rollback killed after 30 s; verification reports: old version (dr-core), unknown (dr-database: verify not
    run: ...)". None when the record has no rollback evidence (a rollback from before it was recorded).
    """
    rollback = record.get("rollback") or {}
    verification: Mapping[str, Mapping[str, Any]] = rollback.get("verification") or {}
    failed_calls: Mapping[str, list[Mapping[str, Any]]] = rollback.get("failed_calls") or {}
    if not verification and not failed_calls:
        return None
    order = [stage.value for stage in reversed(Stage.ordered())]
    calls = [f"rollback of stage {stage}: {call.get('what')} {_how_it_ended(call)}"
             for stage in order for call in failed_calls.get(stage, [])]
    found: dict[str, dict[str, list[str]]] = {}
    for stage in order:
        for plugin, result in (verification.get(stage) or {}).items():
            seen = found.setdefault(plugin, {"problems": [], "not_run": []})
            if result.get("ran"):
                seen["problems"].extend(f"[{stage}] {problem}" for problem in result.get("problems") or [])
            else:
                seen["not_run"].append(f"[{stage}] {result.get('why')}")
    plugins: dict[str, dict[str, str]] = {}
    for plugin, seen in sorted(found.items()):
        if seen["problems"]:
            plugins[plugin] = {"reports": "not restored", "why": "; ".join(seen["problems"])}
        elif seen["not_run"]:
            plugins[plugin] = {"reports": "unknown", "why": "verify not run: " + "; ".join(seen["not_run"])}
        else:
            plugins[plugin] = {"reports": "old version", "why": ""}
    said = ", ".join(f"{v['reports']} ({name}{': ' + v['why'] if v['why'] else ''})" for name, v in plugins.items())
    reports = [v["reports"] for v in plugins.values()]
    verdict = "NO" if "not restored" in reports else "unknown" if "unknown" in reports or not reports \
        else "unconfirmed" if calls else "old version"
    label = "; ".join([*calls, f"verification reports: {said or 'nothing (no plugin verifies a rollback)'}"])
    return {"verdict": verdict, "label": label, "plugins": plugins, "failed_calls": calls}


class RollbackFlow:
    """Brings a target back to the version it had before the run.

    Every compensation's completion is durable, so a rollback interrupted at any
    point continues where it stopped and never runs a finished compensation again.
    """

    def __init__(self, env: RunEnv, executor: Executor, name: str) -> None:
        self.env = env
        self.executor = executor
        self.name = name
        self.record = TargetRecord(env, name)
        #: Why the target refused us at the last look (host key, credentials), or None.
        self._refusal: str | None = None

    def _emit(self, event: EventName, **kwargs: object) -> None:
        self.env.emit(event, target=self.name, **kwargs)  # type: ignore[arg-type]

    def _stages_to_roll_back(self) -> list[Stage]:
        steps = self.record.get("steps") or {}
        stages = self.record.get("stages") or {}
        chosen = []
        for stage in reversed(Stage.ordered()):
            touched = any(steps.get(s.key, {}).get("status") in (*TOUCHED, "cleaned")
                          for s in self.env.plan.stage_steps(stage))
            if not touched and stages.get(stage.value) == "pending":
                continue
            if stage_policy(self.env.config, stage).rollback_when == "stage_failed" and \
                    stages.get(stage.value) == "completed":
                # A complete backup is what the other stages' rollback restores from: keep it.
                continue
            chosen.append(stage)
        return chosen

    def run(self) -> TargetStatus:
        with self.env.state.mutate_target(self.name) as record:
            rollback = record["rollback"]
            if rollback["errors"] or rollback["problems"]:
                # Asked again after a failed rollback: retry what failed, keep what succeeded.
                rollback["stages"] = {s: v for s, v in rollback["stages"].items() if v != "failed"}
                rollback["steps"] = {k: v for k, v in rollback["steps"].items() if v != "failed"}
                rollback["history"] = [*rollback.get("history", []),
                                       {"errors": rollback["errors"], "problems": rollback["problems"]}]
                rollback["errors"], rollback["problems"] = [], []
            record["phase"], record["status"] = "rollback", "rolling_back"
        unstopped = stop_pending(self.env, self.executor, self.name)
        if unstopped is not None:
            # A step's command may still run there: no compensation may start next to it.
            self._refusal = unstopped.why if unstopped.status == "refused" else None
            return self._queued()
        stages = self._stages_to_roll_back()
        self._emit("rollback.started", stages=[s.value for s in stages])
        for stage in stages:
            if self.env.stop.is_set():
                self.record.set(status="interrupted")
                self._emit("target.interrupted", message=N_("rollback interrupted; resume continues it"))
                return "interrupted"
            if self.record.get("rollback", "stages", stage.value) in ("done", "failed"):
                continue
            if not self._wait_until_reachable():
                return self._queued()
            errors, problems = self._stage_with_recovery(stage)
            if (errors or problems) and not self._reachable_now():
                # The link failed (or the target now refuses us), not the rollback: forget this pass and queue
                # the target until it is back.
                self._forget_stage_marks(stage)
                return self._queued()
            failpoint(f"rollback.stage_returned:{stage.value}")
            with self.env.state.mutate_target(self.name) as record:
                rollback = record["rollback"]
                rollback["stages"][stage.value] = "failed" if errors or problems else "done"
                rollback["errors"].extend(errors)
                rollback["problems"].extend(problems)
            self._emit("rollback.stage", stage=stage, status="failed" if errors or problems else "done",
                       errors=errors, problems=problems, rule=stage_policy(self.env.config, stage).rollback_rule)
        failpoint("rollback.concluding")
        errors = self.record.get("rollback", "errors") or []
        problems = self.record.get("rollback", "problems") or []
        if errors or problems:
            return self._inconsistent(stages, errors, problems)
        self.record.set(status="rolled_back", phase="done")
        self._emit("rollback.verified", message=N_("target restored and verified"))
        return "rolled_back"

    def _stage_with_recovery(self, stage: Stage) -> tuple[list[str], list[str]]:
        """Roll ``stage`` back and verify it; when either fails, run the stage's rollback once more."""
        errors = self._roll_back_stage(stage)
        problems = self._verify_stage(stage)
        if not errors and not problems:
            return [], []
        if not self._wait_until_reachable():
            return errors, problems
        # Recovery: compensations promise to tolerate a second run; a transient failure (a busy file, a
        # slow service) or a half-done compensation gets one more complete pass, verified again.
        self._emit("rollback.recovery", stage=stage, errors=errors, problems=problems,
                   message=N_("rollback of the stage failed or did not verify; running it once more"))
        self._forget_stage_marks(stage)
        errors = self._roll_back_stage(stage)
        return errors, self._verify_stage(stage)

    def _forget_stage_marks(self, stage: Stage) -> None:
        with self.env.state.mutate_target(self.name) as record:
            done = record["rollback"]["steps"]
            for key in [k for k in done if k.startswith(f"{stage.value}/")]:
                del done[key]

    def _wait_until_reachable(self) -> bool:
        """True once the target answers; an unreachable one is waited for, with backoff, for
        ``run.unreachable_wait_s`` — it needs this rollback more than any other. A target that refuses us
        (changed host key, rejected credentials) is not waited for: :meth:`_queued` marks it ``refused``."""
        reach = wait_until_reachable(self.env, self.executor, self.name, "rollback")
        self._refusal = reach.why if reach.status == "refused" else None
        return reach.ok

    def _reachable_now(self) -> bool:
        reach = look(self.executor, self.name)
        self._refusal = reach.why if reach.status == "refused" else None
        return reach.ok

    def _queued(self) -> TargetStatus:
        """Not reachable: the rollback stays queued; resume or `drhost rollback RUN` takes it up. A refusal is
        ``refused`` (exit 7: the operator must act first), an outage ``unreachable`` (exit 6)."""
        return queue_rollback(self.env, self.name, "refused" if self._refusal is not None else "unreachable",
                              self._refusal)

    def _inconsistent(self, stages: list[Stage], errors: list[str], problems: list[str]) -> TargetStatus:
        """Recovery failed: keep the evidence, say exactly what to do by hand, mark the target."""
        failed = [s for s in stages if self.record.get("rollback", "stages", s.value) == "failed"]
        procedure = self._manual_procedure(failed, errors, problems)
        evidence_dir = self.env.state.run_dir / "inconsistent"
        evidence = write_private_json(evidence_dir, self.name, {
            "target": self.name, "run_id": self.env.state.run_id, "failed_stages": [s.value for s in failed],
            "errors": errors, "problems": problems, "procedure": procedure,
            "record": self.env.state.snapshot()["targets"][self.name]})
        # The phase stays "rollback": resume and `drhost rollback` continue the rollback, never the upgrade.
        self.record.set(status="inconsistent", phase="rollback", manual_procedure=procedure,
                        evidence=str(evidence))
        # What is claimed about the target is what its plugins' verification reported, nothing fixed.
        verdict = rollback_verdict(self.record.get() or {}) or {}
        label = verdict.get("label", "no verification recorded")
        self._emit("target.inconsistent", errors=errors, problems=problems, procedure=procedure,
                   evidence=str(evidence), verdict=verdict.get("verdict", "unknown"), verification=label,
                   message=phrase("rollback did not complete, also after a recovery pass: {verification}; follow "
                                  "the manual procedure", verification=label))
        return "inconsistent"

    def _manual_procedure(self, failed: list[Stage], errors: list[str], problems: list[str]) -> list[str]:
        run_id = self.env.state.run_id
        lines = [f"1. make sure nothing drives {self.name}: drhost status {run_id} (no drhost process on it)"]
        number = 2
        for stage in failed:
            rule = stage_policy(self.env.config, stage).rollback_rule
            lines.append(f"{number}. [{stage.value}] {rule} — what failed:")
            lines.extend(f"     {item}" for item in (*errors, *problems) if item.startswith(f"[{stage.value}]"))
            for plugin in self.env.plan.plugins_with("drhost_manual_rollback_steps"):
                outcome = self.executor.call(self.name, plugin.name, "manual_rollback_steps", stage=stage,
                                             timeout_s=self.executor.budget_s("manual_rollback_steps"))
                steps = list(outcome.result or []) if outcome.ok else [
                    f"(could not ask {plugin.name} for its steps: {outcome.message})"]
                if steps:
                    lines.append(f"   {plugin.name}:")
                    lines.extend(f"     - {item}" for item in steps)
            number += 1
        # Which plugins' compensations failed and what they left, read from the target: not a fixed label.
        left = [line for stage in failed for line in plugins_left(self.record.get() or {}, stage, _how_it_ended)]
        lines.append(f"{number}. what the failed compensations left (evidence from the target):")
        lines.extend(f"     {line}" for line in
                     (*left, *read_from_target(self.env, self.executor, self.name)))
        number += 1
        lines.append(f"{number}. then let drhost check and finish: drhost rollback {run_id} (it retries only what "
                     f"failed and verifies again)")
        return lines
    def _roll_back_stage(self, stage: Stage) -> list[str]:
        with self.env.state.mutate_target(self.name) as record:  # this pass's failures replace an earlier pass's
            record["rollback"].setdefault("failed_calls", {})[stage.value] = []
        steps = self.record.get("steps") or {}
        done = self.record.get("rollback", "steps") or {}
        touched = [s for s in self.env.plan.stage_steps(stage)
                   if steps.get(s.key, {}).get("status") in (*TOUCHED, "cleaned")]
        touched.sort(key=lambda s: steps[s.key].get("seq", 0), reverse=True)
        errors: list[str] = []
        for step in touched:
            if not step.has_rollback or done.get(step.key) == "done":
                continue
            errors.extend(self._compensate(step))
        for name in plugins_last_first(touched, steps):
            plugin = self.env.plan.plugin(name)
            if "drhost_rollback" not in plugin.hooks:
                continue
            key = f"{stage.value}/{plugin.name}/*"
            if done.get(key) == "done":
                continue
            failpoint(f"rollback.plugin_before:{stage.value}/{plugin.name}")
            outcome = self.executor.call(self.name, plugin.name, "rollback", stage=stage,
                                         timeout_s=self.executor.budget_s("rollback"))
            failpoint(f"rollback.plugin_returned:{stage.value}/{plugin.name}")
            self._mark(key, outcome.ok)
            self._emit("rollback.plugin", stage=stage, plugin=plugin.name, ended=outcome.ended,
                       message=outcome.message)
            if not outcome.ok:
                self._failed_call(stage, f"{plugin.name} drhost_rollback", outcome, self.executor.budget_s("rollback"),
                                  plugin=plugin.name)
                errors.append(f"[{stage.value}] {plugin.name} drhost_rollback {outcome.ended}: {outcome.message}")
        return errors

    def _compensate(self, step: PlannedStep) -> list[str]:
        """A step's compensation, retried per its class policy like the step itself (a retryable step's
        compensation killed after its deadline gets the class's attempts); what a failed attempt left
        running is confirmed stopped before the next attempt."""
        unstopped = stop_pending(self.env, self.executor, self.name)
        if unstopped is not None:
            # An earlier attempt's command may still run: compensating next to it would race it.
            return [f"{step.label} rollback not run: a command of this run may still run on the target "
                    f"({unstopped.why})"]
        policy = class_policy(self.env.config, step.plugin_class)
        attempts = policy.attempts if step.retryable else 1
        outcome = CallOutcome("failed", message="not run")
        for attempt in range(1, attempts + 1):
            failpoint(f"rollback.before:{step.key}")
            outcome = self.executor.call(self.name, step.plugin, "rollback_step", stage=step.stage, step=step.name,
                                         timeout_s=step.timeout_s)
            failpoint(f"rollback.returned:{step.key}")
            retry = (not outcome.ok and attempt < attempts and outcome.retryable
                     and not outcome.detail.get("hung_thread") and not self.env.stop.is_set())
            if not outcome.ok and confirm_stopped(self.env, self.executor, self.name, step,
                                                  outcome.message) is not None:
                retry = False  # its command may still run: nothing more on this target until it is stopped
            wait = retry_wait_s(policy, self.env.config) if retry else 0.0
            self._emit("rollback.step", stage=step.stage, step=step.name, plugin=step.plugin, ended=outcome.ended,
                       message=outcome.message, attempt=attempt, attempts=attempts,
                       retrying_in_s=wait if retry else None)
            if not retry or self.env.stop.wait(wait):
                break
        self._mark(step.key, outcome.ok)
        if not outcome.ok:
            self._failed_call(step.stage, f"{step.plugin}/{step.name} rollback", outcome, step.timeout_s,
                              plugin=step.plugin, attempts=attempt)
        return [] if outcome.ok else [f"{step.label} rollback {outcome.ended}: {outcome.message}"]

    def _failed_call(self, stage: Stage, what: str, outcome: CallOutcome, timeout_s: float, *,
                     plugin: str | None = None, attempts: int = 1) -> None:
        """A compensation that did not finish, as evidence for the rollback's verdict."""
        call = {"what": what, "ended": outcome.ended, "message": outcome.message, "timeout_s": timeout_s,
                "killed": bool(outcome.detail.get("killed")), "hung_thread": bool(outcome.detail.get("hung_thread")),
                "plugin": plugin, "attempts": attempts}
        with self.env.state.mutate_target(self.name) as record:
            record["rollback"].setdefault("failed_calls", {}).setdefault(stage.value, []).append(call)

    def _mark(self, key: str, ok: bool) -> None:
        with self.env.state.mutate_target(self.name) as record:
            record["rollback"]["steps"][key] = "done" if ok else "failed"

    def _verify_stage(self, stage: Stage) -> list[str]:
        failpoint(f"rollback.verifying:{stage.value}")
        problems: list[str] = []
        #: What each plugin's verification reported in this pass: the only evidence the verdict may use.
        reported: dict[str, dict[str, Any]] = {}
        for plugin in self.env.plan.plugins_with("drhost_verify"):
            outcome = self.executor.call(self.name, plugin.name, "verify", stage=stage,
                                         phase=VerifyPhase.ROLLED_BACK,
                                         timeout_s=self.executor.budget_s("rollback"))
            if not outcome.ok:
                problems.append(f"[{stage.value}] {plugin.name}: verification did not run: {outcome.message}")
                reported[plugin.name] = {"ran": False, "ended": outcome.ended, "why": outcome.message}
            else:
                found = [str(p) for p in (outcome.result or [])]
                problems.extend(f"[{stage.value}] {plugin.name}: {p}" for p in found)
                reported[plugin.name] = {"ran": True, "problems": found}
        with self.env.state.mutate_target(self.name) as record:
            record["rollback"].setdefault("verification", {})[stage.value] = reported
        return problems
