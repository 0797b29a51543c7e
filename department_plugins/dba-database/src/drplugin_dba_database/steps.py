"""The catalog steps: check, back up, test, migrate, restore, verify."""

from __future__ import annotations

import posixpath
from typing import Any

from drhost_hookspecs import Context, StepFailed

from . import _target as t
from . import snapshot


def _schema(ctx: Context) -> int:
    return int(t.db_json(ctx, "version")["schema"])


def check_database(ctx: Context) -> None:
    """Integrity check; old version, schema and a snapshot of every table recorded."""
    result = ctx.run([*t.db_tool(ctx), "check"], check=False)
    if not result.ok:
        raise StepFailed(f"catalog integrity check failed: {result.stdout.strip() or result.stderr.strip()}",
                         retryable=False)
    schema = _schema(ctx)
    wanted = t.target_schema(ctx)
    if schema > wanted:
        raise StepFailed(f"catalog is at schema {schema}, newer than the package's {wanted}", retryable=False)
    ctx.state[t.OLD_VERSION] = ctx.read_text(t.path(ctx, "current", "VERSION")).strip()
    ctx.state[t.OLD_SCHEMA] = schema
    ctx.state[t.SNAPSHOT] = snapshot.take(ctx)
    counts = {table: seen["count"] for table, seen in ctx.state[t.SNAPSHOT].items()}
    ctx.log(f"catalog ok: schema {schema}, rows {counts}")


def backup_database(ctx: Context) -> None:
    """Online backup (with its .sha256) into the run's backup directory; snapshot refreshed."""
    out = t.backup_file(ctx)
    info = t.db_json(ctx, "backup", "--out", out)
    # The backup is what a restore brings back: compare against the catalog as of now.
    ctx.state[t.SNAPSHOT] = snapshot.take(ctx)
    ctx.state[t.DB_BACKUP] = {"path": out, "sha256": info.get("sha256"), "bytes": info.get("bytes")}
    ctx.log(f"catalog saved to {out} ({info.get('bytes')} bytes)")


def remove_backup(ctx: Context) -> None:
    """The backup stage rolled back: the catalog backup and its .sha256 go, the run's backup directory if empty."""
    out = t.backup_file(ctx)
    for file in (out, out + ".sha256"):
        ctx.remove(file)
    ctx.state.pop(t.DB_BACKUP, None)
    ctx.run(["rmdir", "--ignore-fail-on-non-empty", "--", posixpath.dirname(out)], check=False)


def test_db_connection(ctx: Context) -> None:
    """The catalog opens and answers at the schema precheck saw (or the target, on a resumed run)."""
    schema = _schema(ctx)
    expected = {ctx.state.get(t.OLD_SCHEMA), t.target_schema(ctx)}
    if schema not in expected:
        raise StepFailed(f"catalog answers schema {schema}, expected one of {sorted(map(str, expected))}",
                         retryable=False)
    t.db_json(ctx, "count")


def upgrade_db_schema(ctx: Context) -> None:
    """The new release's ``migrate --to N``: all migrations in one SQL transaction."""
    wanted = t.target_schema(ctx)
    new_tool = t.db_tool(ctx, ctx.package.version)
    if not ctx.exists(new_tool[0]):
        raise StepFailed(f"{new_tool[0]} missing: program files of {ctx.package.version} not installed",
                         retryable=False)
    # Recorded before the catalog is touched: from here on a rollback has something to undo.
    ctx.state[t.MIGRATION_STARTED] = True
    # Durable before the migration starts, so a worker killed mid-migration still leaves the mark.
    ctx.checkpoint()
    result: dict[str, Any] = t.db_json(ctx, "migrate", "--to", str(wanted), version=ctx.package.version)
    found = _schema(ctx)
    if found != wanted:
        raise StepFailed(f"catalog at schema {found} after migrate --to {wanted}", retryable=False)
    ctx.log(f"catalog migrated {result.get('from')} -> {result.get('to')}: {result.get('applied')}")


def _unchanged(ctx: Context) -> bool:
    """Old schema and old rows: a restore would change nothing (or the catalog is unreadable: False)."""
    old_schema = ctx.state.get(t.OLD_SCHEMA)
    before = ctx.state.get(t.SNAPSHOT)
    if old_schema is None or not isinstance(before, dict):
        return False
    try:
        if _schema(ctx) != old_schema:
            return False
        return not snapshot.differences(before, t.db_json(ctx, "dump"))
    except StepFailed:
        return False


def restore_database(ctx: Context) -> None:
    """Put the catalog back from this run's backup, unless it already is as it was."""
    if _unchanged(ctx):
        ctx.log("catalog already at the old schema with the old rows: nothing to restore")
        return
    backup = ctx.state.get(t.DB_BACKUP)
    source = str(backup.get("path", "")) if isinstance(backup, dict) else ""
    if not source or not ctx.exists(source):
        raise StepFailed("catalog differs from before the upgrade and this run has no backup of it", retryable=False)
    t.db_json(ctx, "restore", "--from", source)
    problems = verify_restored(ctx)
    if problems:
        raise StepFailed("catalog restored but still differs: " + "; ".join(problems), retryable=False)
    ctx.log(f"catalog restored from {source}")


def verify_restored(ctx: Context) -> list[str]:
    problems = []
    old_schema = ctx.state.get(t.OLD_SCHEMA)
    schema = _schema(ctx)
    if old_schema is not None and schema != old_schema:
        problems.append(f"catalog at schema {schema}, expected the old {old_schema}")
    before = ctx.state.get(t.SNAPSHOT)
    if isinstance(before, dict):
        problems += snapshot.differences(before, t.db_json(ctx, "dump"))
    return problems


def verify_upgraded(ctx: Context) -> list[str]:
    problems = []
    check = ctx.run([*t.db_tool(ctx), "check"], check=False)
    if not check.ok:
        problems.append(f"integrity check failed: {check.stdout.strip()}")
    schema, wanted = _schema(ctx), t.target_schema(ctx)
    if schema != wanted:
        problems.append(f"catalog at schema {schema}, expected {wanted}")
    before = ctx.state.get(t.SNAPSHOT)
    if isinstance(before, dict):
        problems += snapshot.differences(before, t.db_json(ctx, "dump"))
    return problems


def verify_data(ctx: Context) -> None:
    """Every row recorded before the upgrade is still there, unchanged, at the new schema."""
    problems = verify_upgraded(ctx)
    if problems:
        raise StepFailed("catalog after upgrade: " + "; ".join(problems), retryable=False)
