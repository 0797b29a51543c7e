"""``drhost plugin new NAME --class CLASS``: write a complete plugin distribution to start from.

The generated plugin is small but real: a read-only precheck, a non-retryable
upgrade step with its cleanup and rollback, a config schema and a verification,
with unit tests that run it against a temporary directory and tests that run it
through drhost (the pytest fixtures of ``drhost.testing.pytest_plugin``) on a
disposable target. An author replaces the marker file with their own work and
keeps the shape.

The templates are string constants rather than package files so that the
generator works from any install of drhost without package-data declarations.
Everything generated depends only on the arguments (no dates, no user names,
fixed file order), so two runs with the same arguments write identical bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from drhost_hookspecs import PluginClass

__all__ = ["PLUGIN_CLASSES", "ScaffoldError", "ScaffoldResult", "new_plugin"]

#: The values ``--class`` accepts, in the order the docs list them.
PLUGIN_CLASSES: tuple[str, ...] = tuple(c.value for c in PluginClass)

# Lowercase so the entry-point name, the distribution name and the INI section
# [plugin:NAME] all read the same; no '-' at the end or twice in a row, because a
# distribution name must end with a letter or digit and "a--b" would normalise to
# "a-b" on PyPI while staying "a--b" as the entry point.
_NAME = re.compile(r"[a-z](?:[a-z0-9]|-(?=[a-z0-9]))*")
_NAME_LENGTH = (3, 40)
_NAME_EXPECTED = (
    f"{_NAME_LENGTH[0]} to {_NAME_LENGTH[1]} characters: lowercase letters, digits and single '-' between them, "
    "starting with a letter (for example 'acme-audit')"
)
# The department lands inside Python and TOML string literals: no quotes or backslashes.
_DEPARTMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,39}")
_DEPARTMENT_EXPECTED = "1 to 40 characters: letters, digits, ' ', '.', '_' or '-', starting with a letter or digit"
_TOKEN = re.compile(r"\{\{(\w+)\}\}")


class ScaffoldError(Exception):
    """The arguments of ``drhost plugin new`` cannot give a plugin; the message says what was expected."""


@dataclass(frozen=True)
class ScaffoldResult:
    """What :func:`new_plugin` wrote.

    ``files`` are the written files (each under ``directory``), sorted by their
    path relative to it.
    """

    directory: Path
    distribution: str
    module: str
    files: tuple[Path, ...]


def _check_name(name: str) -> None:
    low, high = _NAME_LENGTH
    if not (low <= len(name) <= high and _NAME.fullmatch(name)):
        raise ScaffoldError(f"plugin name {name!r}: expected {_NAME_EXPECTED}")


def _check_class(plugin_class: str) -> PluginClass:
    if plugin_class not in PLUGIN_CLASSES:
        raise ScaffoldError(f"plugin class {plugin_class!r}: expected one of {', '.join(PLUGIN_CLASSES)}")
    return PluginClass(plugin_class)


def _check_department(department: str) -> None:
    if not _DEPARTMENT.fullmatch(department):
        raise ScaffoldError(f"department {department!r}: expected {_DEPARTMENT_EXPECTED}")


def _check_directory(directory: Path) -> None:
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ScaffoldError(f"target directory {directory}: exists and is not a directory; "
                            "expected a new or empty directory")
    if any(directory.iterdir()):
        raise ScaffoldError(f"target directory {directory}: exists and is not empty; "
                            "expected a new or empty directory (nothing in it was changed)")


def _render(template: str, values: Mapping[str, str]) -> str:
    return _TOKEN.sub(lambda m: values[m.group(1)], template)


def new_plugin(name: str, plugin_class: str, directory: Path, *, department: str = "my-department") -> ScaffoldResult:
    """Write the distribution ``drhost-plugin-NAME`` (module ``drplugin_NAME``) at ``directory``.

    ``directory`` must not exist or be empty. Raises :class:`ScaffoldError`,
    before writing anything, for a bad name, class, department or directory.
    """
    _check_name(name)
    cls = _check_class(plugin_class)
    _check_department(department)
    _check_directory(directory)
    module = "drplugin_" + name.replace("-", "_")
    distribution = f"drhost-plugin-{name}"
    values = {
        "name": name,
        "module": module,
        "distribution": distribution,
        "department": department,
        "plugin_class": cls.value,
        "class_member": cls.name,
    }
    contents = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"src/{module}/__init__.py": _MODULE,
        f"src/{module}/py.typed": "",
        f"tests/test_{module}.py": _TESTS,
        "tests/test_in_drhost.py": _TESTS_IN_DRHOST,
    }
    written: list[Path] = []
    for relative in sorted(contents):
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        # Bytes, not text mode: the platform's newline translation must not make two runs differ.
        path.write_bytes(_render(contents[relative], values).encode("utf-8"))
        written.append(path)
    return ScaffoldResult(directory=directory, distribution=distribution, module=module, files=tuple(written))


_PYPROJECT = r'''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{{distribution}}"
version = "0.1.0"
description = "drhost plugin {{name}} ({{department}}): records the version each upgrade installed."
readme = "README.md"
requires-python = ">=3.10"
# The plugin API only: a plugin never imports drhost itself, so it keeps working across host releases
# that serve the same hook API.
dependencies = ["drhost-hookspecs>=1.0,<2"]

[project.optional-dependencies]
test = ["pytest>=8", "ruff>=0.5", "mypy>=1.10"]

# How drhost finds the plugin: the entry-point name must equal PluginInfo.name.
[project.entry-points."drhost.plugins"]
{{name}} = "{{module}}"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
{{module}} = ["py.typed"]

[tool.pytest.ini_options]
testpaths = ["tests"]
# The plugin under test for drhost's pytest fixtures (tests/test_in_drhost.py).
drhost_plugin = "{{name}}"

[tool.ruff]
line-length = 120
target-version = "py310"

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP", "SIM", "RUF"]

[tool.ruff.lint.isort]
known-first-party = ["{{module}}"]

[tool.mypy]
python_version = "3.10"
strict = true
warn_unreachable = true
mypy_path = "src"
files = ["src", "tests"]
'''

_README = r'''# {{distribution}} (`{{name}}`)

A drhost plugin of the **{{department}}** department, class **{{plugin_class}}**.

It records on every target which version the upgrade installed: the file
`<install_root>/<marker_dir>/upgraded-to` holds the package's version. It is
generated by `drhost plugin new` as a starting point: replace the marker with
your plugin's real work and keep its shape (a read-only precheck, a
non-retryable step with cleanup and rollback, a verification).

## What it does

- precheck, `check_marker_dir_writable` (retryable, 30 s, timeout key
  `precheck.{{name}}.check_marker_dir_writable`): the marker directory
  exists or can be created, and is writable. It changes nothing.
- upgrade, `record_upgrade` (not retryable, 60 s, timeout key
  `upgrade.{{name}}.record_upgrade`): writes the package's version to the
  marker file.

How the upgrade step keeps the contract of a non-retryable step:

- `record_upgrade` is idempotent (a second run writes the same bytes). It keeps
  in `ctx.state` what the marker held before and which directories it created.
- Its `cleanup` and `rollback` put the marker back as it was (removed when
  there was none) and remove the directories the step created if they are
  empty; both do nothing when the step wrote nothing, and can run twice.
- `drhost_verify(upgrade)`: after the stage completed, the marker holds the
  new version; after its rollback, the marker is as it was before.

Every effect on the target goes through the Context (`ctx.write_text`,
`ctx.exists`, `ctx.remove`, `ctx.run`): the host runs the plugin in a thread,
a worker process or a container, and reaches the target locally or over SSH.
The host confines those: files inside the install root, plus the paths
declared in `PluginInfo(paths=...)` (none here); commands, for a
`third_party` plugin, only those in `PluginInfo(commands=...)` (here `test`
and `rmdir`). Declare what you add; `drhost plugin-test .` fails on anything
refused.

## Config (`[plugin:{{name}}]`)

| key | default | meaning |
|---|---|---|
| `marker_dir` | `var/{{name}}` | where the marker goes, relative to the install root (no `..`) |

## Install

Into the same Python environment as drhost:

```sh
pip install -e .          # while developing; `pip install .` for a release
```

## Test

```sh
pip install -e '.[test]'
pytest                    # unit tests, and the plugin run through drhost on a disposable target
ruff check . && mypy      # lint and strict typing, as configured in pyproject.toml
drhost plugin-test .      # the host's safety check: runs the plugin the way drhost will
```

`tests/test_{{module}}.py` holds unit tests: the plugin in-process with a
small fake Context against a temporary directory. `tests/test_in_drhost.py`
runs it through drhost itself, with the fixtures drhost's pytest plugin
provides wherever drhost is installed (`drhost_runner`, `drhost_context`,
`drhost_target`, ...): its steps in its class's isolation on a real
drproduct 1.0.0 install that is thrown away after each test. The plugin they
test is named by `drhost_plugin` under `[tool.pytest.ini_options]`.
`drhost plugin-test .` is the check that counts before a release: it takes
the plugin through every stage, with its compensations, cut-short steps and
verification.

## Enable it in a run

drhost finds every plugin installed in its environment through the entry
point group `drhost.plugins`; there is nothing to register.

- `drhost plugins list` shows `{{name}}` (or why it is broken);
  `drhost plan` shows its steps among the others.
- It takes part in every run unless it is left out with `-p no:{{name}}`, or
  `DRHOST_LOAD_PLUGINS` is set and does not name it.
- Configure it in the ops INI file:

  ```ini
  [plugin:{{name}}]
  marker_dir = var/{{name}}

  [timeouts]
  upgrade.{{name}}.record_upgrade = 120
  ```

  or on the command line: `--set plugin.{{name}}.marker_dir=var/{{name}}`.

## Hook reference

`docs/plugin-hooks.md` in the drhost repository describes every hook, the
`Step` contract and the Context API. The same text is in the docstrings of the
installed `drhost_hookspecs` package: `python -m pydoc drhost_hookspecs._spec`
and `python -m pydoc drhost_hookspecs.Context`.
'''

_MODULE = r'''"""The drhost plugin {{name}}.

