"""One plugin, its own plugin manager: the runtime both the host and workers use."""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from typing import Any, Final, Literal, get_args

import pluggy

from . import _spec
from ._context import Context
from ._types import HOOK_API_VERSION, PluginInfo, Stage, Step, StepDescription, VerifyPhase

#: The entry-point group a plugin distribution publishes its plugin in.
ENTRY_POINT_GROUP = "drhost.plugins"

#: The operations the host can ask of a plugin: the values of ``LoadedPlugin.invoke``'s ``op``. A Literal, not an
#: Enum: the name crosses the worker protocol as it is.
OperationName = Literal[
    "describe",
    "run_step",
    "cleanup_step",
    "rollback_step",
    "cleanup",
    "rollback",
    "verify",
    "collect_context",
    "installed_version",
    "manual_rollback_steps",
]
#: Every ``OperationName``, in the order the hookspecs list them.
OPERATIONS: Final[tuple[OperationName, ...]] = get_args(OperationName)


def operation_name(value: object) -> OperationName:
    """``value`` (a worker's ``call`` message names it) as an operation; ValueError for any other."""
    for name in OPERATIONS:
        if value == name:
            return name
    raise ValueError(f"unknown operation {value!r}; expected one of {', '.join(OPERATIONS)}")


class PluginDefinitionError(Exception):
    """The plugin is not usable as written. Carries the plugin and hook it concerns."""

    def __init__(self, plugin: str, hook: str, message: str) -> None:
        super().__init__(f"plugin {plugin!r}, {hook}: {message}")
        self.plugin = plugin
        self.hook = hook
        self.message = message


def load_entry_point(name: str) -> object:
    """Import the object behind entry point ``name`` in group ``drhost.plugins``."""
    matches = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not matches:
        raise LookupError(f"no entry point {name!r} in group {ENTRY_POINT_GROUP!r}")
    return matches[0].load()


