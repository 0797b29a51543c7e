"""Where things are in a drproduct install root, and the few facts every step reads."""

from __future__ import annotations

import json
import posixpath
from typing import Any

from drhost_hookspecs import Context, StepFailed

#: Keys this plugin keeps in ``ctx.state``.
OLD_VERSION = "old_version"
PROGRAM_BACKUP = "program_backup"
SERVICE_WAS_RUNNING = "service_was_running"
MODES_BEFORE = "modes_before"


def root(ctx: Context) -> str:
    return ctx.target.install_root.rstrip("/") or "/"


def path(ctx: Context, *parts: str) -> str:
    return posixpath.join(root(ctx), *parts)


def backup_dir(ctx: Context) -> str:
    return path(ctx, "backup", ctx.run_id)


def release_dir(ctx: Context, version: str) -> str:
    return path(ctx, "releases", version)


def staging_dir(ctx: Context) -> str:
    return path(ctx, "staging", ctx.package.version)


def tool(ctx: Context, name: str, version: str | None = None) -> list[str]:
    """argv prefix of a product tool: of ``version``'s release, or of whatever is current."""
    base = release_dir(ctx, version) if version else path(ctx, "current")
    return [posixpath.join(base, "bin", name), "--root", root(ctx)]


def run_json(ctx: Context, argv: list[str], *, check: bool = True) -> tuple[int, Any]:
    """Run a product tool that answers JSON on stdout; ``None`` as payload when it did not."""
    result = ctx.run(argv, check=check)
    try:
        return result.returncode, json.loads(result.stdout) if result.stdout.strip() else None
    except json.JSONDecodeError:
        return result.returncode, None


def current_version(ctx: Context) -> str | None:
    version_file = path(ctx, "current", "VERSION")
    if not ctx.exists(version_file):
        return None
    return ctx.read_text(version_file).strip()


def old_version(ctx: Context) -> str | None:
    """The version this run upgrades from.

    Recorded by precheck; when a compensation runs without it (state lost, precheck
    skipped) the installed release among the package's ``upgrades_from`` is the answer.
    """
    recorded = ctx.state.get(OLD_VERSION)
    if isinstance(recorded, str) and recorded:
        return recorded
    for candidate in ctx.package.upgrades_from:
        if ctx.exists(posixpath.join(release_dir(ctx, candidate), "bin")):
            return candidate
    return None


def require_old_version(ctx: Context) -> str:
    version = old_version(ctx)
    if version is None:
        raise StepFailed(
            f"cannot tell which release to return to: no old version recorded and none of "
            f"{', '.join(ctx.package.upgrades_from) or '(none)'} is installed under {path(ctx, 'releases')}",
            retryable=False,
        )
    return version


def registered_version(ctx: Context) -> str | None:
    registration = path(ctx, "etc", "services", "drproductd.json")
    if not ctx.exists(registration):
        return None
    try:
        data = json.loads(ctx.read_text(registration))
    except json.JSONDecodeError:
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return str(version) if version is not None else None


def health(ctx: Context, version: str | None = None) -> tuple[int, dict[str, Any]]:
    """``drproductctl health``: exit code (0 ok, 1 degraded, 3 unreachable) and the body."""
    code, body = run_json(ctx, [*tool(ctx, "drproductctl", version), "health"], check=False)
    return code, body if isinstance(body, dict) else {}
