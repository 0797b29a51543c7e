"""dr-monitoring: the monitoring vendor's plugin for drproduct.

A third-party plugin: it runs in its class's isolation (``[class:third_party]
isolation``: a child process today, a container once that is built), and on
failure its error is recorded and the upgrade goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drhost_hookspecs import Category, Context, PluginClass, PluginInfo, Stage, Step, VerifyPhase, hookimpl

from . import _target as t
from . import monitoring

NAME = "dr-monitoring"


@hookimpl
def drhost_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        department="vendor-monitoring",
        plugin_class=PluginClass.THIRD_PARTY,
        description="monitoring config for drproduct and a probe of its health endpoint",
        # Its files are all under the install root (etc/monitoring); as a third_party plugin it may run only
        # these: the product's own control tool (health) and stat (sizes for a timeout report).
        commands=("{root}/current/bin/drproductctl", "stat"),
    )


@hookimpl
def drhost_config_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "config_dir": {
                "type": "string",
                "pattern": r"^etc/[A-Za-z0-9._/-]+$",
                "not": {"pattern": r"\.\."},
                "default": "etc/monitoring",
            },
            "interval_s": {"type": "integer", "minimum": 1, "default": 30},
            "max_latency_ms": {"type": "number", "exclusiveMinimum": 0, "default": 2000},
            "fail_on_slow": {"type": "boolean", "default": False},
        },
    }


@hookimpl
def drhost_stage_steps(stage: Stage, register: Callable[[Step], None]) -> None:
    if stage is Stage.PRECHECK:
        register(Step("check_monitoring_agent", monitoring.check_monitoring_agent, retryable=True, timeout_s=30,
                      category=Category.FILE, timeout_key="precheck.check_monitoring_agent", order=50,
                      description="records the monitoring config as it is"))
    elif stage is Stage.UPGRADE:
        register(Step("update_monitoring_config", monitoring.update_monitoring_config, retryable=True,
                      timeout_s=30, category=Category.FILE, timeout_key="upgrade.update_monitoring_config",
                      order=85, description="monitoring config for the new version",
                      rollback=monitoring.restore_monitoring_config))
    elif stage is Stage.POSTCHECK:
        register(Step("probe_health_endpoint", monitoring.probe_health_endpoint, retryable=True, timeout_s=60,
                      category=Category.SERVICE, timeout_key="postcheck.probe_health_endpoint", order=50,
                      description="health answers ok with the new version; latency recorded"))


@hookimpl
def drhost_rollback(stage: Stage, ctx: Context) -> None:
    if stage is Stage.UPGRADE:
        monitoring.restore_monitoring_config(ctx)


@hookimpl
def drhost_verify(stage: Stage, phase: VerifyPhase, ctx: Context) -> list[str]:
    if stage is not Stage.UPGRADE or t.CONFIG_BEFORE not in ctx.state:
        return []
    before = ctx.state[t.CONFIG_BEFORE]
    exists = ctx.exists(t.monitoring_file(ctx))
    if phase is VerifyPhase.COMPLETED:
        return [] if exists else [f"{t.monitoring_file(ctx)} was not written"]
    now = ctx.read_text(t.monitoring_file(ctx)) if exists else None
    return [] if now == before else [f"{t.monitoring_file(ctx)} differs from before the upgrade"]


@hookimpl
def drhost_collect_context(ctx: Context) -> dict[str, Any]:
    """The monitoring config file this plugin writes: its path and size (the file measurement)."""
    path = t.monitoring_file(ctx)
    result = ctx.run(["stat", "-c", "%s", path], check=False, timeout=5)
    size = result.stdout.strip()
    found: dict[str, Any] = {"config": path, "bytes": int(size) if size.isdigit() else None}
    if found["bytes"] is not None:
        found["measurement"] = {"file_bytes": found["bytes"], "label": "monitoring config"}
    return found
