"""The whole demo upgrade, end to end: real daemons, real SQLite, real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import CLI_TIMEOUT_S, TargetProbe, demo_roots, pids_under, run_json
from state_rows import read_state

pytestmark = [pytest.mark.podman, pytest.mark.slow, pytest.mark.integration]

TARGETS = ["dr-demo-1", "dr-demo-2", "dr-demo-3"]
STEP_FIELDS = ("stage", "name", "plugin", "class", "isolation", "retryable", "timeout_key", "timeout_s", "category")


def _cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DRHOST_STATE_DIR": str(state_dir), "DRHOST_INSTANT_RETRIES": "1"}
    return subprocess.run([sys.executable, "-m", "drhost", *args], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def backup_jobs(root: Path, run_id: str) -> list[tuple[Any, ...]]:
    """The job rows as they were before the upgrade: the dr-database plugin's backup of the catalog."""
    with sqlite3.connect(root / "backup" / run_id / "catalog.db") as db:
        return db.execute("SELECT id, name, source_path, schedule FROM jobs ORDER BY id").fetchall()


@pytest.fixture(scope="module")
def fresh_seed_jobs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, ...]]:
    """The job rows of a fresh 1.0.0 install (what every demo target starts with)."""
    from drhost.demo import install
    from drhost.packaging import build_package

    base = tmp_path_factory.mktemp("seed")
    install.install_fresh(build_package("1.0.0", base), base / "R", install.free_port())
    return TargetProbe(base / "R").jobs()


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """One ``upgrade --demo --json --keep`` run shared by the read-only checks of this module."""
    state_dir = tmp_path_factory.mktemp("kept") / "state"
    state_dir.mkdir()
    try:
        proc = _cli(state_dir, "upgrade", "--demo", "--json", "--keep")
        assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
        yield state_dir, run_json(proc)
    finally:
        for pid in pids_under(state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_every_target_succeeds_at_new_version(kept_run: tuple[Path, dict[str, Any]]) -> None:
    """A demo upgrade ends succeeded with every target at 2.0.0, on disk and in the summary."""
    state_dir, summary = kept_run
    assert summary["status"] == "succeeded"
    assert sorted(summary["targets"]) == TARGETS
    assert {t["status"] for t in summary["targets"].values()} == {"succeeded"}
    assert {t["version"] for t in summary["targets"].values()} == {"2.0.0"}
    roots = demo_roots(state_dir)
    assert len(roots) == 3
    for root in roots:
        assert TargetProbe(root).current_version == "2.0.0"
        assert os.readlink(root / "current") == "releases/2.0.0"


def test_daemons_report_new_version_healthy(kept_run: tuple[Path, dict[str, Any]]) -> None:
    """After the upgrade each target's running daemon says version 2.0.0, schema 2, status ok."""
    state_dir, _ = kept_run
    for root in demo_roots(state_dir):
        health = TargetProbe(root).health()
        assert health is not None, f"{root}: daemon not reachable"
        assert health["status"] == "ok", health
        assert health["version"] == "2.0.0"
        assert health["schema"] == 2
        assert health["jobs"] == 200


def test_job_rows_survive_and_replicas_exist(kept_run: tuple[Path, dict[str, Any]],
                                            fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """Every job row from before the upgrade survives unchanged; the schema-2 replicas table exists."""
    state_dir, summary = kept_run
    for root in demo_roots(state_dir):
        probe = TargetProbe(root)
        before = backup_jobs(root, summary["run_id"])
        assert before == fresh_seed_jobs, "the backup does not hold the 1.0.0 catalog"
        assert probe.jobs() == before
        assert probe.schema() == 2
        assert {"jobs", "replicas"} <= probe.tables()
        with sqlite3.connect(root / "data" / "catalog.db") as db:
            assert db.execute("SELECT count(*) FROM replicas").fetchone()[0] == len(before)
            assert db.execute("SELECT count(*) FROM jobs WHERE retention_days = 30").fetchone()[0] == len(before)


def test_events_have_required_fields(kept_run: tuple[Path, dict[str, Any]]) -> None:
    """Every journal line has ts/event/run_id; step events also name target, stage, step and plugin."""
    _state_dir, summary = kept_run
    events = read_events(Path(summary["run_dir"]))
    assert events, "empty journal"
    step_events = 0
    for event in events:
        assert isinstance(event.get("ts"), float), event
        assert event.get("event"), event
        assert event.get("run_id") == summary["run_id"], event
        if event["event"].startswith("step."):
            step_events += 1
            for key in ("target", "stage", "step", "plugin"):
                assert event.get(key), f"{key} missing in {event}"
    assert step_events >= 3 * 27 * 2
    names = [e["event"] for e in events]
    # What the run removed that killed controllers left (of other runs too) is said before it starts.
    cleanup = ("containers.removed", "cgroups.removed")
    assert next(n for n in names if n not in cleanup) == "run.started" and names[-1] == "run.finished"
    completed = {(e["target"], e["step"]) for e in events if e["event"] == "step.completed"}
    assert len(completed) == 3 * 27


def test_run_files_are_private(kept_run: tuple[Path, dict[str, Any]]) -> None:
    """The run directory and every directory in it are 0700, every file in them (state.db, events.jsonl,
    the command logs, ...) 0600."""
    _, summary = kept_run
    run_dir = Path(summary["run_dir"])
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(run_dir.parent.stat().st_mode) == 0o700
    entries = list(run_dir.rglob("*"))
    assert {"state.db", "events.jsonl"} <= {f.name for f in entries}
    for path in entries:
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, f"{path.name}: {oct(path.stat().st_mode)}"


def test_state_records_every_step_done(kept_run: tuple[Path, dict[str, Any]]) -> None:
    """The run state has the run succeeded and each target with every planned step done, versions before/after."""
    _, summary = kept_run
    state = read_state(Path(summary["run_dir"]))
    assert state["status"] == "succeeded"
    keys = {f"{s['stage']}/{s['plugin']}/{s['name']}" for s in state["plan"]["steps"]}
    for name in TARGETS:
        record = state["targets"][name]
        assert record["status"] == "succeeded"
        assert (record["version_before"], record["version"]) == ("1.0.0", "2.0.0")
        assert set(record["steps"]) == keys
        assert {s["status"] for s in record["steps"].values()} == {"done"}
        assert record["errors"] == [] and record["skipped_plugins"] == {}


def test_every_key_of_a_real_target_record_is_declared_by_the_state_model(
        kept_run: tuple[Path, dict[str, Any]]) -> None:
    """A real run's target records use only the keys drhost/state/_model.py declares (target, step, rollback):
    the model describes what is stored, and a key written outside it fails here as mypy fails it in the code."""
    from drhost.state import RollbackRecord, StepRecord, TargetRecord

    _, summary = kept_run
    state = read_state(Path(summary["run_dir"]))
    for record in state["targets"].values():
        assert set(record) <= TargetRecord.__optional_keys__
        assert set(record["rollback"]) <= RollbackRecord.__optional_keys__
        for step in record["steps"].values():
            assert set(step) <= StepRecord.__optional_keys__, set(step) - StepRecord.__optional_keys__


def test_a_key_the_model_does_not_declare_is_refused_where_it_is_written() -> None:
    """checked_keys passes declared keys and raises TypeError naming a misspelt one."""
    from drhost.state import TargetRecord, checked_keys

    assert checked_keys(TargetRecord, {"status": "x", "version": None}) == {"status": "x", "version": None}
    with pytest.raises(TypeError, match="TargetRecord has no key verison"):
        checked_keys(TargetRecord, {"verison": "2.0.0"})


def test_status_command_reports_succeeded(kept_run: tuple[Path, dict[str, Any]]) -> None:
    """``drhost status RUN --json`` reports the run and every target succeeded with all steps done."""
    state_dir, summary = kept_run
    proc = _cli(state_dir, "status", summary["run_id"], "--json")
    assert proc.returncode == 0, proc.stderr
    report = run_json(proc)
    assert report["run_id"] == summary["run_id"]
    assert report["status"] == "succeeded"
    assert [t["target"] for t in report["targets"]] == TARGETS
    for target in report["targets"]:
        assert target["status"] == "succeeded"
        assert target["done"] == target["total"] == 27
        assert target["remaining"] == []
        assert target["version"] == "2.0.0"


def test_without_keep_no_process_is_left(drhost: Any, state_dir: Path, leftover_processes: Any) -> None:
    """Without --keep a finished demo run leaves no daemon or worker process running."""
    proc = drhost("upgrade", "--demo", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run_json(proc)["status"] == "succeeded"
    roots = demo_roots(state_dir)
    assert len(roots) == 3
    for root in roots:
        assert TargetProbe(root).current_version == "2.0.0"
        assert TargetProbe(root).health() is None, "daemon still answers"
    assert leftover_processes(state_dir) == []


def test_plan_steps_have_required_fields(drhost: Any) -> None:
    """``drhost plan --demo --json`` lists every step with stage, name, plugin, class, isolation and timeouts."""
    proc = drhost("plan", "--demo", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = run_json(proc)
    assert plan["targets"] == TARGETS
    assert len(plan["steps"]) == 27
    for step in plan["steps"]:
        missing = [f for f in STEP_FIELDS if f not in step or step[f] in (None, "")]
        assert not missing, f"{step.get('name')}: missing {missing}"
        assert step["timeout_s"] > 0
        assert step["timeout_key"] == f"{step['stage']}.{step['name']}"
        assert isinstance(step["retryable"], bool)
    assert {s["stage"] for s in plan["steps"]} == {"precheck", "backup", "transfer", "upgrade", "postcheck"}
    by_plugin = {s["plugin"]: (s["class"], s["isolation"]) for s in plan["steps"]}
    assert by_plugin == {"dr-core": ("core", "thread"), "dr-database": ("database", "process"),
                         "dr-catalog": ("business", "process"), "dr-monitoring": ("third_party", "container")}
