"""Watchdog messages: the timeout report, progress and warning lines, and their translations."""

from drhost.watchdog._i18n import JsonTranslations, resolve_language, translations, translator
from drhost.watchdog._messages import (
    CATEGORIES,
    Category,
    Environment,
    TimeoutReport,
    as_event_fields,
    exceeded_s,
    format_environment,
    format_progress,
    format_resources,
    format_size,
    format_timeout,
    format_warning,
    human_duration,
    reason_text,
    short_duration,
    suggestion,
)

__all__ = [
    "CATEGORIES",
    "Category",
    "Environment",
    "JsonTranslations",
    "TimeoutReport",
    "as_event_fields",
    "exceeded_s",
    "format_environment",
    "format_progress",
    "format_resources",
    "format_size",
    "format_timeout",
    "format_warning",
    "human_duration",
    "reason_text",
    "resolve_language",
    "short_duration",
    "suggestion",
    "translations",
    "translator",
]
