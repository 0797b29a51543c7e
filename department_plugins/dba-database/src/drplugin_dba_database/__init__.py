"""dr-database: the DBA department's plugin for the drproduct catalog.

Checks and snapshots the catalog, backs it up, migrates it with the new
release's migrations in one transaction, restores it on cleanup or rollback,
and verifies that every row survived.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Callable
from typing import Any

from drhost_hookspecs import Category, Context, PluginClass, PluginInfo, Stage, Step, VerifyPhase, hookimpl

from . import _target as t
from . import steps

NAME = "dr-database"
StepFn = Callable[[Context], None]


@hookimpl
def drhost_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        department="dba",
        plugin_class=PluginClass.DATABASE,
        description="drproduct catalog: integrity, backup, schema migration, restore, data verification",
    )


@hookimpl
def drhost_config_schema() -> dict[str, Any]:
    # Nothing to tune yet: the schema still rejects typos in the section.
    return {"type": "object", "additionalProperties": False, "properties": {}}


def _step(stage: Stage, name: str, run: StepFn, retryable: bool, timeout_s: float, order: int,
          **compensations: StepFn) -> Step:
    return Step(name, run, retryable=retryable, timeout_s=timeout_s, category=Category.DATABASE,
                timeout_key=f"{stage.value}.{name}", order=order,
                description=(run.__doc__ or "").strip().splitlines()[0], **compensations)


@hookimpl
def drhost_stage_steps(stage: Stage, register: Callable[[Step], None]) -> None:
    if stage is Stage.PRECHECK:
        register(_step(stage, "check_database", steps.check_database, True, 300, 40))
    elif stage is Stage.BACKUP:
        register(_step(stage, "backup_database", steps.backup_database, True, 900, 20))
    elif stage is Stage.UPGRADE:
        register(_step(stage, "test_db_connection", steps.test_db_connection, True, 60, 20))
        register(_step(stage, "upgrade_db_schema", steps.upgrade_db_schema, False, 1800, 35,
                       cleanup=steps.restore_database, rollback=steps.restore_database))
    elif stage is Stage.POSTCHECK:
        register(_step(stage, "verify_data", steps.verify_data, True, 300, 20))


@hookimpl
def drhost_rollback(stage: Stage, ctx: Context) -> None:
    # A safety net behind the step's own rollback: restores only when the catalog differs.
    if stage is Stage.UPGRADE and ctx.state.get(t.MIGRATION_STARTED):
        steps.restore_database(ctx)
    elif stage is Stage.BACKUP:
        # Only reached when the backup stage itself failed ([stages.backup] rollback_when = stage_failed).
        steps.remove_backup(ctx)


@hookimpl
def drhost_verify(stage: Stage, phase: VerifyPhase, ctx: Context) -> list[str]:
    if phase is VerifyPhase.ROLLED_BACK:
        return steps.verify_restored(ctx) if stage is Stage.UPGRADE else []
    if stage in (Stage.UPGRADE, Stage.POSTCHECK):
        return steps.verify_upgraded(ctx)
    return []


#: Who has the catalog open, and with what command: SQLite's "sessions" and "running statements".
#: One find over /proc (not a readlink per descriptor); the catalog path arrives as $1, never in the text.
_CATALOG_USERS = r"""
find /proc/[0-9]*/fd -maxdepth 1 \( -lname "$1" -o -lname "$1-wal" -o -lname "$1-journal" \) -printf '%h\n' \
    2>/dev/null | sort -u | while read -r fd_dir; do
  pid=${fd_dir#/proc/}; pid=${pid%/fd}
  [ -r "/proc/$pid/cmdline" ] || continue
  printf '%s\t' "$pid"; tr '\0' ' ' < "/proc/$pid/cmdline"; echo
done
"""


@hookimpl
def drhost_collect_context(ctx: Context) -> dict[str, Any]:
    """Catalog size, schema, row counts and the processes using it: each answered within seconds or reported."""
    catalog = t.catalog_path(ctx)
    found: dict[str, Any] = {"catalog": catalog}
    sizes = ctx.run(["stat", "-c", "%n %s", catalog, catalog + "-wal", catalog + "-journal"], check=False, timeout=5)
    found["files"] = {posixpath.basename(name): int(size) for name, _, size in
                      (line.rpartition(" ") for line in sizes.stdout.splitlines()) if size.isdigit()}
    found["measurement"] = {"data_bytes": sum(found["files"].values()), "label": "catalog"}
    users = ctx.run(["/bin/sh", "-c", _CATALOG_USERS, "drhost-catalog-users", catalog], check=False, timeout=10)
    found["sessions"] = [{"pid": int(pid), "command": command.strip()[:500]}
                         for pid, _, command in (line.partition("\t") for line in users.stdout.splitlines())
                         if pid.isdigit()]
    for key, args in (("schema", ("version",)), ("row_counts", ("count",))):
        try:
            found[key] = t.db_json(ctx, *args, timeout=10)
        except Exception as exc:  # diagnostics must not fail: report what went wrong instead
            found[key] = f"unavailable: {exc}"
    return found


@hookimpl
def drhost_manual_rollback_steps(stage: Stage, ctx: Context) -> list[str]:
    """By hand: the catalog restored from the run's backup (or a copy the operator trusts), then checked."""
    if stage is not Stage.UPGRADE:
        return []
    tool = " ".join(shlex.quote(part) for part in t.db_tool(ctx))
    backup = ctx.state.get(t.DB_BACKUP)
    source = str(backup.get("path")) if isinstance(backup, dict) else t.backup_file(ctx)
    digest = backup.get("sha256") if isinstance(backup, dict) else None
    steps = ["stop the service first (see dr-core's steps); the catalog must not be in use"]
    if digest:
        steps.append(f"check the backup: sha256sum {shlex.quote(source)}  (expect {digest})")
    steps += [
        f"restore the catalog: {tool} restore --from {shlex.quote(source)}  (if that file is gone, use the "
        f"newest catalog backup you trust)",
        f"check: {tool} version  (expect schema {ctx.state.get(t.OLD_SCHEMA, 'of the old release')}) and "
        f"{tool} count",
    ]
    return steps
