"""The per-target record inside the run state, and the small helpers that change it durably."""

from __future__ import annotations

import copy
import time
from typing import Any, cast

from drhost_hookspecs import Stage

from ..plan import PlannedStep
from ..state import StepRecord, checked_keys
from ..state import TargetRecord as StoredTarget
from ..state import new_target_record as new_target_record
from ..supervisor import Ending
from ._env import RunEnv
from ._statuses import Phase, StageStatus, StepStatus, TargetStatus

#: A target in one of these states needs nothing more from this run.
TERMINAL: tuple[TargetStatus, ...] = ("succeeded", "up_to_date", "rolled_back")
#: Step record states that mean "it ran, at least partly" — compensations apply to them.
TOUCHED: tuple[StepStatus, ...] = ("started", "done", "failed")


def plugin_ending(outcome_ended: Ending, message: str, detail: dict[str, Any], action: str,
                  timeout_s: float) -> dict[str, Any]:
    """How a plugin ended on a target, for the record: what happened, the limit and the signal."""
    ending: dict[str, Any] = {"ended": action, "outcome": outcome_ended, "why": message}
    if outcome_ended == "timeout":
        ending["limit"] = f"time: {timeout_s:g} s"
    elif detail.get("limit"):
        ending["limit"] = str(detail["limit"])
    elif outcome_ended == "memory":
        ending["limit"] = "memory"
    if detail.get("limit_text"):
        # In words, with the figure: "pids limit 16 reached", "memory limit 256 MiB", "CPU time limit 2 s reached".
        ending["limit_text"] = str(detail["limit_text"])
    throttled = detail.get("cpu_throttled")
    if isinstance(throttled, dict):
        ending["cpu_throttled"] = throttled
    exit_text = str(detail.get("exit", ""))
    if "SIG" in exit_text:
        ending["signal"] = exit_text[exit_text.index("SIG"):].split()[0].rstrip(",;)")
    elif detail.get("killed"):
        ending["signal"] = "SIGKILL"
    if detail.get("usage"):
        ending["usage_peak"] = detail["usage"]
    return ending


class TargetRecord:
    """Durable accessors for one target's record."""

    def __init__(self, env: RunEnv, name: str) -> None:
        self.env = env
        self.name = name

    def get(self, *path: str) -> Any:
        with self.env.state.reading_target(self.name) as record:
            node: Any = record
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, (dict, list)):
                return copy.deepcopy(node)
            return node

    def set(self, *, status: TargetStatus | None = None, phase: Phase | None = None, **fields: Any) -> None:
        if status is not None:
            fields["status"] = status
        if phase is not None:
            fields["phase"] = phase
        with self.env.state.mutate_target(self.name, steps=None if "steps" in fields else ()) as record:
            record.update(cast(StoredTarget, checked_keys(StoredTarget, fields)))

    def set_stage(self, stage: Stage, status: StageStatus) -> None:
        with self.env.state.mutate_target(self.name, steps=()) as record:
            record["stages"][stage.value] = status
            record["stage"] = stage.value

    def step(self, step: PlannedStep) -> dict[str, Any]:
        found = self.get("steps", step.key)
        return found if isinstance(found, dict) else {}

    def mark_step(self, step: PlannedStep, status: StepStatus, **fields: Any) -> None:
        with self.env.state.mutate_target(self.name, steps=(step.key,)) as record:
            entry = record["steps"].setdefault(step.key, {"attempts": 0, "runs": 0})
            if status == "started":
                record["seq"] += 1
                entry["seq"] = record["seq"]
                entry["attempts"] += 1
                entry["runs"] += 1
                entry["started"] = time.time()
                entry.pop("ended", None)
            elif status in ("done", "failed", "skipped"):
                entry["ended"] = time.time()
            entry["status"] = status
            entry.update(cast(StepRecord, checked_keys(StepRecord, fields)))

    def plugin_ended(self, plugin: str, ending: dict[str, Any]) -> None:
        """Record how ``plugin`` ended on this target; a failure is never overwritten by a later success."""
        def replaces(known: dict[str, Any] | None) -> bool:
            return known != ending and ((known or {}).get("ended", "ok") == "ok" or ending["ended"] != "ok")

        with self.env.state.reading_target(self.name) as record:
            # After every successful step: almost always what is recorded already, so nothing to write.
            if not replaces(record.get("plugins", {}).get(plugin)):
                return
        with self.env.state.mutate_target(self.name, steps=()) as record:
            plugins = record.setdefault("plugins", {})
            if replaces(plugins.get(plugin)):
                plugins[plugin] = ending

    def add_error(self, **error: Any) -> None:
        with self.env.state.mutate_target(self.name, steps=()) as record:
            record["errors"].append({"ts": time.time(), **error})