Department: {{department}}. Class: {{plugin_class}}.

It records on every target which version the upgrade installed: the file
``<install_root>/<marker_dir>/upgraded-to`` holds ``ctx.package.version``.
Small on purpose, it shows the whole contract of a step with side effects: a
read-only precheck, a non-retryable step with its cleanup and rollback, and a
verification after the stage and after its rollback.

Every effect goes through ``ctx``, never ``open``, ``os`` or ``subprocess``:
the host may run this code in a thread, a worker process or a container, and
the target may be another machine reached over SSH.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

from drhost_hookspecs import Category, Context, PluginClass, PluginInfo, Stage, Step, StepFailed, VerifyPhase, hookimpl

#: The entry-point name in pyproject.toml; the host lists the plugin as broken when they differ.
NAME = "{{name}}"
DEFAULT_MARKER_DIR = "var/{{name}}"
MARKER_FILE = "upgraded-to"

#: The ``ctx.state`` key of record_upgrade: the marker's path, what it held before the first
#: attempt (None: no file) and the directories the step created. The host saves the state with
#: the run's checkpoint, so a cleanup or rollback in another process, or after a resume, has it.
RECORD = "record_upgrade"


@hookimpl
def drhost_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        department="{{department}}",
        plugin_class=PluginClass.{{class_member}},
        description="records the version each upgrade installed in a marker file",
        # What the Context lets the plugin do beyond its install root. Its files are all inside the
        # root (marker_dir cannot leave it), so no paths=; a path elsewhere would be declared here
        # (paths=("/var/log/acme",), "{root}/..." also works) or the host refuses it. commands= are
        # the argv[0] of every ctx.run: a third_party plugin may run nothing else.
        commands=("test", "rmdir"),
    )


