"""dr-database against a real catalog: snapshots, restore only when needed, verification, diagnostics."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from drplugin_dba_database import snapshot

from drhost_hookspecs import Stage, StepFailed, VerifyPhase
from plugin_harness import SEED_JOBS, Harness


def _db(h: Harness) -> Path:
    return h.root / "data" / "catalog.db"


def test_precheck_records_schema_and_counts(harness: Harness) -> None:
    """check_database records the old schema and every table's row count."""
    harness.run_stage(Stage.PRECHECK)
    state = harness.ctxs["dr-database"].state
    assert state["old_schema"] == 1 and state["old_version"] == "1.0.0"
    assert state["tables"]["jobs"]["count"] == SEED_JOBS


def test_restore_is_skipped_when_catalog_unchanged(harness: Harness) -> None:
    """Rolling back upgrade_db_schema on an untouched catalog does not replace the file."""
    harness.run_stages(Stage.PRECHECK, Stage.BACKUP)
    inode = _db(harness).stat().st_ino
    harness.plugins["dr-database"].invoke("rollback_step", harness.ctxs["dr-database"], stage=Stage.UPGRADE,
                                          step="upgrade_db_schema", in_process=True)
    assert _db(harness).stat().st_ino == inode


def test_restore_brings_back_changed_rows(harness: Harness) -> None:
    """A catalog whose rows differ from the backup at the old schema is restored from the backup."""
    harness.run_stages(Stage.PRECHECK, Stage.BACKUP)
    with sqlite3.connect(_db(harness)) as conn:
        conn.execute("DELETE FROM jobs WHERE id = 1")
    harness.plugins["dr-database"].invoke("rollback_step", harness.ctxs["dr-database"], stage=Stage.UPGRADE,
                                          step="upgrade_db_schema", in_process=True)
    assert harness.tool_json("drproduct-db", "count")["jobs"] == SEED_JOBS
    assert harness.verify(Stage.UPGRADE, VerifyPhase.ROLLED_BACK).get("dr-database") is None


def test_verify_data_detects_a_changed_row(harness: Harness) -> None:
    """verify_data fails, without retry, when a job row changed during the upgrade."""
    harness.run_stages(Stage.PRECHECK, Stage.BACKUP, Stage.TRANSFER, Stage.UPGRADE)
    with sqlite3.connect(_db(harness)) as conn:
        conn.execute("UPDATE jobs SET schedule = 'never' WHERE id = 2")
    with pytest.raises(StepFailed) as caught:
        harness.run_step(Stage.POSTCHECK, "dr-database", "verify_data")
    assert "jobs: rows changed" in caught.value.message and not caught.value.retryable


def test_migration_keeps_old_columns_digest(harness: Harness) -> None:
    """After the migration, the jobs rows digested over the schema-1 columns equal the precheck digest."""
    harness.run_stages(Stage.PRECHECK, Stage.BACKUP, Stage.TRANSFER, Stage.UPGRADE)
    before = harness.ctxs["dr-database"].state["tables"]
    dump = harness.tool_json("drproduct-db", "dump")
    assert set(dump) >= {"jobs", "replicas"} and "retention_days" in dump["jobs"][0]
    assert snapshot.differences(before, dump) == []


def test_collect_context_reports_size_schema_counts(harness: Harness) -> None:
    """collect_context answers the catalog's size, schema and row counts."""
    found = harness.plugins["dr-database"].invoke("collect_context", harness.ctxs["dr-database"], in_process=True)
    assert found["files"]["catalog.db"] == _db(harness).stat().st_size
    assert found["schema"] == {"schema": 1} and found["row_counts"]["jobs"] == SEED_JOBS


def test_collect_context_names_processes_holding_the_catalog(harness: Harness) -> None:
    """collect_context lists each process with the catalog open (pid and command) and the catalog's size."""
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
                               "c.execute('BEGIN IMMEDIATE'); time.sleep(60)", str(_db(harness))])
    try:
        deadline = time.monotonic() + 10
        sessions: list[dict[str, object]] = []
        while time.monotonic() < deadline and not any(s["pid"] == holder.pid for s in sessions):
            found = harness.plugins["dr-database"].invoke("collect_context", harness.ctxs["dr-database"],
                                                          in_process=True)
            sessions = found["sessions"]
        assert any(s["pid"] == holder.pid and "BEGIN IMMEDIATE" in str(s["command"]) for s in sessions), sessions
        assert found["measurement"] == {"data_bytes": sum(found["files"].values()), "label": "catalog"}
    finally:
        holder.kill()
        holder.wait()


def test_plugin_rollback_does_nothing_when_migration_never_started(harness: Harness) -> None:
    """The plugin-wide rollback leaves the catalog alone when upgrade_db_schema never began."""
    harness.run_stages(Stage.PRECHECK, Stage.BACKUP)
    with sqlite3.connect(_db(harness)) as conn:
        conn.execute("DELETE FROM jobs WHERE id = 1")
    harness.plugins["dr-database"].invoke("rollback", harness.ctxs["dr-database"], stage=Stage.UPGRADE,
                                          in_process=True)
    assert harness.tool_json("drproduct-db", "count")["jobs"] == SEED_JOBS - 1
