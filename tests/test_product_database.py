"""drproduct-db and drproduct-license: real SQLite catalogs under a freshly installed root."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from product_helpers import add_release, build_all, product_root, rows, tool, tool_json

SCHEMA1_COLUMNS = ("id", "name", "source_path", "schedule")
# Statements of the 1 -> 2 step: ALTER, CREATE replicas, INSERT replicas, CREATE INDEX, PRAGMA user_version.
MIGRATION_2_STATEMENTS = 5


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("packages"))


@pytest.fixture
def root(tmp_path: Path, packages: dict[str, Path]) -> Iterator[Path]:
    """A 1.0.0 install with 200 jobs and the 2.0.0 release staged next to it (as before an upgrade)."""
    with product_root(tmp_path, packages["1.0.0"]) as r:
        add_release(r, packages["2.0.0"])
        yield r


def _jobs_v1(root: Path) -> list[dict[str, object]]:
    return rows(root, f"SELECT {', '.join(SCHEMA1_COLUMNS)} FROM jobs ORDER BY id")


def test_init_seeds_schema_1(root: Path) -> None:
    """init --seed creates the release's schema and the requested number of jobs."""
    assert tool_json(root, "drproduct-db", "version") == {"schema": 1}
    assert tool_json(root, "drproduct-db", "count") == {"jobs": 200}
    assert tool_json(root, "drproduct-db", "check")["ok"] is True


def test_init_twice_refuses(root: Path) -> None:
    """init on an initialised catalog fails instead of touching the data."""
    proc = tool(root, "drproduct-db", "init", "--seed", "5")
    assert proc.returncode == 1 and "already initialised" in proc.stderr
    assert tool_json(root, "drproduct-db", "count") == {"jobs": 200}


def test_migrate_1_to_2_keeps_jobs_and_adds_replicas(root: Path) -> None:
    """migrate --to 2 keeps every job row unchanged, adds retention_days=30 and one replica per job."""
    before = _jobs_v1(root)
    out = tool_json(root, "drproduct-db", "migrate", "--to", "2", release="2.0.0")
    assert out == {"from": 1, "to": 2, "applied": ["002_retention_replicas.sql"]}
    assert _jobs_v1(root) == before
    assert {r["retention_days"] for r in rows(root, "SELECT retention_days FROM jobs")} == {30}
    replicas = rows(root, "SELECT job_id FROM replicas ORDER BY job_id")
    assert [r["job_id"] for r in replicas] == [j["id"] for j in before]
    assert tool_json(root, "drproduct-db", "version", release="2.0.0") == {"schema": 2}
    assert tool_json(root, "drproduct-db", "check", release="2.0.0")["ok"] is True


def test_migrate_to_current_is_noop(root: Path) -> None:
    """migrate to the schema the catalog already has changes nothing and exits 0."""
    assert tool_json(root, "drproduct-db", "migrate", "--to", "1")["applied"] == []
    assert tool_json(root, "drproduct-db", "version") == {"schema": 1}


def test_migrate_beyond_release_refuses(root: Path) -> None:
    """A 1.0.0 release does not ship migration 2, so it refuses to migrate to schema 2."""
    proc = tool(root, "drproduct-db", "migrate", "--to", "2")
    assert proc.returncode == 1 and "up to schema 1" in proc.stderr
    assert tool_json(root, "drproduct-db", "version") == {"schema": 1}


@pytest.mark.parametrize("fail_after", range(MIGRATION_2_STATEMENTS))
def test_failed_migration_is_atomic(root: Path, fail_after: int) -> None:
    """A failure after any statement of the migration leaves schema 1 and every job exactly as before."""
    before = tool_json(root, "drproduct-db", "dump")
    proc = tool(root, "drproduct-db", "migrate", "--to", "2", release="2.0.0",
                env={"DRPRODUCT_FAIL_AFTER_STATEMENTS": str(fail_after)})
    assert proc.returncode == 1
    assert "injected failure" in proc.stderr and "Traceback" not in proc.stderr
    assert tool_json(root, "drproduct-db", "version") == {"schema": 1}
    assert tool_json(root, "drproduct-db", "dump") == before
    assert "replicas" not in tool_json(root, "drproduct-db", "count")