@hookimpl
def drhost_config_schema() -> dict[str, Any]:
    # Closed (additionalProperties false): a misspelt key in [plugin:NAME] stops the run before it
    # starts instead of being ignored.
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "marker_dir": {
                "type": "string",
                "description": "where the marker file goes, relative to the install root",
                "pattern": r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$",
                # Inside the install root only: rollback removes what is there.
                "not": {"pattern": r"(^|/)\.\.(/|$)"},
                "default": DEFAULT_MARKER_DIR,
            },
        },
    }


@hookimpl
def drhost_stage_steps(stage: Stage, register: Callable[[Step], None]) -> None:
    # The plugin's name in each timeout key: an operator's [timeouts] value for this step must not
    # also change another plugin's step of the same name.
    if stage is Stage.PRECHECK:
        register(Step(
            "check_marker_dir_writable", check_marker_dir_writable,
            # It only reads, so running it again can do no harm.
            retryable=True, timeout_s=30, category=Category.FILE,
            timeout_key=f"precheck.{NAME}.check_marker_dir_writable",
            description="the marker directory exists or can be created, and is writable",
        ))
    elif stage is Stage.UPGRADE:
        register(Step(
            "record_upgrade", record_upgrade,
            # Declared non-retryable to show the contract of a step whose effects the host cannot
            # simply repeat: after a failure the host runs its cleanup before the stage starts
            # again, and its rollback when the target goes back to the old version.
            retryable=False, timeout_s=60, category=Category.FILE,
            timeout_key=f"upgrade.{NAME}.record_upgrade",
            # After the product's own steps (dr-core starts the new services at 90): the marker
            # records an upgrade that is done.
            order=95,
            description="the package's version written to the marker file",
            # One function for both: before a restart and for a rollback alike, the target must
            # be as it was before the step.
            cleanup=undo_record_upgrade, rollback=undo_record_upgrade,
        ))


