"""The plan: every target goes through the stages; in each, the ordered steps of every plugin."""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from drhost_hookspecs import Category, PluginClass, Stage

from .errors import RefusedError, StateError
from .i18n import Translate
from .plugins import Registry
from .policy import ISOLATIONS, Isolation, one_of
from .state import RunState


@dataclass(frozen=True)
class PlannedStep:
    """A step as it will run: its plugin, class, isolation and the timeout in force."""

    stage: Stage
    name: str
    plugin: str
    plugin_class: PluginClass
    isolation: Isolation
    retryable: bool
    timeout_key: str
    timeout_s: float
    declared_timeout_s: float
    category: Category
    order: int
    has_cleanup: bool
    has_rollback: bool
    description: str = ""

    @functools.cached_property
    def key(self) -> str:
        # Asked for many times a step (state, history, estimates of the steps after it): made once.
        return f"{self.stage.value}/{self.plugin}/{self.name}"

    @property
    def label(self) -> str:
        return f"[{self.stage.value}] {self.name} ({self.plugin})"

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage.value,
            "name": self.name,
            "plugin": self.plugin,
            "class": self.plugin_class.value,
            "isolation": self.isolation,
            "retryable": self.retryable,
            "timeout_key": self.timeout_key,
            "timeout_s": self.timeout_s,
            "declared_timeout_s": self.declared_timeout_s,
            "category": self.category.value,
            "order": self.order,
            "has_cleanup": self.has_cleanup,
            "has_rollback": self.has_rollback,
            "description": self.description,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlannedStep:
        return cls(
            stage=Stage(data["stage"]), name=data["name"], plugin=data["plugin"],
            plugin_class=PluginClass(data["class"]), isolation=one_of(data["isolation"], ISOLATIONS, "plan: isolation"),
            retryable=data["retryable"],
            timeout_key=data["timeout_key"], timeout_s=float(data["timeout_s"]),
            declared_timeout_s=float(data["declared_timeout_s"]), category=Category(data["category"]),
            order=int(data["order"]), has_cleanup=data["has_cleanup"], has_rollback=data["has_rollback"],
            description=data.get("description", ""),
        )


@dataclass(frozen=True)
class PluginEntry:
    """A plugin taking part in the run, as recorded in the plan."""

    name: str
    plugin_class: PluginClass
    isolation: Isolation
    version: str
    department: str
    hooks: tuple[str, ...]
    #: The entry point's value (``module[:attr]``): workers import it without scanning metadata.
    value: str = ""
    #: PluginInfo.paths / PluginInfo.commands as discovered: the Context's confinement for this run.
    paths: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "class": self.plugin_class.value, "isolation": self.isolation,
                "version": self.version, "department": self.department, "hooks": list(self.hooks),
                "value": self.value, "paths": list(self.paths), "commands": list(self.commands)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PluginEntry:
        return cls(data["name"], PluginClass(data["class"]), one_of(data["isolation"], ISOLATIONS, "plan: isolation"),
                   data["version"], data["department"], tuple(data["hooks"]), str(data.get("value", "")),
                   tuple(str(p) for p in data.get("paths", ())), tuple(str(c) for c in data.get("commands", ())))


@dataclass(frozen=True)
class Plan:
    steps: tuple[PlannedStep, ...]
    plugins: tuple[PluginEntry, ...]

    def stage_steps(self, stage: Stage) -> list[PlannedStep]:
        return list(self._by_stage.get(stage, ()))

    def find_step(self, stage: Stage, plugin: str, name: str) -> PlannedStep | None:
        return self._by_name.get((stage, plugin, name))

    # Looked up several times a step (its call, its watch, its ETA): built once, since a plan never changes.
    @functools.cached_property
    def _by_stage(self) -> dict[Stage, tuple[PlannedStep, ...]]:
        return {stage: tuple(step for step in self.steps if step.stage is stage) for stage in Stage}

    @functools.cached_property
    def _by_name(self) -> dict[tuple[Stage, str, str], PlannedStep]:
        found: dict[tuple[Stage, str, str], PlannedStep] = {}
        for step in self.steps:
            found.setdefault((step.stage, step.plugin, step.name), step)  # the first, as a scan would find
        return found

    def plugin(self, name: str) -> PluginEntry:
        for entry in self.plugins:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def plugins_with(self, hook: str) -> list[PluginEntry]:
        return [p for p in self.plugins if hook in p.hooks]

    def to_json(self) -> dict[str, Any]:
        return {"plugins": [p.to_json() for p in self.plugins], "steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        return cls(tuple(PlannedStep.from_json(s) for s in data["steps"]),
                   tuple(PluginEntry.from_json(p) for p in data["plugins"]))


