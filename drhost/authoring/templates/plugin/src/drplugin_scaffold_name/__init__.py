"""The drhost plugin scaffold-name.

Department: Scaffold Department. Class: scaffold-class.

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
NAME = "scaffold-name"
DEFAULT_MARKER_DIR = "var/scaffold-name"
MARKER_FILE = "upgraded-to"

#: The ``ctx.state`` key of record_upgrade: the marker's path, what it held before the first
#: attempt (None: no file) and the directories the step created. The host saves the state with
#: the run's checkpoint, so a cleanup or rollback in another process, or after a resume, has it.
RECORD = "record_upgrade"


@hookimpl
def drhost_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        department="Scaffold Department",
        plugin_class=PluginClass.BUSINESS,
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