def marker_dir(ctx: Context) -> str:
    """The marker directory on the target: config ``marker_dir`` under the install root."""
    root = ctx.target.install_root.rstrip("/") or "/"
    return posixpath.normpath(posixpath.join(root, str(ctx.config.get("marker_dir", DEFAULT_MARKER_DIR))))


def marker_file(ctx: Context) -> str:
    return posixpath.join(marker_dir(ctx), MARKER_FILE)


def _missing_dirs(ctx: Context, path: str) -> tuple[str, list[str]]:
    """The nearest existing ancestor of ``path`` (or ``path``), and the directories missing below it, deepest first."""
    missing: list[str] = []
    while not ctx.exists(path) and posixpath.dirname(path) != path:
        missing.append(path)
        path = posixpath.dirname(path)
    return path, missing


def check_marker_dir_writable(ctx: Context) -> None:
    """The marker directory exists or can be created, and is writable."""
    # Read-only on purpose: a precheck runs before anything is backed up and has no rollback.
    wanted = marker_dir(ctx)
    existing, _ = _missing_dirs(ctx, wanted)
    # Asked on the target itself: the host may reach it over SSH, as a user this process is not.
    if not ctx.run(["test", "-d", existing], check=False, timeout=10).ok:
        # Not retryable: a file in the way stays there until someone moves it.
        raise StepFailed(f"{existing} is not a directory, so {wanted} cannot be created there; "
                         "expected a directory (move the file, or set marker_dir)", retryable=False)
    if not ctx.run(["test", "-w", existing], check=False, timeout=10).ok:
        raise StepFailed(f"{existing} is not writable, so the marker cannot be written under it; "
                         "expected a directory drhost's user can write (or set marker_dir)", retryable=False)