def _sort_key(step: PlannedStep) -> tuple[int, int, str, str]:
    return (Stage.ordered().index(step.stage), step.order, step.plugin, step.name)


def build_plan(registry: Registry, config: Mapping[str, Any]) -> Plan:
    """Order every usable plugin's steps; refuse when a plugin the run needs is broken."""
    broken = registry.broken()
    if broken:
        lines = "; ".join(f"{r.name}: {r.error}" for r in broken)
        raise RefusedError.worded("plugin(s) needed by this run are broken: {plugins}. Fix the plugin, or leave it "
                                  "out of the run with -p no:NAME (or DRHOST_LOAD_PLUGINS).", plugins=lines)
    usable = registry.usable()
    if not usable:
        raise RefusedError.worded("no plugins to run: none installed in group 'drhost.plugins', or all were "
                                  "excluded")
    timeouts: Mapping[str, float] = config["timeouts"]
    steps: list[PlannedStep] = []
    plugins: list[PluginEntry] = []
    for record in usable:
        assert record.plugin_class is not None
        where = f"classes.{record.plugin_class.value}.isolation"
        isolation = one_of(config["classes"][record.plugin_class.value]["isolation"], ISOLATIONS, where)
        plugins.append(PluginEntry(record.name, record.plugin_class, isolation, record.version,
                                   record.department, record.hooks, record.value, record.paths, record.commands))
        for stage, described in record.steps.items():
            for d in described:
                steps.append(PlannedStep(
                    stage=stage, name=d.name, plugin=record.name, plugin_class=record.plugin_class,
                    isolation=isolation, retryable=d.retryable, timeout_key=d.timeout_key,
                    timeout_s=float(timeouts.get(d.timeout_key, d.timeout_s)), declared_timeout_s=d.timeout_s,
                    category=d.category, order=d.order, has_cleanup=d.has_cleanup, has_rollback=d.has_rollback,
                    description=d.description,
                ))
    return Plan(tuple(sorted(steps, key=_sort_key)), tuple(plugins))


def unknown_timeout_keys(plan: Plan, config: Mapping[str, Any]) -> list[str]:
    """Timeout keys set by the operator that no step of the plan uses (likely a typo)."""
    used = {step.timeout_key for step in plan.steps}
    return sorted(set(config["timeouts"]) - used)


def _width(text: str) -> int:
    """Columns ``text`` takes on a terminal: a wide (CJK) character takes two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def format_plan(plan: Plan, t: Translate = lambda message: message) -> Iterable[str]:
    """The plan as aligned text lines, headers in the language of ``t``."""
    header = (t("stage"), t("order"), t("step"), t("plugin"), t("class"), t("isolation"), t("retryable"),
              t("timeout"), t("category"))
    yes, no = t("yes"), t("no")
    rows = [header] + [
        (s.stage.value, str(s.order), s.name, s.plugin, s.plugin_class.value, s.isolation,
         yes if s.retryable else no, f"{s.timeout_s:g}s", s.category.value)
        for s in plan.steps
    ]
    widths = [max(_width(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        yield "  ".join(cell + " " * (width - _width(cell))
                        for cell, width in zip(row, widths, strict=True)).rstrip()


def recorded_plan(state: RunState) -> Plan:
    """The plan a run recorded when it was created; StateError when the record cannot be read as one."""
    try:
        return Plan.from_json(state.get("plan"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError.worded("{path}: plan: not a drhost plan ({exception}: {why})",
                                path=state.path, exception=type(exc).__name__, why=exc) from None
