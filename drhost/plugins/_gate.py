"""What a run requires of its plugins: one distribution per name, and — with a plugin lock — exactly the lock.

``upgrade`` and ``plan`` check the discovered registry (``check_registry``): every locked plugin
installed, nothing extra (unless blocked with ``-p no:NAME``), and each one the same distribution,
version, entry point, file digest and class as locked. ``resume`` and ``rollback`` check the run's
own plugins (``check_run``) from their files alone, without describing anything: those are the
only plugins such a run loads, so an extra plugin installed since is not loaded by it and is left to
the next ``upgrade``/``plan`` to refuse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from drhost_hookspecs import PluginClass

from ..errors import RefusedError
from ._lock import PluginLock, differences, duplicate_error, find_lock, refusal
from ._registry import Registry, installed_plugins

_IDLE = ("blocked", "not_allowed")


def lock_problems(registry: Registry, lock: PluginLock, blocked: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(every difference between the registry and ``lock``, the extra plugins' names)."""
    blocked_set = set(blocked)
    problems: list[str] = []
    extras: list[str] = []
    for gone in registry.missing:
        if gone.name not in blocked_set:
            problems.append(f"{gone.name}: locked ({gone.distribution} {gone.version}) but not installed")
    for name in sorted({r.name for r in registry.all}):
        offers = registry.offers(name)
        if all(r.status in _IDLE for r in offers):
            continue
        if len(offers) > 1:
            listed = ", ".join(f"{r.distribution} {r.version}" for r in offers)
            problems.append(f"{name}: offered by {len(offers)} distributions ({listed})")
            continue
        record = offers[0]
        entry = lock.get(name)
        if entry is None:
            extras.append(name)
            problems.append(f"extra plugin {name!r} (dist {record.distribution} {record.version}) is not in the lock")
            continue
        found = differences(entry, record, record.plugin_class.value if record.plugin_class else None)
        if found:
            problems.append(f"{name}: {', '.join(found)}")
    return problems, extras


def check_registry(registry: Registry, blocked: Iterable[str] = ()) -> None:
    """Refuse (exit 7) a run whose plugins are not exactly the lock's, naming every difference."""
    if registry.lock is None:
        return
    problems, extras = lock_problems(registry, registry.lock, blocked)
    if problems:
        raise RefusedError(refusal(registry.lock, problems, extras))


def check_run(plugins: Iterable[tuple[str, PluginClass]], config: Mapping[str, Any]) -> None:
    """Refuse (exit 7) to resume or roll back with a plugin of the run offered twice, or not as locked."""
    lock = find_lock(config)
    installed = installed_plugins()
    contested: list[str] = []
    problems: list[str] = []
    for name, plugin_class in plugins:
        offers = installed.get(name, [])
        if len(offers) > 1:
            contested.append(duplicate_error(name, offers))
            continue
        if lock is None or not offers:
            continue  # not installed: the run's own presence check names it
        entry = lock.get(name)
        if entry is None:
            problems.append(f"{name} (dist {offers[0].label}) is not in the lock")
            continue
        found = differences(entry, offers[0], plugin_class.value)
        if found:
            problems.append(f"{name}: {', '.join(found)}")
    if contested:
        raise RefusedError("; ".join(contested) + " — this run needs it: uninstall the distribution that should "
                                                  "not provide it")
    if problems:
        assert lock is not None
        raise RefusedError(refusal(lock, problems, []))
