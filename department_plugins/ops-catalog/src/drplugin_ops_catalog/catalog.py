"""The job catalog: exported before the upgrade, turned into 2.x job templates, checked after.

Nothing of 2.0.0 depends on the templates: when this plugin fails, the upgrade completes without them.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from drhost_hookspecs import Context, StepFailed

from . import _target as t

#: The job columns of schema 1: what every later schema must keep as it was.
JOB_FIELDS = ("id", "name", "source_path", "schedule")


def export_job_catalog(ctx: Context) -> None:
    """Every job row of the live catalog saved as JSON in the run's backup directory."""
    jobs = t.dump(ctx).get("jobs", [])
    out = t.export_file(ctx)
    ctx.write_text(out, json.dumps({"jobs": jobs}, indent=2, sort_keys=True) + "\n", mode=0o600)
    ctx.state[t.EXPORT] = {"path": out, "jobs": len(jobs)}
    ctx.log(f"{len(jobs)} jobs exported to {out}")


def _exported_jobs(ctx: Context) -> list[dict[str, Any]]:
    export = ctx.state.get(t.EXPORT)
    source = str(export.get("path", "")) if isinstance(export, dict) else ""
    if not source or not ctx.exists(source):
        raise StepFailed("no job catalog export in this run (backup stage not done?)", retryable=False)
    jobs = json.loads(ctx.read_text(source)).get("jobs", [])
    return [dict(job) for job in jobs]


def templates_of(jobs: list[dict[str, Any]], retention_days: int) -> dict[str, Any]:
    """2.x templates: one per job, with the retention 2.x adds (the job's own when it has one)."""
    return {
        "format": 2,
        "templates": [
            {
                "name": job["name"],
                "source_path": job["source_path"],
                "schedule": job["schedule"],
                "retention_days": int(job.get("retention_days", retention_days)),
            }
            for job in sorted(jobs, key=lambda j: int(j["id"]))
        ],
    }


def migrate_job_templates(ctx: Context) -> None:
    """Job templates for 2.x written from the export: the same export gives the same file."""
    target = t.templates_file(ctx)
    # What was there before the first attempt, so rollback can put it back; later attempts keep it.
    if t.TEMPLATES_BEFORE not in ctx.state:
        ctx.state[t.TEMPLATES_BEFORE] = ctx.read_text(target) if ctx.exists(target) else None
        # The directory too: rollback removes it only when this step created it.
        ctx.state[t.TEMPLATES_DIR_CREATED] = not ctx.exists(posixpath.dirname(target))
        ctx.checkpoint()
    retention = int(ctx.config.get("default_retention_days", 30))
    document = templates_of(_exported_jobs(ctx), retention)
    ctx.write_text(target, json.dumps(document, indent=2, sort_keys=True) + "\n", mode=0o640)
    ctx.log(f"{len(document['templates'])} job templates written to {target}")


def restore_job_templates(ctx: Context) -> None:
    if t.TEMPLATES_BEFORE not in ctx.state:
        return
    before = ctx.state[t.TEMPLATES_BEFORE]
    target = t.templates_file(ctx)
    if before is None:
        ctx.remove(target)
        if ctx.state.get(t.TEMPLATES_DIR_CREATED):
            ctx.run(["rmdir", "--ignore-fail-on-non-empty", "--", posixpath.dirname(target)], check=False)
    else:
        ctx.write_text(target, str(before), mode=0o640)


def remove_export(ctx: Context) -> None:
    """The backup stage rolled back: the job export goes, and the run's backup directory when left empty."""
    out = t.export_file(ctx)
    ctx.remove(out)
    ctx.state.pop(t.EXPORT, None)
    ctx.run(["rmdir", "--ignore-fail-on-non-empty", "--", posixpath.dirname(out)], check=False)


def compare(exported: Sequence[Mapping[str, Any]], live: Sequence[Mapping[str, Any]]) -> list[str]:
    """Jobs of the export missing or changed in the live catalog (columns 2.x added are ignored)."""
    by_id = {int(job["id"]): job for job in live}
    problems = []
    for job in exported:
        now = by_id.get(int(job["id"]))
        if now is None:
            problems.append(f"job {job['id']} ({job.get('name')}) is missing")
            continue
        changed = [f for f in JOB_FIELDS if f in job and now.get(f) != job[f]]
        if changed:
            problems.append(f"job {job['id']} ({job.get('name')}) changed: {', '.join(changed)}")
    return problems


def verify_job_catalog(ctx: Context) -> None:
    """Every exported job is in the live catalog with the same name, source and schedule."""
    exported = _exported_jobs(ctx)
    problems = compare(exported, t.dump(ctx).get("jobs", []))
    if problems:
        shown = "; ".join(problems[:10]) + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
        raise StepFailed(f"{len(problems)} of {len(exported)} jobs differ after the upgrade: {shown}",
                         retryable=False)
    ctx.log(f"all {len(exported)} jobs intact")
