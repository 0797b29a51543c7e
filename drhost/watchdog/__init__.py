"""Watchdog messages: the timeout report, progress and warning lines, and their translations."""

from drhost.i18n import JsonTranslations, resolve_language, translations, translator
from drhost.watchdog._messages import (
    CATEGORIES,
    Environment,
    TimeoutReport,
    as_event_fields,
    exceeded_s,
    format_elapsed,
    format_environment,
    format_eta_extra,
    format_progress,
    format_remaining,
    format_resources,
    format_size,
    format_timeout,
    format_warning,
    human_duration,
    reason_text,
    short_duration,
    suggestion,
)
from drhost.watchdog._render import render_watchdog_event, report_from_event

from ._budgets import BUDGET_KEYS, budget_key, budget_s
from ._collect import collect_controller_context, collect_target_context
from ._history import StepHistory, eta_extra, remaining_for, remaining_s
from ._resources import sample_controller, sample_target
from ._watchdog import StepWatch, Watchdog, WatchdogSettings

__all__ = [
    "BUDGET_KEYS",
    "CATEGORIES",
    "Environment",
    "JsonTranslations",
    "StepHistory",
    "StepWatch",
    "TimeoutReport",
    "Watchdog",
    "WatchdogSettings",
    "as_event_fields",
    "budget_key",
    "budget_s",
    "collect_controller_context",
    "collect_target_context",
    "eta_extra",
    "exceeded_s",
    "format_elapsed",
    "format_environment",
    "format_eta_extra",
    "format_progress",
    "format_remaining",
    "format_resources",
    "format_size",
    "format_timeout",
    "format_warning",
    "human_duration",
    "reason_text",
    "remaining_for",
    "remaining_s",
    "render_watchdog_event",
    "report_from_event",
    "resolve_language",
    "sample_controller",
    "sample_target",
    "short_duration",
    "suggestion",
    "translations",
    "translator",
]