def record_upgrade(ctx: Context) -> None:
    """The package's version written to <install_root>/<marker_dir>/upgraded-to."""
    marker = marker_file(ctx)
    # Only the first attempt sees the target as it was: a later one would take this step's own
    # marker for the old state, and rollback could not put the old one back.
    if RECORD not in ctx.state:
        ctx.state[RECORD] = {
            "path": marker,
            "before": ctx.read_text(marker) if ctx.exists(marker) else None,
            "created_dirs": _missing_dirs(ctx, posixpath.dirname(marker))[1],
        }
        # Saved now rather than when the step returns: a crash right after the write below must
        # not leave a marker that the rollback knows nothing about.
        ctx.checkpoint()
    # The whole file from the package alone, so a second run writes the same bytes.
    ctx.write_text(marker, ctx.package.version + "\n")
    ctx.log(f"{marker} records version {ctx.package.version}")


def undo_record_upgrade(ctx: Context) -> None:
    """The marker as it was before record_upgrade (removed when there was none), and its new directories gone."""
    record = ctx.state.get(RECORD)
    if not isinstance(record, dict):
        return  # the step never started on this target: nothing of ours to undo
    marker = str(record["path"])
    before = record["before"]
    if before is None:
        ctx.remove(marker)  # a missing file is not an error, so a second call is harmless
    else:
        ctx.write_text(marker, str(before))
    created = [str(path) for path in record["created_dirs"]]
    if created:
        # rmdir, deepest first, rather than remove(recursive=True): a directory that now holds
        # something else is kept, and one already gone only gives a message that is ignored.
        ctx.run(["rmdir", "--", *created], check=False, timeout=10)


def _shown(text: object) -> str:
    return "no file" if text is None else repr(str(text).strip())


@hookimpl
def drhost_verify(stage: Stage, phase: VerifyPhase, ctx: Context) -> list[str]:
    if stage is not Stage.UPGRADE:
        return []
    record = ctx.state.get(RECORD)
    marker = str(record["path"]) if isinstance(record, dict) else marker_file(ctx)
    found = ctx.read_text(marker) if ctx.exists(marker) else None
    if phase is VerifyPhase.COMPLETED:
        expected = ctx.package.version + "\n"
        return [] if found == expected else [f"{marker}: expected {_shown(expected)}, found {_shown(found)}"]
    if not isinstance(record, dict):
        return []  # the step never ran here, so its rollback had nothing to undo
    before = record["before"]
    return [] if found == before else [f"{marker} after rollback: expected {_shown(before)}, found {_shown(found)}"]
