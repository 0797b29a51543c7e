"""Program files: the new release under ``releases/``, and the ``current`` switch both ways."""

from __future__ import annotations

import posixpath

from drhost_hookspecs import Context, StepFailed

from . import _target as t


def current_link(ctx: Context) -> str | None:
    """Where ``current`` points, as written in the link (``releases/1.0.0``)."""
    result = ctx.run(["readlink", t.path(ctx, "current")], check=False)
    return result.stdout.strip() or None if result.ok else None


def switch_current(ctx: Context, version: str) -> None:
    """Point ``current`` at ``version`` atomically: a new link under a temp name, then rename over."""
    target = posixpath.join("releases", version)
    if current_link(ctx) == target:
        return
    if not ctx.exists(posixpath.join(t.release_dir(ctx, version), "VERSION")):
        raise StepFailed(f"cannot switch to {version}: {t.release_dir(ctx, version)} is not a complete release")
    temp = t.path(ctx, ".current.tmp")
    ctx.run(["ln", "-sfn", target, temp])
    ctx.run(["mv", "-T", temp, t.path(ctx, "current")])
    ctx.log(f"current -> {target}")


def install_program_files(ctx: Context) -> None:
    """New release copied from staging to releases/<V>, then current switched to it."""
    new = ctx.package.version
    old = t.require_old_version(ctx)
    payload = posixpath.join(t.staging_dir(ctx), "payload")
    final = t.release_dir(ctx, new)
    if not ctx.exists(payload):
        raise StepFailed(f"nothing to install: {payload} is missing (transfer stage not done?)", retryable=False)
    if current_link(ctx) == posixpath.join("releases", new):
        raise StepFailed(f"current already points at {new}: a partial earlier run; clean up first", retryable=False)
    if ctx.exists(final):
        # Not current, so nothing runs from it: a leftover of an interrupted attempt.
        ctx.log(f"removing leftover {final}", level="warning")
        ctx.remove(final, recursive=True)
    partial = posixpath.join(t.path(ctx, "releases"), f".{new}.partial")
    ctx.remove(partial, recursive=True)
    ctx.run(["cp", "-a", payload, partial])
    ctx.run(["mv", "-T", partial, final])
    switch_current(ctx, new)
    ctx.log(f"installed {new} (was {old})")


def uninstall_program_files(ctx: Context) -> None:
    """Compensation of install: ``current`` back on the old release, the new one removed."""
    new = ctx.package.version
    old = t.require_old_version(ctx)
    if old == new:
        return
    switch_current(ctx, old)
    ctx.remove(posixpath.join(t.path(ctx, "releases"), f".{new}.partial"), recursive=True)
    ctx.remove(t.path(ctx, ".current.tmp"))
    ctx.remove(t.release_dir(ctx, new), recursive=True)
