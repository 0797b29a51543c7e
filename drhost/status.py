"""What a run's state means to the operator: each target's standing, its next step, the rollout's state.

Below the CLI so that ``drhost status``, the HTML report and anything else that words a run say the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .i18n import N_, Translate, english
from .orchestrator import TargetStatus, abandoned_view, rollback_verdict
from .plan import Plan

__all__ = ["next_commands", "rollout_summary", "run_next_commands", "status_label", "status_texts", "status_word",
           "target_next", "target_status"]

#: Whether a target in a status is consistent, in the operator's words.
_CONSISTENT: Mapping[TargetStatus, str] = {
    "succeeded": N_("yes: new version"), "up_to_date": N_("yes: unchanged"), "rolled_back": N_("yes: old version"),
    "pending": N_("yes: untouched"), "locked": N_("yes: untouched (another run holds its lock)"),
    "unreachable": N_("unknown: unreachable; resume when it is back"),
    "refused": N_("unknown: it refused drhost (host key or credentials); nothing was done since"),
}
#: What the operator does next for a target in a status (RUN: the run's id, put in by the caller).
_NEXT: Mapping[TargetStatus, str] = {
    "succeeded": N_("nothing: at the new version"),
    "up_to_date": N_("nothing: was already at the package's version"),
    "rolled_back": N_("nothing: back at the old version, verified"),
    "inconsistent": N_("follow the manual procedure below, then: drhost rollback RUN"),
    "locked": N_("another run holds its lock: wait for it (see the error), or --break-lock if it is dead"),
    "unreachable": N_("when it is reachable again: drhost resume RUN (or drhost rollback RUN)"),
    # Never retried on its own: a changed host key may be an impostor; the operator decides.
    "refused": N_("check why it refused (a changed host key: confirm with its owner, then update known_hosts; "
                  "rejected credentials: fix them), then: drhost rollback RUN (or drhost resume RUN)"),
    "aborted": N_("drhost resume RUN to continue, or drhost rollback RUN"),
    "interrupted": N_("drhost resume RUN to continue, or drhost rollback RUN"),
    "pending": N_("not started, untouched: drhost resume RUN starts it with its batch (if no drhost is running "
                  "the run)"),
}


#: Every status a run, a target, a host row or a batch's counts show, as the operator reads it (the keys stay
#: the logic's and the JSON's).
_STATUS_LABELS = {
    "waiting": N_("waiting"), "running": N_("running"), "rolling back": N_("rolling back"),
    "succeeded": N_("succeeded"), "up to date": N_("up to date"), "interrupted": N_("interrupted"),
    "aborted": N_("aborted"), "rollback queued": N_("rollback queued"), "INCONSISTENT": N_("INCONSISTENT"),
    "locked": N_("locked"), "REFUSED": N_("REFUSED"), "rolled back": N_("rolled back"), "failed": N_("failed"),
    "unreachable": N_("unreachable"), "inconsistent": N_("inconsistent"), "refused": N_("refused"),
    "up_to_date": N_("up to date"), "rolled_back": N_("rolled back"), "rollback_queued": N_("rollback queued"),
    "skipped": N_("skipped"), "pending": N_("pending"),
}


def status_texts() -> tuple[str, ...]:
    """The English texts of every status word (message ids), for a page that translates them itself."""
    return tuple(sorted(set(_STATUS_LABELS.values())))


def status_label(status: str, t: Translate) -> str:
    """A status as the operator reads it: translated when the catalogue knows it, else with spaces for '_'."""
    label = _STATUS_LABELS.get(status)
    return t(label) if label is not None else status.replace("_", " ")


def status_word(status: str, t: Translate) -> str:
    """A status in a line of text: translated in a language that has it, else the status itself (English
    output names a status as the JSON and ``--json`` do, ``rolled_back``)."""
    return data_word(status, _STATUS_LABELS, t)


def data_word(value: object, labels: Mapping[str, str], t: Translate) -> str:
    """A word of the data (a status, an ending, a decision) in the language of ``t`` when ``labels`` gives it a
    translated label, else the word as the data has it."""
    label = labels.get(str(value))
    translated = t(label) if label is not None else None
    return translated if translated is not None and translated != label else str(value)


def _said(table: Mapping[TargetStatus, str], status: object, otherwise: str, t: Translate) -> str:
    """The table's words for a recorded status (a plain string in the state), else ``otherwise``."""
    return t(next((text for known, text in table.items() if known == status), otherwise))


def next_commands(run_id: str, status: str, t: Translate = english) -> list[str]:
    """The commands an operator runs next for a run that ended with ``status``."""
    if status in ("interrupted", "aborted"):
        return [t("resume:    drhost resume {run_id}").format(run_id=run_id),
                t("roll back: drhost rollback {run_id}").format(run_id=run_id)]
    if status == "failed":
        return [t("details:   drhost status {run_id}").format(run_id=run_id),
                t("retry the rollback: drhost rollback {run_id}").format(run_id=run_id)]
    return []