'''

_TESTS = r'''"""Unit tests of the drhost plugin {{name}}.

Its steps and hooks run in-process against a temporary directory as the target.

FakeContext does what drhost's local transport does, on this machine and with
no host, so these tests need neither drhost nor a product install. Before a
release also run ``drhost plugin-test .``, which runs the plugin through the
host, in its class's isolation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from drhost_hookspecs import LoadedPlugin, PackageInfo, RunResult, Stage, StepFailed, TargetInfo, VerifyPhase

import {{module}} as plugin

VERSION = "2.0.0"


class FakeContext:
    """The Context protocol on a local directory: what a step sees, without the host."""

    def __init__(self, install_root: Path, config: Mapping[str, Any] | None = None) -> None:
        self.run_id = "test-run"
        self.target = TargetInfo(name="target-1", host="localhost", transport="local",
                                 install_root=str(install_root), work_dir=str(install_root / "work"))
        self.package = PackageInfo(product="drproduct", version=VERSION, upgrades_from=("1.0.0",),
                                   local_path="", remote_path="", sha256="", size=0)
        self.config: Mapping[str, Any] = dict(config or {})
        self.state: MutableMapping[str, Any] = {}
        self.logged: list[str] = []

    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True,
            env: Mapping[str, str] | None = None, cwd: str | None = None, input: str | None = None) -> RunResult:
        started = time.monotonic()
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, cwd=cwd, input=input,
                              env=None if env is None else {**os.environ, **env}, check=False)
        result = RunResult(tuple(argv), done.returncode, done.stdout, done.stderr, time.monotonic() - started)
        if check and not result.ok:
            raise StepFailed(f"{argv[0]} exited with {done.returncode}: {done.stderr[-500:]}")
        return result

    def put(self, local_path: str, remote_path: str) -> None:
        self.write_text(remote_path, Path(local_path).read_text(encoding="utf-8"))

    def read_text(self, path: str) -> str:
        return Path(path).read_text(encoding="utf-8")

    def write_text(self, path: str, text: str, *, mode: int = 0o644) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Temp name, then rename, as the host does: a reader never sees half a file.
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temp, mode)
        os.replace(temp, target)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def remove(self, path: str, *, recursive: bool = False) -> None:
        found = Path(path)
        if found.is_dir() and not found.is_symlink():
            if recursive:
                shutil.rmtree(found)
            else:
                found.rmdir()
        elif os.path.lexists(found):
            found.unlink()

    def progress(self, done: float, total: float, unit: str = "") -> None:
        self.logged.append(f"progress: {done}/{total} {unit}")

    def log(self, message: str, *, level: str = "info") -> None:
        self.logged.append(f"{level}: {message}")

    def checkpoint(self) -> None:
        pass  # nothing to save: the state lives in this object for the whole test

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    @property
    def cancelled(self) -> bool:
        return False


@pytest.fixture(scope="module")
def loaded() -> LoadedPlugin:
    # Registered as the host registers it: a hook whose name or arguments do not match its spec fails here.
    return LoadedPlugin(plugin.NAME, plugin)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    root = tmp_path / "target"
    root.mkdir()
    return root


@pytest.fixture
def ctx(target: Path) -> FakeContext:
    return FakeContext(target)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with a file's bytes (None for a directory)."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def marker(root: Path) -> Path:
    return root / plugin.DEFAULT_MARKER_DIR / plugin.MARKER_FILE


def run_step(loaded: LoadedPlugin, ctx: FakeContext, stage: Stage, step: str) -> None:
    loaded.invoke("run_step", ctx, stage=stage, step=step, in_process=True)


def compensate(loaded: LoadedPlugin, ctx: FakeContext, op: str) -> None:
    loaded.invoke(op, ctx, stage=Stage.UPGRADE, step="record_upgrade", in_process=True)


def verify(loaded: LoadedPlugin, ctx: FakeContext, phase: VerifyPhase, stage: Stage = Stage.UPGRADE) -> list[str]:
    return list(loaded.invoke("verify", ctx, stage=stage, phase=phase, in_process=True))


def test_plugin_declares_itself(loaded: LoadedPlugin) -> None:
    """The plugin reports its entry-point name, its department and its class."""
    info = loaded.info
    assert info.name == "{{name}}"
    assert info.department == "{{department}}"
    assert str(info.plugin_class) == "{{plugin_class}}"


def test_upgrade_step_is_non_retryable_with_compensations(loaded: LoadedPlugin) -> None:
    """record_upgrade is the only upgrade step: non-retryable, so it brings cleanup and rollback."""
    (step,) = loaded.describe()["steps"]["upgrade"]
    assert (step["name"], step["retryable"], step["timeout_s"]) == ("record_upgrade", False, 60)
    assert step["has_cleanup"] and step["has_rollback"]
    assert step["timeout_key"] == "upgrade.{{name}}.record_upgrade"


def test_precheck_step_is_retryable(loaded: LoadedPlugin) -> None:
    """check_marker_dir_writable is the only precheck step, retryable, with a key of its own."""
    (step,) = loaded.describe()["steps"]["precheck"]
    assert (step["name"], step["retryable"], step["timeout_s"]) == ("check_marker_dir_writable", True, 30)
    assert step["timeout_key"] == "precheck.{{name}}.check_marker_dir_writable"


def test_config_schema_is_closed(loaded: LoadedPlugin) -> None:
    """The config section refuses unknown keys and documents marker_dir with its default."""
    schema = loaded.config_schema()
    assert schema is not None and schema["additionalProperties"] is False
    assert schema["properties"]["marker_dir"]["default"] == "var/{{name}}"


def test_precheck_passes_and_changes_nothing(loaded: LoadedPlugin, ctx: FakeContext, target: Path) -> None:
    """On a writable target the precheck passes and leaves the target as it was."""
    (target / "var").mkdir()
    before = tree(target)
    run_step(loaded, ctx, Stage.PRECHECK, "check_marker_dir_writable")
    assert tree(target) == before


def test_precheck_refuses_a_file_in_the_way(loaded: LoadedPlugin, ctx: FakeContext, target: Path) -> None:
    """A file where the marker directory must go fails the precheck for good (not retryable)."""
    (target / "var").write_text("not a directory\n")
    with pytest.raises(StepFailed) as caught:
        run_step(loaded, ctx, Stage.PRECHECK, "check_marker_dir_writable")
    assert not caught.value.retryable and f"{target / 'var'} is not a directory" in caught.value.message


def test_record_upgrade_writes_the_version(loaded: LoadedPlugin, ctx: FakeContext, target: Path) -> None:
    """record_upgrade writes the package's version to the marker file under the install root."""
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    assert marker(target).read_text() == VERSION + "\n"


