"""Watchdog events back into lines: English in the journal, the operator's language on the console.

An event carries numbers, not prose; rendering from those numbers is what lets the
same journal be shown in another language later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drhost.i18n import Translate
from drhost_hookspecs import Category

from ..events import current_event_name
from ._messages import (
    Environment,
    TimeoutReport,
    format_elapsed,
    format_eta_extra,
    format_progress,
    format_remaining,
    format_resources,
    format_timeout,
    format_warning,
)

__all__ = ["environment_from", "render_watchdog_event", "report_from_event"]


def _identity(message: str) -> str:
    return message


def environment_from(data: Mapping[str, Any] | None) -> Environment:
    data = data or {}
    return Environment(data.get("cpu_percent"), data.get("memory_percent"), data.get("disk_io_percent"))


def report_from_event(stage: str, step_label: str, data: Mapping[str, Any]) -> TimeoutReport:
    """The :class:`TimeoutReport` a ``watchdog.timeout`` event was made from."""
    controller = data.get("controller_environment")
    category = Category(data["category"])
    return TimeoutReport(
        stage=stage, step=step_label, category=category, measurement=dict(data.get("measurement") or {}),
        configured_s=float(data["configured_s"]), elapsed_s=float(data["elapsed_s"]),
        environment=environment_from(data.get("environment")), context_path=data.get("context_path"),
        controller_environment=environment_from(controller) if category is Category.PLUGIN and controller
        else None,
        cpu_throttled=data.get("cpu_throttled") or None,
    )


def _bytes_as_mb(done: float, total: float) -> tuple[int, int, str]:
    return round(done / 1e6), round(total / 1e6), "MB"


def _eta_extra(data: Mapping[str, Any], t: Translate) -> str:
    retries_s, restart_s = data.get("retries_s"), data.get("restart_s")
    return format_eta_extra(int(data.get("retries_left") or 0), None if retries_s is None else float(retries_s),
                            bool(data.get("stage_restart")), None if restart_s is None else float(restart_s), t)


def render_watchdog_event(name: str, data: Mapping[str, Any], *, stage: str = "", step_label: str = "",
                          t: Translate = _identity) -> str | None:
    """The line (or, for a timeout, the block) for a watchdog event; None for any other event."""
    name = current_event_name(name)  # a journal of an earlier version names it as it was then
    if name in ("watchdog.progress", "watchdog.remaining"):
        line = _render_eta_line(name, data, t)
        return line + _eta_extra(data, t)
    return _render_other(name, data, stage, step_label, t)


def _render_eta_line(name: str, data: Mapping[str, Any], t: Translate) -> str:
    if name == "watchdog.progress":
        remaining = data.get("remaining_s")
        if data.get("percent") is not None:
            done, total, unit = float(data.get("done") or 0), float(data.get("total") or 0), str(data.get("unit", ""))
            if unit == "bytes":
                shown_done, shown_total, unit = _bytes_as_mb(done, total)
            else:
                shown_done, shown_total = round(done), round(total)
            return format_progress(float(data["percent"]), shown_done, shown_total, unit, remaining, t)
        return format_elapsed(float(data["elapsed_s"]), float(data["timeout_s"]), remaining, t)
    return format_remaining(data.get("remaining_s"), float(data.get("budget_left_s") or 0), t)


def _render_other(name: str, data: Mapping[str, Any], stage: str, step_label: str, t: Translate) -> str | None:
    if name == "watchdog.resources":
        env = environment_from(data.get("environment"))
        return format_resources(env.cpu_percent, env.memory_percent, env.disk_io_percent, t)
    if name == "watchdog.warning":
        return format_warning(bool(data.get("urgent")), float(data["remaining_s"]), float(data["elapsed_s"]),
                              float(data["timeout_s"]), t)
    if name == "watchdog.timeout":
        # An operation other than a step (a rollback, a probe, a lock) is named by its own label.
        if data.get("operation") and data.get("op") not in (None, "run_step"):
            step_label = str(data["operation"])
        return format_timeout(report_from_event(stage, step_label, data), t)
    return None
