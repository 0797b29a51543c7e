"""The budgets of the operations that are not steps, from the ``[watchdog]`` section.

A step's budget is its ``[timeouts]`` key (or its declared timeout); its cleanup and rollback have
the same budget. Every other operation drhost runs on a target has one of these keys, so that each
deadline is configured, watched and explained like a step's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["BUDGET_KEYS", "budget_key", "budget_s"]

#: operation kind -> (``[watchdog]`` key, built-in default in seconds)
BUDGET_KEYS: Mapping[str, tuple[str, float]] = {
    "verify": ("verify_timeout_s", 120.0),
    "cleanup": ("cleanup_timeout_s", 120.0),
    "rollback": ("rollback_hook_timeout_s", 300.0),
    "manual_rollback_steps": ("rollback_hook_timeout_s", 300.0),
    "installed_version": ("version_probe_timeout_s", 60.0),
    "collect_context": ("context_timeout_s", 20.0),
    "lock": ("lock_timeout_s", 60.0),
}


def budget_key(kind: str) -> str:
    """The full configuration key of ``kind``'s budget (``watchdog.verify_timeout_s``)."""
    return f"watchdog.{BUDGET_KEYS[kind][0]}"


def budget_s(config: Mapping[str, Any], kind: str) -> float:
    """The configured budget of an operation of ``kind``; the built-in default when the key is not set."""
    key, default = BUDGET_KEYS[kind]
    return float(config.get("watchdog", {}).get(key, default))