def test_record_upgrade_follows_marker_dir(loaded: LoadedPlugin, target: Path) -> None:
    """The config key marker_dir moves the marker, relative to the install root."""
    ctx = FakeContext(target, {"marker_dir": "data/markers"})
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    assert sorted(tree(target)) == ["data", "data/markers", "data/markers/upgraded-to"]


def test_record_upgrade_is_idempotent(loaded: LoadedPlugin, ctx: FakeContext, target: Path) -> None:
    """Running record_upgrade twice leaves the target, and the state, as running it once."""
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    once, state = tree(target), dict(ctx.state)
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    assert tree(target) == once and dict(ctx.state) == state


def test_rollback_restores_a_fresh_target(loaded: LoadedPlugin, ctx: FakeContext, target: Path) -> None:
    """Rollback removes the marker and the directories the step created, and nothing else."""
    (target / "var").mkdir()
    (target / "var" / "other.txt").write_text("not ours\n")
    before = tree(target)
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    compensate(loaded, ctx, "rollback_step")
    assert not marker(target).exists() and tree(target) == before


def test_rollback_restores_an_earlier_marker(loaded: LoadedPlugin, ctx: FakeContext, target: Path) -> None:
    """A marker left by an earlier upgrade is put back as it was, not removed."""
    marker(target).parent.mkdir(parents=True)
    marker(target).write_text("1.0.0\n")
    before = tree(target)
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    compensate(loaded, ctx, "rollback_step")
    assert tree(target) == before


def test_compensations_tolerate_nothing_written(loaded: LoadedPlugin, ctx: FakeContext, target: Path) -> None:
    """Cleanup and rollback, each called twice, change nothing when the step never ran."""
    before = tree(target)
    for op in ("cleanup_step", "rollback_step", "cleanup_step", "rollback_step"):
        compensate(loaded, ctx, op)
    assert tree(target) == before


def test_cleanup_lets_the_stage_start_again(loaded: LoadedPlugin, ctx: FakeContext, target: Path) -> None:
    """After cleanup the target is as before, and the step runs again to a verified stage."""
    before = tree(target)
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    compensate(loaded, ctx, "cleanup_step")
    compensate(loaded, ctx, "cleanup_step")
    assert tree(target) == before
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    assert verify(loaded, ctx, VerifyPhase.COMPLETED) == []


