"""Postcheck and verification: what the target must look like after a stage or its rollback."""

from __future__ import annotations

from drhost_hookspecs import Context, Stage, StepFailed

from . import _target as t


def healthy_at(ctx: Context, version: str) -> list[str]:
    code, body = t.health(ctx)
    if code != 0:
        return [f"drproduct not healthy (health exit {code}): {body.get('problems') or body or 'no answer'}"]
    if body.get("version") != version:
        return [f"drproduct answers version {body.get('version')}, expected {version}"]
    return []


def check_new_version_healthy(ctx: Context) -> None:
    """drproduct answers health ok with the package's version."""
    problems = healthy_at(ctx, ctx.package.version)
    if problems:
        raise StepFailed("; ".join(problems))


def verify_completed(ctx: Context, stage: Stage) -> list[str]:
    if stage not in (Stage.UPGRADE, Stage.POSTCHECK):
        return []
    installed = t.current_version(ctx)
    if installed != ctx.package.version:
        return [f"current is {installed}, expected {ctx.package.version}"]
    return healthy_at(ctx, ctx.package.version)


def verify_rolled_back(ctx: Context, stage: Stage) -> list[str]:
    if stage is Stage.TRANSFER:
        return [f"{t.staging_dir(ctx)} still there"] if ctx.exists(t.staging_dir(ctx)) else []
    if stage is not Stage.UPGRADE:
        return []
    old = t.old_version(ctx)
    if old is None:
        return ["no old version known to verify against"]
    problems = []
    installed = t.current_version(ctx)
    if installed != old:
        problems.append(f"current is {installed}, expected the old {old}")
    registered = t.registered_version(ctx)
    if registered != old:
        problems.append(f"service registered for {registered}, expected {old}")
    if ctx.exists(t.release_dir(ctx, ctx.package.version)) and ctx.package.version != old:
        problems.append(f"{t.release_dir(ctx, ctx.package.version)} still there")
    return problems + healthy_at(ctx, old)
