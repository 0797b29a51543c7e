"""Resume after the controller died (SIGKILL) or was stopped (SIGTERM) mid-upgrade."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import TargetProbe, run_json
from state_rows import read_state

pytestmark = [pytest.mark.podman, pytest.mark.slow, pytest.mark.integration]

TARGETS = ["dr-demo-1", "dr-demo-2", "dr-demo-3"]
DB_STEP = "upgrade/dr-database/upgrade_db_schema"
#: The first call of upgrade_db_schema on each target sleeps long enough to be stopped mid-step. The
#: fault's hit count is checkpointed before it strikes, so the resumed call is not slowed again.
SLOW_ONCE = ("--set", "run.forks=3", "--set", "run.kill_grace_s=0.5",
             "--set", "plugin.dr-database.fault=upgrade_db_schema:slow:1",
             "--set", "plugin.dr-database.fault_delay_s=60")


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def fresh_seed_jobs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, ...]]:
    """The job rows of a fresh 1.0.0 install (what every demo target starts with)."""
    from drhost.demo import install
    from drhost.packaging import build_package

    base = tmp_path_factory.mktemp("seed")
    install.install_fresh(build_package("1.0.0", base), base / "R", install.free_port())
    return TargetProbe(base / "R").jobs()


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (workers run in their own sessions, so not its group)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def start_upgrade(state_dir: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DRHOST_STATE_DIR": str(state_dir), "DRHOST_INSTANT_RETRIES": "1"}
    return subprocess.Popen([sys.executable, "-m", "drhost", "upgrade", "--demo", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_db_step(state_dir: Path, proc: subprocess.Popen[str], timeout: float = 60) -> Path:
    """Poll the new run's journal until upgrade_db_schema has started on every target; return the run dir."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"drhost ended early ({proc.returncode}): {proc.communicate()[1][-3000:]}"
        runs = list((state_dir / "runs").glob("*/events.jsonl")) if (state_dir / "runs").exists() else []
        if runs:
            started = {e.get("target") for e in read_events(runs[0].parent)
                       if e["event"] == "step.started" and e.get("step") == "upgrade_db_schema"}
            if started == set(TARGETS):
                return runs[0].parent
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"upgrade_db_schema did not start on every target within {timeout} s")


def assert_db_step_never_rerun_without_cleanup(events: list[dict[str, Any]]) -> None:
    for name in TARGETS:
        # The step's own lifecycle (its watchdog samples come from another thread and may land after it).
        mine = [e["event"] for e in events if e.get("target") == name and (
            (e.get("step") == "upgrade_db_schema" and e["event"].startswith("step.")) or
            (e["event"] == "stage.cleanup_started" and e.get("stage") == "upgrade"))]
        starts = [i for i, ev in enumerate(mine) if ev == "step.started"]
        assert len(starts) == 2, f"{name}: {mine}"
        between = mine[starts[0] + 1:starts[1]]
        assert "step.interrupted" in between and "stage.cleanup_started" in between, f"{name}: {mine}"
        assert between.index("step.interrupted") < between.index("stage.cleanup_started")
        assert mine[-1] == "step.completed"


def assert_upgraded(roots: list[Path], seed: list[tuple[Any, ...]], *, running: bool) -> None:
    assert len(roots) == 3
    for root in roots:
        probe = TargetProbe(root)
        assert probe.current_version == "2.0.0"
        assert probe.schema() == 2
        assert probe.jobs() == seed
        assert "replicas" in probe.tables()
        health = probe.health()
        if running:
            assert health is not None and (health["status"], health["version"], health["schema"]) == \
                ("ok", "2.0.0", 2), health
        else:
            assert health is None


