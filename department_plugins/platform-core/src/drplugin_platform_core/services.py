"""The drproduct service: stop, start, register, and putting the old release back in service."""

from __future__ import annotations

from drhost_hookspecs import Context, StepFailed

from . import _target as t
from .release import switch_current


def _timeout_args(ctx: Context, key: str, default: int) -> list[str]:
    return ["--timeout", str(int(ctx.config.get(key, default)))]


def _ctl(ctx: Context, version: str | None) -> list[str]:
    """The ctl of ``version`` when that release is there, else the current one.

    stop and status only read the pid file, so any release's tool will do; a
    half-removed release must not keep a compensation from stopping the daemon.
    """
    if version and ctx.exists(t.release_dir(ctx, version)):
        return t.tool(ctx, "drproductctl", version)
    return t.tool(ctx, "drproductctl")


def stop(ctx: Context, version: str | None = None) -> None:
    ctx.run([*_ctl(ctx, version), "stop", *_timeout_args(ctx, "stop_timeout_s", 30)])


def start(ctx: Context, version: str | None = None) -> None:
    ctx.run([*t.tool(ctx, "drproductctl", version), "start", *_timeout_args(ctx, "start_timeout_s", 60)])


def stop_services(ctx: Context) -> None:
    """drproduct stopped (nothing to do when it is not running)."""
    stop(ctx)


def start_services(ctx: Context) -> None:
    """The registered release started and answering health ok."""
    start(ctx)
    code, body = t.health(ctx)
    if code != 0:
        raise StepFailed(f"drproduct started but is not healthy (exit {code}): {body.get('problems') or body}")


def start_old(ctx: Context) -> None:
    """Compensation of stop_services: the old release back in service."""
    start(ctx, t.require_old_version(ctx))


def register_services(ctx: Context) -> None:
    """Service registration rewritten for the new release."""
    ctx.run([*t.tool(ctx, "drproductctl", ctx.package.version), "register"])
    found = t.registered_version(ctx)
    if found != ctx.package.version:
        raise StepFailed(f"registration says version {found}, expected {ctx.package.version}", retryable=False)


def register_old(ctx: Context) -> None:
    ctx.run([*t.tool(ctx, "drproductctl", t.require_old_version(ctx)), "register"])


def restore_old_release(ctx: Context) -> None:
    """Make the old release current, registered and running, whatever state the upgrade left."""
    old = t.require_old_version(ctx)
    switch_current(ctx, old)
    register_old(ctx)
    code, status = t.run_json(ctx, [*_ctl(ctx, old), "status"], check=False)
    if code == 0 and isinstance(status, dict) and status.get("version") != old:
        ctx.log(f"stopping drproduct {status.get('version')} to start {old}", level="warning")
        stop(ctx, old)
    start(ctx, old)
