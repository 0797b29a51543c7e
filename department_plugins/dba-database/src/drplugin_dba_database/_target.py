"""Paths of a drproduct install root and the ``drproduct-db`` tool, seen from the DBA plugin."""

from __future__ import annotations

import configparser
import json
import posixpath
from typing import Any

from drhost_hookspecs import Context, StepFailed

#: Keys this plugin keeps in ``ctx.state``.
OLD_VERSION = "old_version"
OLD_SCHEMA = "old_schema"
SNAPSHOT = "tables"
DB_BACKUP = "db_backup"
MIGRATION_STARTED = "migration_started"


def root(ctx: Context) -> str:
    return ctx.target.install_root.rstrip("/") or "/"


def path(ctx: Context, *parts: str) -> str:
    return posixpath.join(root(ctx), *parts)


def backup_file(ctx: Context) -> str:
    return path(ctx, "backup", ctx.run_id, "catalog.db")


def db_tool(ctx: Context, version: str | None = None) -> list[str]:
    """``drproduct-db`` of ``version``'s release, or of the current one.

    Reading (version, count, dump, check) and restoring do not depend on the
    release; only ``migrate`` must be the new release's, which ships the migrations.
    """
    base = path(ctx, "releases", version) if version else path(ctx, "current")
    return [posixpath.join(base, "bin", "drproduct-db"), "--root", root(ctx)]


def db_json(ctx: Context, *args: str, version: str | None = None, timeout: float | None = None) -> Any:
    result = ctx.run([*db_tool(ctx, version), *args], timeout=timeout)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise StepFailed(f"drproduct-db {args[0]} answered no JSON: {result.stdout[:200]!r}") from exc


def catalog_path(ctx: Context) -> str:
    ini = path(ctx, "etc", "drproduct.ini")
    relative = "data/catalog.db"
    if ctx.exists(ini):
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(ctx.read_text(ini))
        relative = parser.get("catalog", "path", fallback=relative)
    return relative if posixpath.isabs(relative) else path(ctx, relative)


def target_schema(ctx: Context) -> int:
    declared = ctx.package.manifest.get("schema_version")
    if declared is not None:
        return int(declared)
    schema_file = path(ctx, "releases", ctx.package.version, "SCHEMA")
    if not ctx.exists(schema_file):
        raise StepFailed(f"package declares no schema_version and {schema_file} is missing", retryable=False)
    return int(ctx.read_text(schema_file).strip())
