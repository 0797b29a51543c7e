"""Paths of a drproduct install root, seen from the operations plugin."""

from __future__ import annotations

import json
import posixpath
from typing import Any

from drhost_hookspecs import Context, StepFailed

#: Keys this plugin keeps in ``ctx.state``.
EXPORT = "export"
TEMPLATES_BEFORE = "templates_before"
TEMPLATES_DIR_CREATED = "templates_dir_created"


def root(ctx: Context) -> str:
    return ctx.target.install_root.rstrip("/") or "/"


def path(ctx: Context, *parts: str) -> str:
    return posixpath.join(root(ctx), *parts)


def export_file(ctx: Context) -> str:
    return path(ctx, "backup", ctx.run_id, "job-catalog.json")


def templates_file(ctx: Context) -> str:
    return path(ctx, str(ctx.config.get("templates_path", "etc/templates/jobs-v2.json")))


def dump(ctx: Context) -> dict[str, list[dict[str, Any]]]:
    result = ctx.run([posixpath.join(path(ctx, "current"), "bin", "drproduct-db"), "--root", root(ctx), "dump"])
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise StepFailed(f"drproduct-db dump answered no JSON: {result.stdout[:200]!r}") from exc
    if not isinstance(data, dict):
        raise StepFailed(f"drproduct-db dump: expected an object of tables, found {type(data).__name__}")
    return data