def test_backup_modify_restore(root: Path, tmp_path: Path) -> None:
    """backup then restore brings back exactly the data present at backup time."""
    backup = tmp_path / "b" / "catalog.db"
    out = tool_json(root, "drproduct-db", "backup", "--out", str(backup))
    assert (backup.parent / "catalog.db.sha256").read_text().split()[0] == out["sha256"]
    before = tool_json(root, "drproduct-db", "dump")
    conn = sqlite3.connect(root / "data" / "catalog.db")
    with conn:
        conn.execute("DELETE FROM jobs WHERE id > 10")
    conn.close()
    assert tool_json(root, "drproduct-db", "count") == {"jobs": 10}
    tool_json(root, "drproduct-db", "restore", "--from", str(backup))
    assert tool_json(root, "drproduct-db", "dump") == before


def test_a_retry_after_a_killed_backup_or_restore_leaves_no_stray_file(root: Path, tmp_path: Path) -> None:
    """What a SIGKILLed backup or restore left (its partial copy and journal) is replaced by the next attempt."""
    backup = tmp_path / "b" / "catalog.db"
    backup.parent.mkdir()
    for name in (".catalog.db.partial", ".catalog.db.partial-journal"):
        (backup.parent / name).write_bytes(b"cut mid-copy")
    tool_json(root, "drproduct-db", "backup", "--out", str(backup))
    assert sorted(p.name for p in backup.parent.iterdir()) == ["catalog.db", "catalog.db.sha256"]
    data = root / "data"
    before = sorted(p.name for p in data.iterdir())
    for name in (".catalog.db.restoring", ".catalog.db.restoring-journal"):
        (data / name).write_bytes(b"cut mid-copy")
    tool_json(root, "drproduct-db", "restore", "--from", str(backup))
    assert sorted(p.name for p in data.iterdir()) == before


def test_restore_bad_checksum_refuses(root: Path, tmp_path: Path) -> None:
    """restore refuses a backup whose sha256 does not match, leaving the live catalog untouched."""
    backup = tmp_path / "catalog.bak"
    tool_json(root, "drproduct-db", "backup", "--out", str(backup))
    with backup.open("ab") as fh:
        fh.write(b"tampered")
    conn = sqlite3.connect(root / "data" / "catalog.db")
    with conn:
        conn.execute("DELETE FROM jobs WHERE id > 3")
    conn.close()
    proc = tool(root, "drproduct-db", "restore", "--from", str(backup))
    assert proc.returncode == 1 and "checksum mismatch" in proc.stderr
    assert tool_json(root, "drproduct-db", "count") == {"jobs": 3}


def test_restore_without_checksum_file_refuses(root: Path, tmp_path: Path) -> None:
    """restore refuses a backup that has no FILE.sha256 next to it."""
    backup = tmp_path / "catalog.bak"
    tool_json(root, "drproduct-db", "backup", "--out", str(backup))
    (tmp_path / "catalog.bak.sha256").unlink()
    proc = tool(root, "drproduct-db", "restore", "--from", str(backup))
    assert proc.returncode == 1 and ".sha256 missing" in proc.stderr


def test_licence_reissue_keeps_licensee(root: Path) -> None:
    """issue --series re-signs for the new series and keeps the licensee."""
    old = tool_json(root, "drproduct-license", "show")
    new = tool_json(root, "drproduct-license", "issue", "--series", "2.x")
    assert (new["series"], new["licensee"], new["valid"]) == ("2.x", old["licensee"], True)
    assert new["signature"] != old["signature"]


def test_tampered_licence_is_invalid(root: Path) -> None:
    """Editing a licence by hand breaks its signature: show exits 1 and reports valid=false."""
    path = root / "etc" / "license.lic"
    lic = json.loads(path.read_text())
    lic["series"] = "2.x"
    path.write_text(json.dumps(lic))
    proc = tool(root, "drproduct-license", "show")
    assert proc.returncode == 1 and json.loads(proc.stdout)["valid"] is False


def test_db_bad_input_is_one_line(root: Path) -> None:
    """A bad argument gives exit 2 and one stderr line, never a traceback."""
    proc = tool(root, "drproduct-db", "migrate", "--to", "two")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "Traceback" not in proc.stderr
