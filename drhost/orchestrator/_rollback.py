"""Rollback of one target: stage by stage in reverse, compensations LIFO, then verification."""

from __future__ import annotations

from drhost_hookspecs import Stage, VerifyPhase

from ..failpoints import failpoint
from ..plan import PlannedStep
from ..policy import stage_policy
from ._env import Executor, RunEnv
from ._records import TOUCHED, TargetRecord

_HOOK_TIMEOUT_S = 300.0


def plugins_last_first(touched: list[PlannedStep], steps: dict[str, dict[str, object]]) -> list[str]:
    """Plugins that ran steps, the one whose step ran last first (the order compensations unwind in)."""
    last: dict[str, int] = {}
    for step in touched:
        seq = int(str(steps.get(step.key, {}).get("seq", 0)))
        last[step.plugin] = max(last.get(step.plugin, 0), seq)
    return sorted(last, key=lambda name: last[name], reverse=True)


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

    def _emit(self, event: str, **kwargs: object) -> None:
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

    def run(self) -> str:
        with self.env.state.mutate() as body:
            record = body["targets"][self.name]
            rollback = record["rollback"]
            if rollback["errors"] or rollback["problems"]:
                # Asked again after a failed rollback: retry what failed, keep what succeeded.
                rollback["stages"] = {s: v for s, v in rollback["stages"].items() if v != "failed"}
                rollback["steps"] = {k: v for k, v in rollback["steps"].items() if v != "failed"}
                rollback["history"] = [*rollback.get("history", []),
                                       {"errors": rollback["errors"], "problems": rollback["problems"]}]
                rollback["errors"], rollback["problems"] = [], []
            record["phase"], record["status"] = "rollback", "rolling_back"
        stages = self._stages_to_roll_back()
        self._emit("rollback.started", stages=[s.value for s in stages])
        for stage in stages:
            if self.env.stop.is_set():
                self.record.set(status="interrupted")
                self._emit("target.interrupted", message="rollback interrupted; resume continues it")
                return "interrupted"
            if self.record.get("rollback", "stages", stage.value) in ("done", "failed"):
                continue
            errors = self._roll_back_stage(stage)
            failpoint(f"rollback.stage_returned:{stage.value}")
            with self.env.state.mutate() as body:
                rollback = body["targets"][self.name]["rollback"]
                rollback["stages"][stage.value] = "failed" if errors else "done"
                rollback["errors"].extend(errors)
            self._emit("rollback.stage", stage=stage, status="failed" if errors else "done", errors=errors,
                       rule=stage_policy(self.env.config, stage).rollback_rule)
        failpoint("rollback.verifying")
        problems = self._verify(stages)
        with self.env.state.mutate() as body:
            body["targets"][self.name]["rollback"]["problems"] = problems
        errors = self.record.get("rollback", "errors") or []
        if errors or problems:
            self.record.set(status="rollback_failed", phase="done")
            self._emit("rollback.failed", errors=errors, problems=problems,
                       message="rollback did not restore the target; see errors and problems")
            return "rollback_failed"
        self.record.set(status="rolled_back", phase="done")
        self._emit("rollback.verified", message="target restored and verified")
        return "rolled_back"

    def _roll_back_stage(self, stage: Stage) -> list[str]:
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
            outcome = self.executor.call(self.name, plugin.name, "rollback", stage=stage, timeout_s=_HOOK_TIMEOUT_S)
            failpoint(f"rollback.plugin_returned:{stage.value}/{plugin.name}")
            self._mark(key, outcome.ok)
            self._emit("rollback.plugin", stage=stage, plugin=plugin.name, ended=outcome.ended,
                       message=outcome.message)
            if not outcome.ok:
                errors.append(f"[{stage.value}] {plugin.name} drhost_rollback {outcome.ended}: {outcome.message}")
        return errors

    def _compensate(self, step: PlannedStep) -> list[str]:
        failpoint(f"rollback.before:{step.key}")
        outcome = self.executor.call(self.name, step.plugin, "rollback_step", stage=step.stage, step=step.name,
                                     timeout_s=step.timeout_s)
        failpoint(f"rollback.returned:{step.key}")
        self._mark(step.key, outcome.ok)
        self._emit("rollback.step", stage=step.stage, step=step.name, plugin=step.plugin, ended=outcome.ended,
                   message=outcome.message)
        return [] if outcome.ok else [f"{step.label} rollback {outcome.ended}: {outcome.message}"]

    def _mark(self, key: str, ok: bool) -> None:
        with self.env.state.mutate() as body:
            body["targets"][self.name]["rollback"]["steps"][key] = "done" if ok else "failed"

    def _verify(self, stages: list[Stage]) -> list[str]:
        problems: list[str] = []
        for stage in stages:
            for plugin in self.env.plan.plugins_with("drhost_verify"):
                outcome = self.executor.call(self.name, plugin.name, "verify", stage=stage,
                                             phase=VerifyPhase.ROLLED_BACK, timeout_s=_HOOK_TIMEOUT_S)
                if not outcome.ok:
                    problems.append(f"[{stage.value}] {plugin.name}: verification did not run: {outcome.message}")
                else:
                    problems.extend(f"[{stage.value}] {plugin.name}: {p}" for p in (outcome.result or []))
        return problems
