"""Precheck stage: is this target one the package can upgrade, with room and a healthy service."""

from __future__ import annotations

from drhost_hookspecs import Context, StepFailed, UpToDate

from . import _target as t


def check_installed_version(ctx: Context) -> None:
    """The installed version is one the package upgrades from; it is recorded."""
    installed = t.current_version(ctx)
    if installed is None and not ctx.exists(t.root(ctx)):
        raise StepFailed(f"install root {t.root(ctx)} does not exist on this target", retryable=False)
    if installed is None:
        raise StepFailed(f"no drproduct installed: {t.path(ctx, 'current', 'VERSION')} is missing", retryable=False)
    if installed == ctx.package.version:
        raise UpToDate(installed)
    if installed not in ctx.package.upgrades_from:
        raise StepFailed(
            f"installed version {installed} cannot be upgraded to {ctx.package.version}: "
            f"the package upgrades from {', '.join(ctx.package.upgrades_from) or 'nothing'}",
            retryable=False,
        )
    ctx.state[t.OLD_VERSION] = installed
    ctx.log(f"installed {installed}, upgrading to {ctx.package.version}")


def parse_df_available(output: str) -> int:
    """Free bytes from ``df -Pk`` output (POSIX format: 1024-byte blocks, column 4)."""
    lines = [line for line in output.splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError(f"unexpected df output: {output!r}")
    # A long device name may not wrap under -P, but the numbers are always the last five fields.
    fields = lines[-1].split()
    return int(fields[-3]) * 1024


def check_disk_space(ctx: Context) -> None:
    """Enough free space under the install root for the package's required_free_bytes."""
    required = int(ctx.package.manifest.get("required_free_bytes", 0)) + int(ctx.config.get("free_margin_bytes", 0))
    output = ctx.run(["df", "-Pk", t.root(ctx)]).stdout
    try:
        available = parse_df_available(output)
    except ValueError as exc:
        raise StepFailed(str(exc), retryable=False) from exc
    if available < required:
        raise StepFailed(
            f"not enough disk space under {t.root(ctx)}: {available} bytes free, {required} bytes needed "
            f"({required - available} bytes short)",
            retryable=False,
        )
    ctx.log(f"disk space ok: {available} bytes free, {required} needed")


def check_service_healthy(ctx: Context) -> None:
    """drproduct answers health ok before anything changes."""
    code, body = t.health(ctx)
    ctx.state[t.SERVICE_WAS_RUNNING] = code != 3
    if code == 0:
        ctx.log(f"service healthy at version {body.get('version')}")
        return
    if code == 3 and not ctx.config.get("require_running_service", True):
        ctx.log("service is not running; allowed by require_running_service=false", level="warning")
        return
    problems = body.get("problems") or body or "no answer"
    raise StepFailed(f"drproduct is not healthy before the upgrade (health exit {code}): {problems}")
