"""What a run's state means to the operator: each target's standing, its next step, the rollout's state.

Below the CLI so that ``drhost status``, the HTML report and anything else that words a run say the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .orchestrator import TargetStatus, abandoned_view, rollback_verdict
from .plan import Plan

__all__ = ["next_commands", "rollout_summary", "run_next_commands", "target_next", "target_status"]

#: Whether a target in a status is consistent, in the operator's words.
_CONSISTENT: Mapping[TargetStatus, str] = {
    "succeeded": "yes: new version", "up_to_date": "yes: unchanged", "rolled_back": "yes: old version",
    "pending": "yes: untouched", "locked": "yes: untouched (another run holds its lock)",
    "unreachable": "unknown: unreachable; resume when it is back",
    "refused": "unknown: it refused drhost (host key or credentials); nothing was done since",
}
#: What the operator does next for a target in a status.
_NEXT: Mapping[TargetStatus, str] = {
    "succeeded": "nothing: at the new version",
    "up_to_date": "nothing: was already at the package's version",
    "rolled_back": "nothing: back at the old version, verified",
    "inconsistent": "follow the manual procedure below, then: drhost rollback RUN",
    "locked": "another run holds its lock: wait for it (see the error), or --break-lock if it is dead",
    "unreachable": "when it is reachable again: drhost resume RUN (or drhost rollback RUN)",
    # Never retried on its own: a changed host key may be an impostor; the operator decides.
    "refused": "check why it refused (a changed host key: confirm with its owner, then update known_hosts; "
               "rejected credentials: fix them), then: drhost rollback RUN (or drhost resume RUN)",
    "aborted": "drhost resume RUN to continue, or drhost rollback RUN",
    "interrupted": "drhost resume RUN to continue, or drhost rollback RUN",
    "pending": "not started, untouched: drhost resume RUN starts it with its batch (if no drhost is running "
               "the run)",
}


def _said(table: Mapping[TargetStatus, str], status: object, otherwise: str) -> str:
    """The table's words for a recorded status (a plain string in the state), else ``otherwise``."""
    return next((text for known, text in table.items() if known == status), otherwise)


def next_commands(run_id: str, status: str) -> list[str]:
    """The commands an operator runs next for a run that ended with ``status``."""
    if status in ("interrupted", "aborted"):
        return [f"resume:    drhost resume {run_id}", f"roll back: drhost rollback {run_id}"]
    if status == "failed":
        return [f"details:   drhost status {run_id}", f"retry the rollback: drhost rollback {run_id}"]
    return []


def target_status(plan: Plan, name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Where a target stands, whether it is consistent, and what to do next, as ``drhost status`` shows it."""
    steps = record.get("steps", {})
    done = [s.key for s in plan.steps if steps.get(s.key, {}).get("status") in ("done", "skipped")]
    current = next((s for s in plan.steps if steps.get(s.key, {}).get("status") == "started"), None)
    remaining = [s.key for s in plan.steps if s.key not in done]
    status = record["status"]
    consistent = _said(_CONSISTENT, status, "unknown until the run is resumed or rolled back")
    verdict = rollback_verdict(record) if status == "inconsistent" else None
    if status == "inconsistent":
        # Derived from what the plugins' verification reported, never a fixed label.
        consistent = (f"{verdict['verdict']}: {verdict['label']}; follow the manual procedure" if verdict
                      else "unknown: no verification recorded; follow the manual procedure")
    abandoned = abandoned_view(record)
    if abandoned["still_changing"]:
        consistent = f"unknown: may still be changing ({'; '.join(abandoned['still_changing'])})"
    elif abandoned["abandoned"]:
        consistent = f"{consistent} when recorded; but {abandoned['abandoned'][-1]}"
    return {
        "target": name, "status": status, "phase": record.get("phase"), "stage": record.get("stage"),
        "step": current.key if current else None, "done": len(done), "total": len(plan.steps),
        "remaining": remaining, "consistent": consistent, "version_before": record.get("version_before"),
        "version": record.get("version"), "errors": record.get("errors", []),
        "skipped_plugins": record.get("skipped_plugins", {}), "rollback": record.get("rollback", {}),
        "plugins": record.get("plugins", {}), "manual_procedure": record.get("manual_procedure"),
        "evidence": record.get("evidence"),
        "next": "wait: a core thread that drhost abandoned may still be changing it (see above); check the target "
                "once that drhost has exited" if abandoned["still_changing"] else target_next(name, status, record),
        "still_changing": abandoned["still_changing"], "abandoned_threads": abandoned["abandoned"],
        "verification": verdict,
        # The status-check connection lost and waiting for the operator's word (manual reconnect), or None.
        "status_check": record.get("status_check"),
        # What was noticed but not enforced (a core step that grew drhost past its class's memory_mb).
        "findings": [*(f for entry in steps.values() for f in entry.get("findings", [])),
                     *record.get("findings", [])],
    }


def target_next(name: str, status: str, record: dict[str, Any]) -> str:
    """What the operator does next for this target, as one line."""
    return _said(_NEXT, status, "drhost resume RUN (if no drhost is running it)")


def rollout_summary(body: dict[str, Any]) -> dict[str, Any]:
    """The run's batches and why the rollout stopped or waits, as data and as lines for the operator."""
    record = body.get("rollout") or {}
    batches = record.get("batches") or []
    stopped, waiting = record.get("stopped"), record.get("waiting")
    lines = []
    if len(batches) > 1:
        sizes = ", ".join(str(len(b["targets"])) for b in batches)
        lines.append(f"rollout: {len(batches)} batches of {sizes} targets")
    if stopped:
        lines.append(f"rollout stopped in batch {stopped['batch'] + 1}: {stopped['reason']}; not started: "
                     f"{', '.join(stopped['not_started']) or 'none'} (drhost resume RUN continues with them; "
                     f"the budget then counts afresh)".replace("RUN", str(body["run_id"])))
    if waiting is not None:
        lines.append(f"rollout waits for approval of batch {waiting + 1}: "
                     f"{', '.join(batches[waiting]['targets'])}")
    return {"batches": [list(b["targets"]) for b in batches], "stopped": stopped, "waiting": waiting,
            "lines": lines}


def run_next_commands(body: Mapping[str, Any], rollout: Mapping[str, Any]) -> list[str]:
    """What to run next for the run as a whole: :func:`next_commands` for a run that ended, else for one that
    waits for an approval or that a drhost may still be driving."""
    run_id, status = str(body["run_id"]), str(body["status"])
    if rollout.get("waiting") is not None:
        return [f"approve batch {rollout['waiting'] + 1}: drhost resume {run_id}",
                f"roll back:  drhost rollback {run_id}"]
    if status in ("running", "rolling_back", "created"):
        return [f"if no drhost is running it: drhost resume {run_id}"]
    return next_commands(run_id, status)