def test_resume_after_controller_killed_mid_step(
        state_dir: Path, drhost: Callable[..., subprocess.CompletedProcess[str]],
        fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """After SIGKILL mid upgrade_db_schema, resume cleans the stage up, reruns it and finishes at 2.0.0."""
    proc = start_upgrade(state_dir, "--json", "--keep", *SLOW_ONCE)
    workers: list[int] = []
    try:
        run_dir = wait_for_db_step(state_dir, proc)
        workers = descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # The killed controller could not remove its workers' private directories; the resuming one does.
    left_dirs = glob.glob(os.path.join(tempfile.gettempdir(), f"drhost-worker-{proc.pid}-*"))
    assert left_dirs, "the killed controller's workers had directories of their own"
    run_id = run_dir.name
    state = read_state(run_dir)
    assert state["status"] == "running"
    for name in TARGETS:
        assert state["targets"][name]["steps"][DB_STEP]["status"] == "started"
        assert state["targets"][name]["stages"]["upgrade"] == "running"
    roots = [Path(r) for r in state["demo"]["roots"]]
    for root in roots:
        assert TargetProbe(root).schema() == 1, "the slowed step must not have migrated yet"

    status = drhost("status", run_id, "--json")
    assert status.returncode == 0, status.stderr
    report = run_json(status)
    assert report["status"] == "running"
    assert report["next"] == [f"if no drhost is running it: drhost resume {run_id}"]
    assert {t["step"] for t in report["targets"]} == {DB_STEP}

    resumed = drhost("resume", run_id, "--json", timeout=120)
    summary = run_json(resumed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert summary["status"] == "succeeded"
    assert {t["status"] for t in summary["targets"].values()} == {"succeeded"}
    assert_upgraded(roots, fresh_seed_jobs, running=True)

    state = read_state(run_dir)
    events = read_events(run_dir)
    assert_db_step_never_rerun_without_cleanup(events)
    for name in TARGETS:
        record = state["targets"][name]
        assert record["status"] == "succeeded" and record["version"] == "2.0.0"
        assert record["steps"][DB_STEP]["status"] == "done"
        assert record["steps"][DB_STEP]["runs"] == 2
        assert [c["stage"] for c in record["cleanups"]] == ["upgrade"]
        assert record["cleanups"][0]["errors"] == []
    modes = [e["data"]["mode"] for e in events if e["event"] == "run.started"]
    assert modes == ["upgrade", "resume"]
    # Containers of the killed controller are removed by the resuming one; none is left at the end.
    listed = subprocess.run(["podman", "ps", "-a", "--filter", f"label=drhost.run={run_id}", "--format",
                             "{{.Names}}"], capture_output=True, text=True, timeout=60)
    assert listed.stdout.split() == []
    assert [d for d in left_dirs if os.path.lexists(d)] == []


def test_sigterm_interrupts_then_resume_finishes(
        state_dir: Path, drhost: Callable[..., subprocess.CompletedProcess[str]],
        leftover_processes: Callable[[Path], list[int]], fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """SIGTERM mid-run stops safely with exit 6, status interrupted and the resume command; resume finishes."""
    proc = start_upgrade(state_dir, "--plain", *SLOW_ONCE)
    try:
        run_dir = wait_for_db_step(state_dir, proc)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
        stop_s = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    run_id = run_dir.name
    assert proc.returncode == 6, stderr[-3000:]
    assert stop_s < 20, f"stopping took {stop_s:.1f} s"
    assert f"run {run_id}: interrupted" in stdout
    assert f"drhost resume {run_id}" in stdout
    state = read_state(run_dir)
    assert state["status"] == "interrupted"
    events = read_events(run_dir)
    assert any(e["event"] == "run.stopping" for e in events)
    roots = [Path(r) for r in state["demo"]["roots"]]
    for name in TARGETS:
        assert state["targets"][name]["status"] == "interrupted"
        assert state["targets"][name]["steps"][DB_STEP]["status"] == "started"
    for root in roots:
        assert TargetProbe(root).schema() == 1

    resumed = drhost("resume", run_id, "--json", timeout=120)
    summary = run_json(resumed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert summary["status"] == "succeeded"
    # The demo was started without --keep: the finished resume stops its daemons and leaves nothing behind.
    assert_upgraded(roots, fresh_seed_jobs, running=False)
    assert_db_step_never_rerun_without_cleanup(read_events(run_dir))
    assert leftover_processes(state_dir) == []
