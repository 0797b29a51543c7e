"""What the department plugins' tests share beyond drhost's own test support: the four plugins run together.

The target is the shipped ``drhost_target`` fixture (a disposable drproduct 1.0.0, running) and each plugin's
Context a :class:`drhost.testing.FakeContext` on it. What stays here is department-specific: a runner of all
four plugins in one process that imitates what the host does with steps (order across plugins, LIFO
compensations, plugin-wide hooks after the step-level ones) through the real plugin runtime
(``LoadedPlugin.invoke``), so that a test can reach into each plugin's state between steps -- which
``drhost_runner``, one plugin in its own isolation, does not offer -- and the rules the department plugins'
declarations follow.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from drhost.testing import DisposableTarget, FakeContext
from drhost_hookspecs import LoadedPlugin, PackageInfo, Stage, VerifyPhase

PLUGINS = ("dr-core", "dr-database", "dr-catalog", "dr-monitoring")
#: Jobs in a fresh drhost_target's catalog.
SEED_JOBS = 25


def package_info(path: Path, remote_dir: Path) -> PackageInfo:
    """The package at ``path`` as a run hands it to the plugins, to be uploaded into ``remote_dir``."""
    from drhost.packaging import read_package

    return dataclasses.replace(read_package(path).info(), remote_path=str(remote_dir / path.name))


def fake_context(root: Path, package: PackageInfo, run_id: str = "run-1",
                 config: Mapping[str, Any] | None = None) -> FakeContext:
    """A plugin's Context on the install ``root``: the target "local", its work directory next to the root."""
    return FakeContext(root, package=package, run_id=run_id, config=config, target_name="local",
                       work_dir=root.parent / "work")


@dataclass
class Harness:
    """One target, the four plugins with a context each, and the steps that ran (for LIFO compensation)."""

    root: Path
    package: PackageInfo
    plugins: dict[str, LoadedPlugin]
    ctxs: dict[str, FakeContext]
    done: list[tuple[Stage, str, str]] = field(default_factory=list)

    def ordered(self, stage: Stage) -> list[tuple[str, str]]:
        found = [(step.order, name, step.name) for name, plugin in self.plugins.items()
                 for step in plugin._steps[stage]]
        return [(name, step) for _, name, step in sorted(found)]

    def run_step(self, stage: Stage, plugin: str, step: str) -> None:
        self.done.append((stage, plugin, step))
        self.plugins[plugin].invoke("run_step", self.ctxs[plugin], stage=stage, step=step, in_process=True)

    def run_stage(self, stage: Stage, *, until: str | None = None) -> None:
        for plugin, step in self.ordered(stage):
            self.run_step(stage, plugin, step)
            if step == until:
                return

    def run_stages(self, *stages: Stage, until: str | None = None) -> None:
        for stage in stages:
            self.run_stage(stage, until=until if stage is stages[-1] else None)

    def compensate(self, stage: Stage, kind: str) -> None:
        """Step-level ``kind`` (cleanup/rollback) LIFO, then the plugin-wide hook, plugins in reverse step order."""
        ran = [(p, s) for st, p, s in self.done if st is stage]
        for plugin, step in reversed(ran):
            self.plugins[plugin].invoke(f"{kind}_step", self.ctxs[plugin], stage=stage, step=step, in_process=True)
        seen: list[str] = []
        for plugin, _ in self.ordered(stage):
            if plugin not in seen:
                seen.append(plugin)
        for plugin in reversed(seen):
            self.plugins[plugin].invoke(kind, self.ctxs[plugin], stage=stage, in_process=True)
        if kind == "cleanup":
            self.done = [d for d in self.done if d[0] is not stage]

    def verify(self, stage: Stage, phase: VerifyPhase) -> dict[str, list[str]]:
        found = {name: plugin.invoke("verify", self.ctxs[name], stage=stage, phase=phase, in_process=True)
                 for name, plugin in self.plugins.items()}
        return {name: problems for name, problems in found.items() if problems}

    def tool(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.root / "current" / "bin" / tool), "--root", str(self.root), *args],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    def tool_json(self, tool: str, *args: str) -> Any:
        return json.loads(self.tool(tool, *args).stdout)


def make_harness(root: Path, package: PackageInfo, configs: Mapping[str, Mapping[str, Any]] | None = None,
                 run_id: str = "run-1") -> Harness:
    plugins = {name: LoadedPlugin.from_entry_point(name) for name in PLUGINS}
    ctxs = {name: fake_context(root, package, run_id, (configs or {}).get(name)) for name in PLUGINS}
    return Harness(root, package, plugins, ctxs)


@pytest.fixture
def package_v2(drhost_target: DisposableTarget, tmp_path: Path) -> PackageInfo:
    """The 2.0.0 package of ``drhost_target``, to be uploaded outside its install root (``tmp_path/incoming``)."""
    return package_info(Path(drhost_target.package.local_path), tmp_path / "incoming")


@pytest.fixture
def harness(drhost_target: DisposableTarget, package_v2: PackageInfo) -> Harness:
    """The four plugins set to upgrade ``drhost_target`` to 2.0.0."""
    return make_harness(drhost_target.root, package_v2)


def with_package(package: PackageInfo, **changes: Any) -> PackageInfo:
    return dataclasses.replace(package, **changes)


PRE_UPGRADE = (Stage.PRECHECK, Stage.BACKUP, Stage.TRANSFER)


def check_declaration(entry_point: str, department: str, plugin_class: str) -> LoadedPlugin:
    """Assert the rules every department plugin's declaration must follow; return the loaded plugin."""
    import jsonschema

    plugin = LoadedPlugin.from_entry_point(entry_point)
    info = plugin.info
    assert (info.name, info.department, str(info.plugin_class)) == (entry_point, department, plugin_class)
    schema = plugin.config_schema()
    assert schema is not None
    jsonschema.Draft202012Validator.check_schema(schema)
    assert not jsonschema.Draft202012Validator(schema).is_valid({"no_such_key": 1})
    for stage, steps in plugin.describe()["steps"].items():
        for step in steps:
            where = f"{entry_point} {stage}/{step['name']}"
            assert step["timeout_key"] == f"{stage}.{step['name']}", where
            assert step["description"], where
            if not step["retryable"]:
                assert step["has_cleanup"] and step["has_rollback"], where
    return plugin