def test_verify_answers_per_phase(loaded: LoadedPlugin, ctx: FakeContext) -> None:
    """verify reports a missing marker after the stage, and a leftover one after its rollback."""
    assert verify(loaded, ctx, VerifyPhase.COMPLETED) != []
    run_step(loaded, ctx, Stage.UPGRADE, "record_upgrade")
    assert verify(loaded, ctx, VerifyPhase.COMPLETED) == []
    assert verify(loaded, ctx, VerifyPhase.ROLLED_BACK) != []
    compensate(loaded, ctx, "rollback_step")
    assert verify(loaded, ctx, VerifyPhase.ROLLED_BACK) == []
    assert verify(loaded, ctx, VerifyPhase.COMPLETED, stage=Stage.PRECHECK) == []
'''

_TESTS_IN_DRHOST = r'''"""Tests of {{name}} run by drhost: in its class's isolation, on a disposable target.

The fixtures come from drhost's pytest plugin, loaded wherever drhost is
installed; ``drhost_plugin`` in pyproject.toml names this plugin as the one
under test. Each test gets its own target: drproduct 1.0.0 installed in a
temporary directory with its daemon running, gone after the test.
"""

from __future__ import annotations

from typing import Protocol

import pytest
from drhost_hookspecs import Context, Stage, VerifyPhase

import {{module}} as plugin

# Without drhost there are no fixtures: a skip that says why reads better than "fixture not found".
pytest.importorskip("drhost.testing.pytest_plugin", reason="these tests run the plugin through drhost: install "
                    "the plugin into drhost's environment")


class Outcome(Protocol):
    """How one call ended, as drhost reports it (``drhost.supervisor.CallOutcome``)."""

    @property
    def ok(self) -> bool: ...

    @property
    def message(self) -> str: ...


class Runner(Protocol):
    """The ``drhost_runner`` fixture, as far as these tests use it.

    Spelled out here rather than imported from drhost so that mypy checks this
    file with drhost_hookspecs alone.
    """

    @property
    def isolation(self) -> str: ...

    def run_step(self, stage: Stage | str, step: str, *, timeout_s: float | None = None) -> Outcome: ...

    def rollback(self, stage: Stage | str) -> list[str]: ...

    def verify(self, stage: Stage | str, phase: VerifyPhase | str) -> list[str]: ...


def test_precheck_passes_in_the_plugins_isolation(drhost_runner: Runner, drhost_context: Context) -> None:
    """Run by drhost in the class's isolation, the precheck passes on a fresh install and creates nothing."""
    outcome = drhost_runner.run_step(Stage.PRECHECK, "check_marker_dir_writable")
    assert outcome.ok, f"{drhost_runner.isolation}: {outcome.message}"
    assert not drhost_context.exists(plugin.marker_dir(drhost_context))


def test_upgrade_writes_the_marker_and_rollback_removes_it(drhost_runner: Runner, drhost_context: Context) -> None:
    """Run by drhost, record_upgrade writes the new version and verifies; the stage's rollback removes it again."""
    marker = plugin.marker_file(drhost_context)
    outcome = drhost_runner.run_step(Stage.UPGRADE, "record_upgrade")
    assert outcome.ok, f"{drhost_runner.isolation}: {outcome.message}"
    assert drhost_context.read_text(marker) == drhost_context.package.version + "\n"
    assert drhost_runner.verify(Stage.UPGRADE, VerifyPhase.COMPLETED) == []
    assert drhost_runner.rollback(Stage.UPGRADE) == []
    assert not drhost_context.exists(marker)
    assert drhost_runner.verify(Stage.UPGRADE, VerifyPhase.ROLLED_BACK) == []


def test_record_upgrade_with_the_hosts_context(drhost_context: Context) -> None:
    """Called here with the Context drhost gives plugins, record_upgrade writes the marker and its undo removes it."""
    marker = plugin.marker_file(drhost_context)
    plugin.record_upgrade(drhost_context)
    assert drhost_context.read_text(marker) == drhost_context.package.version + "\n"
    plugin.undo_record_upgrade(drhost_context)
    assert not drhost_context.exists(marker)
'''
