"""Plugin discovery: entry points, identities, guarded describes, allow/block lists, the lock, the listing.

Every plugin is described (imported) in a sandbox of its own — a container or a confined process,
never the host — so that a plugin that crashes, hangs, spawns daemons or eats memory at import is
listed as broken with the reason and never touches the host (``_describe.py``). Only core plugins
are later imported into the host, for a run. Before any plugin code runs, each entry point is
identified from its files alone (``_digest.py``): two distributions offering one name are both
broken, and a plugin lock decides which sandbox class a plugin is trusted with (``_lock.py``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from drhost_hookspecs import ENTRY_POINT_GROUP, HOOK_API_VERSION, PluginClass, PluginInfo, Stage, StepDescription

from ._cache import DescriptionCache
from ._describe import Described, DescribeSettings, describe, remove_orphaned_cgroups
from ._digest import Installed, identify
from ._lock import LockEntry, PluginLock, duplicate_error, find_lock, lock_status, matches

ALLOW_ENV = "DRHOST_LOAD_PLUGINS"

#: status -> whether the plugin takes part in a run
STATUSES = {"ok": True, "broken": False, "blocked": False, "not_allowed": False}


class _FromConfig:
    """The default of ``discover(lock=…)``: the lock the config names (or the state root's)."""


FROM_CONFIG = _FromConfig()


@dataclass(frozen=True)
class PluginRecord:
    """One discovered plugin: who it is, what it offers, and whether it can be used."""

    name: str
    value: str
    distribution: str
    version: str
    status: str
    error: str = ""
    department: str = ""
    plugin_class: PluginClass | None = None
    api_version: int | None = None
    hooks: tuple[str, ...] = ()
    config_schema: Mapping[str, Any] | None = None
    steps: Mapping[Stage, tuple[StepDescription, ...]] = field(default_factory=dict)
    #: PluginInfo.paths and PluginInfo.commands: what the Context lets it touch and (third_party) run.
    paths: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    #: sha256 over the files the distribution installed (the lock's digest); "" when not identified.
    digest: str = ""
    #: Where it was described: "container" or "process"; None when it was not (blocked, duplicate, no sandbox).
    described_in: str | None = None
    #: The description came from the cache (no worker was started).
    cached: bool = False
    #: Against the plugin lock: "ok", "changed: …", "not in lock" or "no lock".
    lock: str = "no lock"
    #: .pth files its distribution installs (they run at every Python start), one sentence each.
    warnings: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return self.status == "ok"

    def to_json(self, isolation: str | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "entry_point": self.value,
            "distribution": self.distribution,
            "version": self.version,
            "department": self.department,
            "class": self.plugin_class.value if self.plugin_class else None,
            "isolation": isolation,
            "status": self.status,
            "error": self.error or None,
            "api_version": self.api_version,
            "hooks": list(self.hooks),
            "steps": {stage.value: [s.name for s in steps] for stage, steps in self.steps.items() if steps},
            "paths": list(self.paths),
            "commands": list(self.commands),
            "digest": self.digest or None,
            "described_in": self.described_in,
            "cached": self.cached,
            "lock": self.lock,
            "warnings": list(self.warnings),
        }


def _allow_list() -> set[str] | None:
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _record(installed: Installed, status: str, error: str = "", **extra: Any) -> PluginRecord:
    return PluginRecord(name=installed.name, value=installed.value, distribution=installed.distribution,
                        version=installed.version, status=status, error=error, digest=installed.digest, **extra)


def _from_description(installed: Installed, description: Mapping[str, Any], **extra: Any) -> PluginRecord:
    info = description["info"]
    if info["name"] != installed.name:
        return _record(installed, "broken", f"drhost_plugin_info names the plugin {info['name']!r}, "
                                            f"but its entry point is {installed.name!r}; they must match", **extra)
    steps = {
        Stage(stage): tuple(StepDescription.from_json(s) for s in items)
        for stage, items in description["steps"].items()
    }

    # Validated again here: the declaration comes from a sandboxed worker or the cache (PluginDefinitionError: broken).
    declared = PluginInfo.from_json(info)
    return _record(
        installed, "ok", department=str(info["department"]), plugin_class=PluginClass(info["plugin_class"]),
        api_version=int(info["api_version"]), hooks=tuple(description["hooks"]),
        config_schema=description.get("config_schema"), steps=steps,
        paths=declared.paths, commands=declared.commands, **extra,
    )


def _described(installed: Installed, result: Described, entry: LockEntry | None,
               lock: PluginLock | None) -> PluginRecord:
    extra: dict[str, Any] = {"described_in": result.described_in, "cached": result.cached,
                             "warnings": installed.pth_warnings}
    if result.description is None:
        return _record(installed, "broken", result.error, lock=lock_status(lock, installed, None), **extra)
    try:
        record = _from_description(installed, result.description, **extra)
    except Exception as exc:  # one broken plugin never bricks the tool
        return _record(installed, "broken", str(exc) or type(exc).__name__, lock=lock_status(lock, installed, None),
                       **extra)
    declared = record.plugin_class.value if record.plugin_class else None
    status = lock_status(lock, installed, declared)
    if record.usable and entry is not None and lock is not None and declared != entry.plugin_class:
        # The lock vouches for a class; a plugin that now claims another is not what was approved.
        return _record(installed, "broken", f"declares class {declared}, but the plugin lock {lock.path} names it "
                                            f"{entry.plugin_class}; re-run 'drhost plugins lock' if the change is "
                                            f"intended", plugin_class=record.plugin_class, lock=status, **extra)
    return dataclasses.replace(record, lock=status)


class Registry:
    """The plugins drhost found, each with its status; broken ones included."""

    def __init__(self, records: Iterable[PluginRecord], *, lock: PluginLock | None = None,
                 notes: Iterable[str] = (), missing: Iterable[LockEntry] = ()) -> None:
        #: Every record, in name order; a name offered by two distributions has two records here.
        self.all = sorted(records, key=lambda r: (r.name, r.distribution))
        #: One record per name (of a duplicated name, the first: broken like the other).
        self.records: dict[str, PluginRecord] = {}
        for record in self.all:
            self.records.setdefault(record.name, record)
        #: The plugin lock in force during discovery, if any.
        self.lock = lock
        #: What the operator should know about discovery as a whole (a sandbox that stood in for another).
        self.notes = tuple(dict.fromkeys(notes))
        #: Plugins the lock names that are not installed.
        self.missing = tuple(missing)

    def usable(self) -> list[PluginRecord]:
        return [r for r in sorted(self.records.values(), key=lambda r: r.name) if r.usable]

    def broken(self) -> list[PluginRecord]:
        return [r for r in self.records.values() if r.status == "broken"]

    def get(self, name: str) -> PluginRecord:
        return self.records[name]

    def offers(self, name: str) -> list[PluginRecord]:
        """Every record of ``name``: more than one when several distributions offer it."""
        return [r for r in self.all if r.name == name]


def installed_plugins() -> dict[str, list[Installed]]:
    """Every entry point of group ``drhost.plugins``, identified from its files (nothing imported), by name."""
    found: dict[str, list[Installed]] = {}
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        found.setdefault(ep.name, []).append(identify(ep))
    return found


def discover(blocked: Iterable[str] = (), logger: logging.Logger | None = None, *,
             config: Mapping[str, Any] | None = None, lock: PluginLock | _FromConfig | None = FROM_CONFIG,
             use_cache: bool = True) -> Registry:
    """Find every plugin of group ``drhost.plugins`` and describe each in a sandbox (or from the cache).

    ``config``: the merged config (default: the built-in defaults). ``lock``: the plugin lock that
    decides each plugin's describe class and its lock status (default: the one the config names, or
    STATE_ROOT/plugins.lock if it exists; None: no lock). Raises PluginLockError for a lock file that
    cannot be read.
    """
    if config is None:
        from ..config import load_config

        config = load_config().data
    log = logger or logging.getLogger("drhost.plugins")
    in_force = find_lock(config) if isinstance(lock, _FromConfig) else lock
    settings = DescribeSettings.from_config(config, use_cache=use_cache)
    cache = DescriptionCache(enabled=settings.use_cache)
    allow = _allow_list()
    blocked_set = set(blocked)
    records: list[PluginRecord] = []
    to_describe: list[tuple[Installed, LockEntry | None]] = []
    plugins = installed_plugins()
    for name, offers in plugins.items():
        entry = in_force.get(name) if in_force is not None else None
        for installed in offers:
            warnings = installed.pth_warnings
            status = lock_status(in_force, installed, None)
            contested = f" ({duplicate_error(name, offers)})" if len(offers) > 1 else ""
            if name in blocked_set:
                records.append(_record(installed, "blocked", f"blocked with -p no:{name}{contested}", lock=status,
                                       warnings=warnings))
            elif allow is not None and name not in allow:
                records.append(_record(installed, "not_allowed", f"not in {ALLOW_ENV}{contested}", lock=status,
                                       warnings=warnings))
            elif contested:
                # Nobody's code runs for a contested name: either could be the impostor. A run that needs the
                # name refuses (broken); one that leaves it out (-p no:NAME) does not need it.
                records.append(_record(installed, "broken", duplicate_error(name, offers), lock=status,
                                       warnings=warnings))
            else:
                to_describe.append((installed, entry))
    notes: list[str] = []
    if to_describe:
        remove_orphaned_cgroups()
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(to_describe)))) as pool:
            futures = []
            for installed, entry in to_describe:
                # The lock's class only for exactly the approved files; anything else is described as untrusted.
                trusted = PluginClass(entry.plugin_class) if entry is not None and matches(entry, installed) \
                    else None
                futures.append((installed, entry, pool.submit(describe, installed, trusted, settings, cache, log)))
            for installed, entry, future in futures:
                try:
                    result = future.result()
                except Exception as exc:  # one broken plugin never bricks the tool
                    result = Described(None, error=f"{type(exc).__name__}: {exc}")
                if result.note:
                    notes.append(result.note)
                records.append(_described(installed, result, entry, in_force))
    missing = [e for n, e in sorted((in_force.entries if in_force else {}).items()) if n not in plugins]
    return Registry(records, lock=in_force, notes=notes, missing=missing)


__all__ = ["ALLOW_ENV", "FROM_CONFIG", "HOOK_API_VERSION", "PluginRecord", "Registry", "discover",
           "installed_plugins"]
