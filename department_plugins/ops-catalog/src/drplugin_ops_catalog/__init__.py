"""dr-catalog: the operations department's plugin for drproduct's job catalog.

A business plugin: on failure it is skipped and the upgrade goes on, so nothing
2.0.0 needs depends on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drhost_hookspecs import Category, Context, PluginClass, PluginInfo, Stage, Step, VerifyPhase, hookimpl

from . import _target as t
from . import catalog

NAME = "dr-catalog"


@hookimpl
def drhost_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        department="operations",
        plugin_class=PluginClass.BUSINESS,
        description="job catalog export, 2.x job templates and job verification",
    )


@hookimpl
def drhost_config_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "default_retention_days": {"type": "integer", "minimum": 1, "maximum": 3650, "default": 30},
            "templates_path": {
                "type": "string",
                "pattern": r"^etc/[A-Za-z0-9._/-]+\.json$",
                "not": {"pattern": r"\.\."},
                "default": "etc/templates/jobs-v2.json",
            },
        },
    }


@hookimpl
def drhost_stage_steps(stage: Stage, register: Callable[[Step], None]) -> None:
    if stage is Stage.BACKUP:
        register(Step("export_job_catalog", catalog.export_job_catalog, retryable=True, timeout_s=300,
                      category=Category.DATABASE, timeout_key="backup.export_job_catalog", order=30,
                      description="job rows saved as JSON in the run's backup directory"))
    elif stage is Stage.UPGRADE:
        register(Step("migrate_job_templates", catalog.migrate_job_templates, retryable=True, timeout_s=60,
                      category=Category.FILE, timeout_key="upgrade.migrate_job_templates", order=75,
                      description="2.x job templates written from the export",
                      rollback=catalog.restore_job_templates))
    elif stage is Stage.POSTCHECK:
        register(Step("verify_job_catalog", catalog.verify_job_catalog, retryable=True, timeout_s=120,
                      category=Category.DATABASE, timeout_key="postcheck.verify_job_catalog", order=30,
                      description="every exported job still in the live catalog, unchanged"))


@hookimpl
def drhost_rollback(stage: Stage, ctx: Context) -> None:
    if stage is Stage.UPGRADE:
        catalog.restore_job_templates(ctx)
    elif stage is Stage.BACKUP:
        # Only reached when the backup stage itself failed ([stages.backup] rollback_when = stage_failed).
        catalog.remove_export(ctx)


@hookimpl
def drhost_verify(stage: Stage, phase: VerifyPhase, ctx: Context) -> list[str]:
    if stage is not Stage.UPGRADE:
        return []
    exists = ctx.exists(t.templates_file(ctx))
    if phase is VerifyPhase.COMPLETED:
        return [] if exists else [f"{t.templates_file(ctx)} was not written"]
    if ctx.state.get(t.TEMPLATES_BEFORE, "absent") is None and exists:
        return [f"{t.templates_file(ctx)} still there after rollback"]
    return []


@hookimpl
def drhost_collect_context(ctx: Context) -> dict[str, Any]:
    """Sizes of the job export (what the template migration reads) and of the templates file it writes."""
    found: dict[str, Any] = {}
    for key, file in (("export", t.export_file(ctx)), ("templates", t.templates_file(ctx))):
        result = ctx.run(["stat", "-c", "%s", file], check=False, timeout=5)
        size = result.stdout.strip()
        found[key] = {"path": file, "bytes": int(size) if size.isdigit() else None}
    if found["export"]["bytes"] is not None:
        found["measurement"] = {"file_bytes": found["export"]["bytes"], "label": "job export"}
    return found