class LoadedPlugin:
    """A plugin registered alone in its own pluggy manager.

    Hooks are called per plugin, never as one pluggy call across all plugins:
    pluggy stops at the first exception, which is exactly wrong for cleanup and
    rollback, and per-class policy needs per-plugin results.
    """

    def __init__(self, entry_point: str, obj: object) -> None:
        self.entry_point = entry_point
        self._pm = pluggy.PluginManager(_spec.PROJECT_NAME)
        self._pm.add_hookspecs(_spec)
        try:
            self._pm.register(obj, name=entry_point)
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginDefinitionError(entry_point, "register", str(exc)) from exc
        self.info = self._load_info()
        self._steps: dict[Stage, list[Step]] = {stage: self._collect_steps(stage) for stage in Stage.ordered()}

    @classmethod
    def from_entry_point(cls, name: str) -> LoadedPlugin:
        return cls(name, load_entry_point(name))

    @classmethod
    def from_value(cls, name: str, value: str) -> LoadedPlugin:
        """Load plugin ``name`` from its entry point's value (``module`` or ``module:attr``).

        Skips the scan of every installed distribution's metadata, which costs a worker
        launch tens of milliseconds; the host already knows the value.
        """
        module_name, _, attr = value.partition(":")
        obj: object = importlib.import_module(module_name.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
        return cls(name, obj)

    def _load_info(self) -> PluginInfo:
        info = self._pm.hook.drhost_plugin_info()
        if not isinstance(info, PluginInfo):
            raise PluginDefinitionError(
                self.entry_point, "drhost_plugin_info", f"expected a PluginInfo, found {type(info).__name__}"
            )
        if info.api_version != HOOK_API_VERSION:
            raise PluginDefinitionError(
                self.entry_point,
                "drhost_plugin_info",
                f"written for hook API {info.api_version}, this drhost serves {HOOK_API_VERSION}",
            )
        return info

    def _collect_steps(self, stage: Stage) -> list[Step]:
        steps: list[Step] = []

        def register(step: Step) -> None:
            if not isinstance(step, Step):
                raise PluginDefinitionError(
                    self.entry_point, "drhost_stage_steps", f"register() takes a Step, got {type(step).__name__}"
                )
            if any(s.name == step.name for s in steps):
                raise PluginDefinitionError(
                    self.entry_point, "drhost_stage_steps", f"step {step.name!r} registered twice in {stage}"
                )
            steps.append(step)

        self._pm.hook.drhost_stage_steps(stage=stage, register=register)
        return steps

    @property
    def hooks(self) -> list[str]:
        """Names of the hooks this plugin implements."""
        hook = self._pm.hook
        return sorted(name for name in dir(hook) if not name.startswith("_") and getattr(hook, name).get_hookimpls())

    def config_schema(self) -> dict[str, Any] | None:
        schema = self._pm.hook.drhost_config_schema()
        if schema is not None and not isinstance(schema, dict):
            raise PluginDefinitionError(
                self.entry_point, "drhost_config_schema", f"expected a dict or None, found {type(schema).__name__}"
            )
        return schema

    def describe(self) -> dict[str, Any]:
        """JSON-safe description: info, hooks, config schema and steps per stage."""
        return {
            "entry_point": self.entry_point,
            "info": self.info.to_json(),
            "hooks": self.hooks,
            "config_schema": self.config_schema(),
            "steps": {
                stage.value: [StepDescription.of(stage, step).to_json() for step in steps]
                for stage, steps in self._steps.items()
            },
        }

    def step(self, stage: Stage, name: str) -> Step:
        for step in self._steps[stage]:
            if step.name == name:
                return step
        raise PluginDefinitionError(self.entry_point, "drhost_stage_steps", f"no step {name!r} in stage {stage}")

    def invoke(
        self,
        op: OperationName,
        ctx: Context,
        *,
        stage: Stage | None = None,
        step: str | None = None,
        phase: VerifyPhase | None = None,
        in_process: bool,
        memory_limit_bytes: int | None = None,
    ) -> Any:
        """Run one operation; exceptions propagate to the caller (runner or worker)."""
        if op == "run_step":
            assert stage is not None and step is not None
            target_step = self.step(stage, step)
            # Fault injection is the runtime's: imported here so that an author's ``import drhost_hookspecs``
            # never loads the worker runtime.
            from ._runtime import inject

            inject(ctx, step, in_process=in_process, memory_limit_bytes=memory_limit_bytes)
            target_step.run(ctx)
            return None
        if op in ("cleanup_step", "rollback_step"):
            assert stage is not None and step is not None
            target_step = self.step(stage, step)
            compensation: Callable[[Context], None] | None = (
                target_step.cleanup if op == "cleanup_step" else target_step.rollback
            )
            if compensation is not None:
                compensation(ctx)
            return None
        if op == "cleanup":
            self._pm.hook.drhost_cleanup(stage=stage, ctx=ctx)
            return None
        if op == "rollback":
            self._pm.hook.drhost_rollback(stage=stage, ctx=ctx)
            return None
        if op == "verify":
            problems: list[str] = []
            for found in self._pm.hook.drhost_verify(stage=stage, phase=phase, ctx=ctx):
                problems.extend(str(p) for p in (found or []))
            return problems
        if op == "collect_context":
            merged: dict[str, Any] = {}
            for found in self._pm.hook.drhost_collect_context(ctx=ctx):
                merged.update(found or {})
            return merged
        if op == "manual_rollback_steps":
            steps: list[str] = []
            for found in self._pm.hook.drhost_manual_rollback_steps(stage=stage, ctx=ctx):
                steps.extend(str(item) for item in (found or []))
            return steps
        if op == "installed_version":
            version = self._pm.hook.drhost_installed_version(ctx=ctx)
            return None if version is None else str(version)
        if op == "describe":
            return self.describe()
        raise ValueError(f"unknown operation {op!r}; expected one of {', '.join(OPERATIONS)}")
