"""dr-catalog: export, 2.x templates, verification of every job."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from drplugin_ops_catalog.catalog import compare

from drhost_hookspecs import Stage, StepFailed
from plugin_harness import SEED_JOBS, Harness


def _templates(h: Harness) -> dict[str, object]:
    return dict(json.loads((h.root / "etc" / "templates" / "jobs-v2.json").read_text()))


def test_templates_hold_every_exported_job(harness: Harness) -> None:
    """migrate_job_templates writes one template per exported job, with the configured retention."""
    harness.ctxs["dr-catalog"].config = {"default_retention_days": 45}
    harness.run_stages(Stage.PRECHECK, Stage.BACKUP, Stage.TRANSFER, Stage.UPGRADE)
    templates = _templates(harness)["templates"]
    assert isinstance(templates, list) and len(templates) == SEED_JOBS
    assert {t["retention_days"] for t in templates} == {45}


def test_rollback_removes_templates_it_created(harness: Harness) -> None:
    """Rolling back migrate_job_templates removes a templates file that was not there before."""
    harness.run_stages(Stage.PRECHECK, Stage.BACKUP, Stage.TRANSFER)
    harness.run_step(Stage.UPGRADE, "dr-catalog", "migrate_job_templates")
    harness.compensate(Stage.UPGRADE, "rollback")
    assert not (harness.root / "etc" / "templates" / "jobs-v2.json").exists()


def test_verify_fails_on_a_missing_job(harness: Harness) -> None:
    """verify_job_catalog names a job that is gone from the live catalog."""
    harness.run_stages(Stage.PRECHECK, Stage.BACKUP)
    with sqlite3.connect(harness.root / "data" / "catalog.db") as conn:
        conn.execute("DELETE FROM jobs WHERE id = 3")
    with pytest.raises(StepFailed) as caught:
        harness.run_step(Stage.POSTCHECK, "dr-catalog", "verify_job_catalog")
    assert "job 3" in caught.value.message and "missing" in caught.value.message


def test_compare_ignores_added_columns_but_not_changed_ones() -> None:
    """A column 2.x adds is not a difference; a changed schedule is."""
    exported = [{"id": 1, "name": "a", "source_path": "/a", "schedule": "daily"}]
    assert compare(exported, [{**exported[0], "retention_days": 30}]) == []
    assert compare(exported, [{**exported[0], "schedule": "hourly"}]) == ["job 1 (a) changed: schedule"]


def test_collect_context_measures_the_job_export(harness: Harness) -> None:
    """collect_context gives the export's real size as the file measurement, and no figure before it exists."""
    ctx = harness.ctxs["dr-catalog"]
    before = harness.plugins["dr-catalog"].invoke("collect_context", ctx, in_process=True)
    assert before["export"]["bytes"] is None and "measurement" not in before
    harness.run_stages(Stage.PRECHECK, Stage.BACKUP)
    found = harness.plugins["dr-catalog"].invoke("collect_context", ctx, in_process=True)
    size = Path(found["export"]["path"]).stat().st_size
    assert found["measurement"] == {"file_bytes": size, "label": "job export"} and size > 0
