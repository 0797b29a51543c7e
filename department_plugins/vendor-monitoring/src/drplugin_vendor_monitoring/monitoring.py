"""The monitoring agent's view of drproduct: its config file and a probe of /health."""

from __future__ import annotations

import json
import time

from drhost_hookspecs import Context, StepFailed

from . import _target as t


def check_monitoring_agent(ctx: Context) -> None:
    """Records the monitoring config as it is, so a rollback can put exactly that back."""
    directory, config = t.monitoring_dir(ctx), t.monitoring_file(ctx)
    existed = ctx.exists(directory)
    # Recorded on the first call only: a repeated precheck must not mistake our own file for the original.
    if t.CONFIG_BEFORE not in ctx.state:
        ctx.state[t.DIR_EXISTED] = existed
        ctx.state[t.CONFIG_BEFORE] = ctx.read_text(config) if ctx.exists(config) else None
    ctx.log(f"monitoring config dir {directory} {'exists' if existed else 'will be created'}")


def config_document(ctx: Context) -> dict[str, object]:
    return {
        "product": ctx.package.product,
        "version": ctx.package.version,
        "health_url": t.health_url(ctx),
        "interval_s": int(ctx.config.get("interval_s", 30)),
        "target": ctx.target.name,
    }


def update_monitoring_config(ctx: Context) -> None:
    """The monitoring config for the new version; written whole, so a second run writes the same."""
    if t.CONFIG_BEFORE not in ctx.state:
        check_monitoring_agent(ctx)
    text = json.dumps(config_document(ctx), indent=2, sort_keys=True) + "\n"
    ctx.write_text(t.monitoring_file(ctx), text, mode=0o644)


def restore_monitoring_config(ctx: Context) -> None:
    if t.CONFIG_BEFORE not in ctx.state:
        return
    before = ctx.state[t.CONFIG_BEFORE]
    if before is not None:
        ctx.write_text(t.monitoring_file(ctx), str(before), mode=0o644)
        return
    ctx.remove(t.monitoring_file(ctx))
    if not ctx.state.get(t.DIR_EXISTED, True):
        ctx.remove(t.monitoring_dir(ctx), recursive=True)


def probe_health_endpoint(ctx: Context) -> None:
    """``drproductctl health`` answers ok with the new version; its latency is recorded."""
    started = time.monotonic()
    result = ctx.run([*t.ctl(ctx), "health"], check=False)
    latency_ms = round((result.duration_s or (time.monotonic() - started)) * 1000, 1)
    ctx.state[t.LATENCY_MS] = latency_ms
    if not result.ok:
        raise StepFailed(f"health probe failed (exit {result.returncode}): {result.stdout.strip()[:300]}")
    body = json.loads(result.stdout)
    if body.get("version") != ctx.package.version:
        raise StepFailed(f"health answers version {body.get('version')}, expected {ctx.package.version}")
    limit = float(ctx.config.get("max_latency_ms", 2000))
    if latency_ms > limit:
        message = f"health answered in {latency_ms} ms, over the {limit} ms limit"
        if ctx.config.get("fail_on_slow", False):
            raise StepFailed(message)
        ctx.log(message, level="warning")
    ctx.log(f"health ok in {latency_ms} ms")