def target_status(plan: Plan, name: str, record: dict[str, Any], t: Translate = english) -> dict[str, Any]:
    """Where a target stands, whether it is consistent, and what to do next, as ``drhost status`` shows it."""
    steps = record.get("steps", {})
    done = [s.key for s in plan.steps if steps.get(s.key, {}).get("status") in ("done", "skipped")]
    current = next((s for s in plan.steps if steps.get(s.key, {}).get("status") == "started"), None)
    remaining = [s.key for s in plan.steps if s.key not in done]
    status = record["status"]
    consistent = _said(_CONSISTENT, status, N_("unknown until the run is resumed or rolled back"), t)
    verdict = rollback_verdict(record) if status == "inconsistent" else None
    if status == "inconsistent":
        # Derived from what the plugins' verification reported, never a fixed label.
        consistent = (t("{verdict}: {label}; follow the manual procedure").format(**verdict) if verdict
                      else t("unknown: no verification recorded; follow the manual procedure"))
    abandoned = abandoned_view(record)
    if abandoned["still_changing"]:
        consistent = t("unknown: may still be changing ({what})").format(what="; ".join(abandoned["still_changing"]))
    elif abandoned["abandoned"]:
        consistent = t("{consistent} when recorded; but {note}").format(consistent=consistent,
                                                                         note=abandoned["abandoned"][-1])
    return {
        "target": name, "status": status, "phase": record.get("phase"), "stage": record.get("stage"),
        "step": current.key if current else None, "done": len(done), "total": len(plan.steps),
        "remaining": remaining, "consistent": consistent, "version_before": record.get("version_before"),
        "version": record.get("version"), "errors": record.get("errors", []),
        "skipped_plugins": record.get("skipped_plugins", {}), "rollback": record.get("rollback", {}),
        "plugins": record.get("plugins", {}), "manual_procedure": record.get("manual_procedure"),
        "evidence": record.get("evidence"),
        "next": t("wait: a core thread that drhost abandoned may still be changing it (see above); check the "
                  "target once that drhost has exited") if abandoned["still_changing"]
                else target_next(name, status, record, t),
        "still_changing": abandoned["still_changing"], "abandoned_threads": abandoned["abandoned"],
        "verification": verdict,
        # The status-check connection lost and waiting for the operator's word (manual reconnect), or None.
        "status_check": record.get("status_check"),
        # What was noticed but not enforced (a core step that grew drhost past its class's memory_mb).
        "findings": [*(f for entry in steps.values() for f in entry.get("findings", [])),
                     *record.get("findings", [])],
    }


def target_next(name: str, status: str, record: dict[str, Any], t: Translate = english) -> str:
    """What the operator does next for this target, as one line."""
    return _said(_NEXT, status, N_("drhost resume RUN (if no drhost is running it)"), t)


def rollout_summary(body: dict[str, Any], t: Translate = english) -> dict[str, Any]:
    """The run's batches and why the rollout stopped or waits, as data and as lines for the operator."""
    record = body.get("rollout") or {}
    batches = record.get("batches") or []
    stopped, waiting = record.get("stopped"), record.get("waiting")
    lines = []
    if len(batches) > 1:
        sizes = ", ".join(str(len(b["targets"])) for b in batches)
        lines.append(t("rollout: {count} batches of {sizes} targets").format(count=len(batches), sizes=sizes))
    if stopped:
        lines.append(t("rollout stopped in batch {batch}: {reason}; not started: {targets} (drhost resume {run_id} "
                       "continues with them; the budget then counts afresh)").format(
            batch=stopped["batch"] + 1, reason=stopped["reason"], run_id=body["run_id"],
            targets=", ".join(stopped["not_started"]) or t("none")))
    if waiting is not None:
        lines.append(t("rollout waits for approval of batch {batch}: {targets}").format(
            batch=waiting + 1, targets=", ".join(batches[waiting]["targets"])))
    return {"batches": [list(b["targets"]) for b in batches], "stopped": stopped, "waiting": waiting,
            "lines": lines}


def run_next_commands(body: Mapping[str, Any], rollout: Mapping[str, Any], t: Translate = english) -> list[str]:
    """What to run next for the run as a whole: :func:`next_commands` for a run that ended, else for one that
    waits for an approval or that a drhost may still be driving."""
    run_id, status = str(body["run_id"]), str(body["status"])
    if rollout.get("waiting") is not None:
        return [t("approve batch {batch}: drhost resume {run_id}").format(batch=rollout["waiting"] + 1, run_id=run_id),
                t("roll back:  drhost rollback {run_id}").format(run_id=run_id)]
    if status in ("running", "rolling_back", "created"):
        return [t("if no drhost is running it: drhost resume {run_id}").format(run_id=run_id)]
    return next_commands(run_id, status, t)
