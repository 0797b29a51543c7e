"""Plugin discovery: entry points, guarded loads, allow/block lists, and the listing.

Every plugin is first described in a worker process of its own, so that a plugin
that crashes, hangs or misbehaves at import is listed as broken with its error and
never takes the host down. Only core plugins are later imported into the host.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from drhost_hookspecs import ENTRY_POINT_GROUP, HOOK_API_VERSION, PluginClass, PluginInfo, Stage, StepDescription

from ..supervisor import RlimitSandbox, WorkerRunner

ALLOW_ENV = "DRHOST_LOAD_PLUGINS"
_DESCRIBE_TIMEOUT_S = 60.0
_DESCRIBE_MESSAGE_LIMIT = 4 * 1024 * 1024
_DESCRIBE_LIMITS = {"memory_bytes": 1024 * 1024 * 1024, "nofile": 256, "core_bytes": 0}

#: status -> whether the plugin takes part in a run
STATUSES = {"ok": True, "broken": False, "blocked": False, "not_allowed": False}


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
        }


def _allow_list() -> set[str] | None:
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _describe(ep: importlib.metadata.EntryPoint, logger: logging.Logger) -> dict[str, Any]:
    sandbox = RlimitSandbox(_DESCRIBE_LIMITS, message_limit=_DESCRIBE_MESSAGE_LIMIT)
    runner = WorkerRunner(ep.name, sandbox=sandbox, logger=logger.getChild(ep.name),
                          message_limit=_DESCRIBE_MESSAGE_LIMIT)
    try:
        outcome = runner.call("describe", None, timeout_s=_DESCRIBE_TIMEOUT_S)
    finally:
        runner.close()
    if not outcome.ok:
        raise RuntimeError(outcome.message)
    result: dict[str, Any] = outcome.result
    return result


def _record(ep: importlib.metadata.EntryPoint, status: str, error: str = "", **extra: Any) -> PluginRecord:
    dist = getattr(ep, "dist", None)
    return PluginRecord(
        name=ep.name, value=ep.value, distribution=dist.name if dist else "?",
        version=dist.version if dist else "?", status=status, error=error, **extra,
    )


def _from_description(ep: importlib.metadata.EntryPoint, description: Mapping[str, Any]) -> PluginRecord:
    info = description["info"]
    if info["name"] != ep.name:
        return _record(ep, "broken", f"drhost_plugin_info names the plugin {info['name']!r}, "
                                     f"but its entry point is {ep.name!r}; they must match")
    steps = {
        Stage(stage): tuple(StepDescription.from_json(s) for s in items)
        for stage, items in description["steps"].items()
    }

    # Validated again here: the declaration comes from a worker process (PluginDefinitionError: broken).
    declared = PluginInfo.from_json(info)
    return _record(
        ep, "ok", department=str(info["department"]), plugin_class=PluginClass(info["plugin_class"]),
        api_version=int(info["api_version"]), hooks=tuple(description["hooks"]),
        config_schema=description.get("config_schema"), steps=steps,
        paths=declared.paths, commands=declared.commands,
    )


class Registry:
    """The plugins drhost found, each with its status; broken ones included."""

    def __init__(self, records: Iterable[PluginRecord]) -> None:
        self.records = {record.name: record for record in records}

    def usable(self) -> list[PluginRecord]:
        return [r for r in sorted(self.records.values(), key=lambda r: r.name) if r.usable]

    def broken(self) -> list[PluginRecord]:
        return [r for r in self.records.values() if r.status == "broken"]

    def get(self, name: str) -> PluginRecord:
        return self.records[name]


def discover(blocked: Iterable[str] = (), logger: logging.Logger | None = None) -> Registry:
    """Find every plugin of group ``drhost.plugins`` and describe it in its own worker."""
    log = logger or logging.getLogger("drhost.plugins")
    allow = _allow_list()
    blocked_set = set(blocked)
    eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    records: list[PluginRecord] = []
    to_describe = []
    seen: set[str] = set()
    for ep in eps:
        if ep.name in seen:
            records.append(_record(ep, "broken", f"a second distribution also provides plugin {ep.name!r}"))
            continue
        seen.add(ep.name)
        if ep.name in blocked_set:
            records.append(_record(ep, "blocked", "blocked with -p no:" + ep.name))
        elif allow is not None and ep.name not in allow:
            records.append(_record(ep, "not_allowed", f"not in {ALLOW_ENV}"))
        else:
            to_describe.append(ep)
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(to_describe)))) as pool:
        futures = {ep.name: (ep, pool.submit(_describe, ep, log)) for ep in to_describe}
        for ep, future in futures.values():
            try:
                records.append(_from_description(ep, future.result()))
            except Exception as exc:  # one broken plugin never bricks the tool
                records.append(_record(ep, "broken", str(exc)))
    return Registry(records)


__all__ = ["ALLOW_ENV", "HOOK_API_VERSION", "PluginRecord", "Registry", "discover"]
