"""Configuration, licence, log files and permissions of the new release."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from drhost_hookspecs import Context, StepFailed

from . import _ini
from . import _target as t
from .backup import restore_member

INI = "etc/drproduct.ini"
LICENCE = "etc/license.lic"
REPLICATION_MODES = ("async", "sync")

#: What set_permissions enforces: the config and the licence are not for other users.
PERMISSIONS: tuple[tuple[str, str], ...] = (
    ("etc", "0750"),
    (INI, "0640"),
    (LICENCE, "0600"),
    ("data", "0750"),
    ("data/catalog.db", "0640"),
)


def series_of(version: str) -> str:
    return f"{version.split('.', 1)[0]}.x"


def init_core_config(ctx: Context) -> None:
    """Add what 2.x requires to the ini; every other line (port, catalog path) stays as it was."""
    ini = t.path(ctx, INI)
    text = ctx.read_text(ini)
    wanted = str(ctx.config.get("replication_mode", "async"))
    present = _ini.get(text, "replication", "mode")
    if present not in REPLICATION_MODES or present != wanted:
        text = _ini.set_value(text, "replication", "mode", wanted)
    ctx.write_text(ini, text, mode=0o640)


def restore_ini(ctx: Context) -> None:
    if not restore_member(ctx, INI):
        ctx.log(f"no program backup in this run: {INI} left as it is", level="warning")


def update_licence(ctx: Context) -> None:
    """Licence re-issued for the new release's series, licensee kept."""
    series = str(ctx.config.get("licence_series") or series_of(ctx.package.version))
    ctx.run([*t.tool(ctx, "drproduct-license", ctx.package.version), "issue", "--series", series])
    _, shown = t.run_json(ctx, [*t.tool(ctx, "drproduct-license", ctx.package.version), "show"], check=False)
    if isinstance(shown, dict) and shown.get("series") not in (None, series):
        raise StepFailed(f"licence series is {shown.get('series')} after issuing {series}", retryable=False)


def restore_licence(ctx: Context) -> None:
    if restore_member(ctx, LICENCE):
        return
    # Without a backup the old series can still be issued again: the licensee is kept.
    old = t.require_old_version(ctx)
    ctx.log(f"no program backup in this run: issuing a {series_of(old)} licence again", level="warning")
    ctx.run([*t.tool(ctx, "drproduct-license", old), "issue", "--series", series_of(old)])


def update_config_files(ctx: Context) -> None:
    """Apply the operator's ``ini_settings``: setting a value that is already set changes nothing."""
    settings: Mapping[str, Mapping[str, object]] = ctx.config.get("ini_settings") or {}
    if not settings:
        return
    ini = t.path(ctx, INI)
    original = ctx.read_text(ini)
    text = original
    for section, values in settings.items():
        for key, value in values.items():
            text = _ini.set_value(text, section, key, str(value))
    if text != original:
        ctx.write_text(ini, text, mode=0o640)


def init_log_files(ctx: Context) -> None:
    """The old release's log kept as ``drproductd-<old>.log``; the new release starts a fresh one."""
    log_dir = t.path(ctx, "log")
    log = posixpath.join(log_dir, "drproductd.log")
    ctx.run(["mkdir", "-p", log_dir])
    old = t.old_version(ctx)
    if old:
        rotated = posixpath.join(log_dir, f"drproductd-{old}.log")
        # Rotated once: a second run finds the rotated file and leaves both alone.
        if ctx.exists(log) and not ctx.exists(rotated):
            ctx.run(["mv", "-f", log, rotated])
    if not ctx.exists(log):
        ctx.write_text(log, "", mode=0o640)


def set_permissions(ctx: Context) -> None:
    """Config, licence and catalog readable by the service only; the modes they had are kept for rollback."""
    before: dict[str, str] = dict(ctx.state.get(t.MODES_BEFORE) or {})
    present = [(relative, mode) for relative, mode in PERMISSIONS if ctx.exists(t.path(ctx, relative))]
    for relative, _ in present:
        # Only the first attempt records: a retry would see the modes this step already set.
        if relative not in before:
            before[relative] = ctx.run(["stat", "-c", "%a", t.path(ctx, relative)]).stdout.strip()
    ctx.state[t.MODES_BEFORE] = before
    ctx.checkpoint()
    for relative, mode in present:
        ctx.run(["chmod", mode, t.path(ctx, relative)])


def restore_permissions(ctx: Context) -> None:
    """The modes ``set_permissions`` found, put back (files that are gone are skipped)."""
    for relative, mode in (ctx.state.get(t.MODES_BEFORE) or {}).items():
        target = t.path(ctx, relative)
        if mode and ctx.exists(target):
            ctx.run(["chmod", str(mode), target])
