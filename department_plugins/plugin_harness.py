"""Test support for the department plugins: a local Context, real drproduct installs, a small step runner.

The runner imitates what the host does with steps (order across plugins, LIFO
compensations, plugin-wide hooks after the step-level ones) through the real
plugin runtime (``LoadedPlugin.invoke``), so the tests exercise the plugins as
shipped, not their functions in isolation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from drhost_hookspecs import LoadedPlugin, PackageInfo, RunResult, Stage, StepFailed, TargetInfo, VerifyPhase

PLUGINS = ("dr-core", "dr-database", "dr-catalog", "dr-monitoring")
SEED_JOBS = 25


class LocalContext:
    """The Context protocol on the local filesystem; ``run`` takes list argv only, never a shell string."""

    def __init__(self, root: Path, package: PackageInfo, run_id: str, config: Mapping[str, Any] | None = None) -> None:
        self.run_id = run_id
        self.target = TargetInfo(name="local", host="localhost", transport="local", install_root=str(root),
                                 work_dir=str(root.parent / "work"))
        self.package = package
        self.config: Mapping[str, Any] = dict(config or {})
        self.state: MutableMapping[str, Any] = {}
        self.logs: list[tuple[str, str]] = []
        self.commands: list[tuple[str, ...]] = []
        self.checkpoints: list[dict[str, Any]] = []

    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True,
            env: Mapping[str, str] | None = None, cwd: str | None = None, input: str | None = None) -> RunResult:
        if isinstance(argv, str) or not all(isinstance(a, str) for a in argv):
            raise TypeError(f"argv must be a list of str, got {argv!r}")
        started = time.monotonic()
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout or 300, cwd=cwd,
                              input=input, env={**os.environ, **(env or {})},
                              stdin=None if input is not None else subprocess.DEVNULL)
        self.commands.append(tuple(argv))
        result = RunResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
        if check and not result.ok:
            raise StepFailed(f"{argv[0]} {' '.join(argv[1:3])}... exited {proc.returncode}: {proc.stderr[-500:]}")
        return result

    def put(self, local_path: str, remote_path: str) -> None:
        os.makedirs(os.path.dirname(remote_path), exist_ok=True)
        temp = remote_path + ".part"
        shutil.copyfile(local_path, temp)
        os.replace(temp, remote_path)

    def read_text(self, path: str) -> str:
        return Path(path).read_text(encoding="utf-8")

    def write_text(self, path: str, text: str, *, mode: int = 0o644) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".write.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def remove(self, path: str, *, recursive: bool = False) -> None:
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        elif os.path.isdir(path):
            if not recursive:
                os.rmdir(path)
            else:
                shutil.rmtree(path)

    def progress(self, done: float, total: float, unit: str = "") -> None:
        self.logs.append(("progress", f"{done}/{total} {unit}"))

    def log(self, message: str, *, level: str = "info") -> None:
        self.logs.append((level, message))

    def checkpoint(self) -> None:
        self.checkpoints.append(dict(self.state))

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    @property
    def cancelled(self) -> bool:
        return False


def package_info(path: Path, remote_dir: Path) -> PackageInfo:
    from drhost.packaging import read_package

    pkg = read_package(path)
    return PackageInfo(product=pkg.product, version=pkg.version, upgrades_from=pkg.upgrades_from,
                       local_path=str(pkg.path), remote_path=str(remote_dir / path.name), sha256=pkg.sha256,
                       size=pkg.size, manifest=pkg.manifest)


@dataclass
class Harness:
    """One target, the four plugins with a context each, and the steps that ran (for LIFO compensation)."""

    root: Path
    package: PackageInfo
    plugins: dict[str, LoadedPlugin]
    ctxs: dict[str, LocalContext]
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


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from drhost.packaging import build_package

    out = tmp_path_factory.mktemp("packages")
    return {version: build_package(version, out) for version in ("1.0.0", "2.0.0")}


def _stop_daemon(root: Path) -> None:
    ctl = root / "current" / "bin" / "drproductctl"
    if ctl.exists():
        subprocess.run([str(ctl), "--root", str(root), "stop", "--timeout", "10"], capture_output=True,
                       timeout=30, stdin=subprocess.DEVNULL)


@pytest.fixture
def installed(tmp_path: Path, packages: dict[str, Path]) -> Iterator[Path]:
    """A running drproduct 1.0.0 under a fresh install root; stopped at teardown."""
    from drhost.demo import install

    root = tmp_path / "root"
    install.install_fresh(packages["1.0.0"], root, install.free_port(), seed_jobs=SEED_JOBS)
    install.start(root)
    try:
        yield root
    finally:
        _stop_daemon(root)


def make_harness(root: Path, package: PackageInfo, configs: Mapping[str, Mapping[str, Any]] | None = None,
                 run_id: str = "run-1") -> Harness:
    plugins = {name: LoadedPlugin.from_entry_point(name) for name in PLUGINS}
    ctxs = {name: LocalContext(root, package, run_id, (configs or {}).get(name)) for name in PLUGINS}
    return Harness(root, package, plugins, ctxs)


@pytest.fixture
def harness(installed: Path, packages: dict[str, Path], tmp_path: Path) -> Harness:
    """The four plugins set to upgrade ``installed`` to 2.0.0."""
    return make_harness(installed, package_info(packages["2.0.0"], tmp_path / "incoming"))


@pytest.fixture
def package_v2(packages: dict[str, Path], tmp_path: Path) -> PackageInfo:
    return package_info(packages["2.0.0"], tmp_path / "incoming")


def with_package(package: PackageInfo, **changes: Any) -> PackageInfo:
    return replace(package, **changes)


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
