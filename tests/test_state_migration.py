"""Runs written by an earlier drhost (``state.json``, format 1; a database with each target's steps inside its
row, format 2): read as they are, moved into the current state database by the first controller that writes
them, and resumed to the end."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import TargetProbe, demo_roots, pids_under
from drhost.state import RunState, StateFile
from state_rows import read_state

RUN_ID = "20261205-120000-abcdef"


def format1_run(state_dir: Path, body: dict[str, Any]) -> Path:
    """A run directory as drhost before the state database left it: state.json and state.json.1."""
    run_dir = state_dir / "runs" / RUN_ID
    run_dir.mkdir(parents=True, mode=0o700)
    file = StateFile(run_dir / "state.json")
    file.write({**body, "status": "created"})
    file.write(body)
    return run_dir


BODY = {"run_id": RUN_ID, "status": "running", "created": 1.0,
        "targets": {"t1": {"status": "running", "steps": {}}, "t2": {"status": "pending", "steps": {}}}}


def test_a_format1_run_is_read_as_it_is_and_not_migrated_by_a_reader(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a format-1 run reads state.json; reading alone writes nothing (status never migrates)."""
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path))
    run_dir = format1_run(tmp_path, BODY)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    state = RunState.open(run_dir)
    assert state.snapshot() == BODY and state.path == run_dir / "state.json"
    with state.reading_target("t1") as record:
        assert record["status"] == "running"
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_the_first_write_moves_a_format1_run_into_the_database(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The first change of a format-1 run writes the whole state into state.db, renames the old files aside
    (kept for the operator), and from then on the database is what is read."""
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path))
    run_dir = format1_run(tmp_path, BODY)
    state = RunState.open(run_dir)
    with state.mutate_target("t2") as record:
        record["status"] = "running"
    assert state.path == run_dir / "state.db"
    assert sorted(p.name for p in run_dir.iterdir() if "wal" not in p.name and "shm" not in p.name) == [
        "state.db", "state.json.1.migrated", "state.json.migrated"]
    expected = {**BODY, "targets": {**BODY["targets"], "t2": {"status": "running", "steps": {}}}}
    assert read_state(run_dir) == expected
    assert RunState.open(run_dir).snapshot() == expected
    assert json.loads((run_dir / "state.json.migrated").read_text())["body"] == BODY


def test_a_migration_killed_before_the_old_files_moved_reads_the_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A controller killed after the database appeared but before state.json was renamed: the database,
    which holds every change since, is what is read; the stale state.json is not."""
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path))
    run_dir = format1_run(tmp_path, BODY)
    state = RunState.open(run_dir)
    with state.mutate() as body:
        body["status"] = "finished"
    state.close()
    os.replace(run_dir / "state.json.migrated", run_dir / "state.json")
    assert RunState.open(run_dir).get("status") == "finished"


def test_a_migration_killed_while_building_the_database_leaves_the_run_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A half-built database (state.db.new) is not the run's state: state.json is read, and the next write
    builds the database afresh."""
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path))
    run_dir = format1_run(tmp_path, BODY)
    (run_dir / "state.db.new").write_bytes(b"SQLite format 3\x00 torn")
    state = RunState.open(run_dir)
    assert state.snapshot() == BODY
    with state.mutate() as body:
        body["status"] = "finished"
    assert not (run_dir / "state.db.new").exists()
    assert read_state(run_dir)["status"] == "finished"


FORMAT2_TARGETS = {"t1": {"status": "running", "steps": {"precheck/p/a": {"status": "done", "seq": 1},
                                                          "precheck/p/b": {"status": "started", "seq": 2}}},
                   "t2": {"status": "pending", "steps": {}}}


def format2_run(state_dir: Path) -> Path:
    """A run directory as the drhost of format 2 left it: state.db with each target's steps inside its row."""
    run_dir = state_dir / "runs" / RUN_ID
    run_dir.mkdir(parents=True, mode=0o700)
    with contextlib.closing(sqlite3.connect(run_dir / "state.db", isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("CREATE TABLE record (kind TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, checksum TEXT "
                   "NOT NULL, previous TEXT, previous_checksum TEXT, PRIMARY KEY (kind, name))")
        db.execute("INSERT INTO meta VALUES ('format', '2')")
        run = {key: value for key, value in BODY.items() if key != "targets"}
        for kind, name, body in [("run", "", run), *(("target", n, r) for n, r in FORMAT2_TARGETS.items())]:
            text = json.dumps(body, sort_keys=True, separators=(",", ":"))
            db.execute("INSERT INTO record (kind, name, body, checksum) VALUES (?, ?, ?, ?)",
                       (kind, name, text, hashlib.sha256(text.encode()).hexdigest()))
    return run_dir


def test_a_format2_run_is_read_with_its_steps_and_moved_to_step_rows_by_its_first_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A format-2 database is read as it is (a reader writes nothing); the first change rebuilds it in the
    current format, every step in a row of its own and nothing lost, and what is read after is the same."""
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path))
    run_dir = format2_run(tmp_path)
    expected = {**BODY, "targets": FORMAT2_TARGETS}
    before = (run_dir / "state.db").read_bytes()
    state = RunState.open(run_dir)
    assert state.snapshot() == expected
    assert (run_dir / "state.db").read_bytes() == before
    with state.mutate_target("t2", steps=()) as record:
        record["status"] = "running"
    state.close()
    expected["targets"]["t2"]["status"] = "running"
    with contextlib.closing(sqlite3.connect(run_dir / "state.db")) as db:
        assert db.execute("SELECT value FROM meta").fetchone() == ("3",)
        steps = {name: json.loads(body) for name, body in db.execute("SELECT name, body FROM record WHERE kind = "
                                                                     "'step'")}
    assert steps == {json.dumps(["t1", key], separators=(",", ":")): entry
                     for key, entry in FORMAT2_TARGETS["t1"]["steps"].items()}
    assert RunState.open(run_dir).snapshot() == expected == read_state(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["state.db"]


@pytest.mark.podman
@pytest.mark.integration
def test_a_killed_format1_run_resumes_to_a_whole_target(tmp_path: Path) -> None:
    """A real run killed mid-upgrade, its state turned into what an earlier drhost wrote: ``drhost resume``
    finishes it at 2.0.0 (read from the target) and its state is then in the database."""
    state_dir = tmp_path / "state"
    env = {**os.environ, "DRHOST_STATE_DIR": str(state_dir), "DRHOST_INSTANT_RETRIES": "1"}
    try:
        killed = subprocess.run(
            [sys.executable, "-m", "drhost", "upgrade", "--demo", "--demo-targets", "1", "--json"],
            capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
            env={**env, "DRHOST_FAILPOINT": "step.started:upgrade/dr-core/install_program_files"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        (run_dir,) = (state_dir / "runs").iterdir()
        body = read_state(run_dir)
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            (run_dir / name).unlink(missing_ok=True)
        StateFile(run_dir / "state.json").write(body)
        resumed = subprocess.run([sys.executable, "-m", "drhost", "resume", run_dir.name, "--json"],
                                 capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL, env=env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert json.loads(resumed.stdout)["status"] == "succeeded"
        (root,) = demo_roots(state_dir)
        assert TargetProbe(root).current_version == "2.0.0"
        assert read_state(run_dir)["targets"]["dr-demo-1"]["status"] == "succeeded"
        assert (run_dir / "state.json.migrated").exists() and not (run_dir / "state.json").exists()
    finally:
        for pid in pids_under(state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
