"""One upgrade per target at a time, end to end: a second run on a locked target refuses and names the owner."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from cli_helpers import demo_roots, run_json
from sshd_hosts import sshd_available, start_hosts

pytestmark = [pytest.mark.podman, pytest.mark.slow, pytest.mark.integration]

Drhost = Callable[..., subprocess.CompletedProcess[str]]


def inventory_for(tmp_path: Path, root: Path) -> Path:
    inventory = tmp_path / "same-target.ini"
    inventory.write_text(f"[target:dr-demo-1]\ntransport = local\nroot = {root}\n")
    return inventory


def wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_second_upgrade_of_a_busy_target_is_refused_and_names_the_owner(
        drhost: Drhost, state_dir: Path, tmp_path: Path) -> None:
    """While run A upgrades a target, run B on the same target exits 7 naming A's run id and pid, touching nothing."""
    env = {**os.environ, "DRHOST_STATE_DIR": str(state_dir), "DRHOST_INSTANT_RETRIES": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "drhost", "upgrade", "--demo", "--demo-targets", "1", "--keep", "--json",
         "--set", "plugin.dr-core.fault=check_disk_space:slow", "--set", "plugin.dr-core.fault_delay_s=8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not demo_roots(state_dir):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        (root,) = demo_roots(state_dir)
        wait_for(root / ".drhost" / "lock")
        owner = json.loads((root / ".drhost" / "lock").read_text())
        package = next((state_dir / "demo" / "packages").glob("drproduct-2.0.0.tar.gz"))
        second = drhost("upgrade", "-i", str(inventory_for(tmp_path, root)), "--package", str(package), "--json")
        assert second.returncode == 7, second.stderr[-2000:]
        summary = run_json(second)
        assert summary["status"] == "refused"
        assert summary["targets"]["dr-demo-1"]["status"] == "locked"
        events = [json.loads(line) for line in (Path(summary["run_dir"]) / "events.jsonl").read_text().splitlines()]
        (locked,) = [e for e in events if e["event"] == "target.locked"]
        assert owner["run_id"] in locked["message"] and f"pid {owner['pid']}" in locked["message"]
        assert "wait for that run to finish" in locked["message"]
        assert not [e for e in events if e["event"] == "step.started"], "the refused run touched the target"
        out, err = first.communicate(timeout=240)
        assert first.returncode == 0, err[-2000:]
        assert json.loads(out)["run_id"] == owner["run_id"]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not (root / ".drhost" / "lock").exists(), "the finished run kept its lock"


def test_lock_of_a_killed_controller_is_stale_and_its_own_resume_takes_it_back(
        drhost: Drhost, state_dir: Path, tmp_path: Path) -> None:
    """A controller killed mid-upgrade leaves its lock: another run is told it looks stale (--break-lock),
    while resuming the killed run takes the lock back and finishes."""
    killed = drhost("upgrade", "--demo", "--demo-targets", "1", "--keep", "--json",
                    env={"DRHOST_FAILPOINT": "step.started:upgrade/dr-core/install_program_files"})
    assert killed.returncode == -9
    (root,) = demo_roots(state_dir)
    owner = json.loads((root / ".drhost" / "lock").read_text())
    package = next((state_dir / "demo" / "packages").glob("drproduct-2.0.0.tar.gz"))
    other = drhost("upgrade", "-i", str(inventory_for(tmp_path, root)), "--package", str(package), "--json")
    assert other.returncode == 7
    events = [json.loads(line) for line in
              (Path(run_json(other)["run_dir"]) / "events.jsonl").read_text().splitlines()]
    (locked,) = [e for e in events if e["event"] == "target.locked"]
    assert "stale" in locked["message"] and "--break-lock" in locked["message"]
    assert owner["run_id"] in locked["message"]
    resumed = run_json(drhost("resume", owner["run_id"], "--json"))
    assert resumed["status"] == "succeeded"
    assert not (root / ".drhost" / "lock").exists()


def _descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return list(psutil.Process(pid).children(recursive=True))
    return []


def _copy_run(run_dir: Path, state_dir: Path, change: Callable[[dict[str, Any]], None] | None) -> None:
    """Copy a live run's directory into another state dir, as an operator might; ``change`` edits the copy's
    state (the controller it names, the transport to its target)."""
    from drhost.state import RunState

    copy = state_dir / "runs" / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("lock", ".*.tmp"))
    if change is not None:
        state = RunState.open(copy)
        with state.mutate() as body:
            change(body)


@pytest.mark.parametrize("transport", ["local", pytest.param("ssh", marks=pytest.mark.sshd)])
def test_second_controller_resuming_a_live_run_is_refused_and_kills_nothing(
        drhost: Drhost, state_dir: Path, tmp_path: Path, transport: str) -> None:
    """While controller A drives a run, controller B resuming it (same state dir, a copy on this host, or a
    copy naming another host, so that only the target lock stands in its way; B reaching the target locally or
    over a real sshd) exits 7 each time; A's lock and its workers are untouched, and A finishes."""
    if transport == "ssh" and not sshd_available()[0]:
        pytest.skip(sshd_available()[1])
    sshd = start_hosts(tmp_path / "sshd", 1)[0] if transport == "ssh" else None
    env = {**os.environ, "DRHOST_STATE_DIR": str(state_dir), "DRHOST_INSTANT_RETRIES": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "drhost", "upgrade", "--demo", "--demo-targets", "1", "--keep", "--json",
         "--set", "plugin.dr-database.fault=check_database:slow:1", "--set", "plugin.dr-database.fault_delay_s=25"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        lock = Path("/nonexistent")
        while not (demo_roots(state_dir) and (lock := demo_roots(state_dir)[0] / ".drhost" / "lock").exists()):
            assert first.poll() is None, f"controller A ended early: {first.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "A never locked its target"
            time.sleep(0.1)
        root = lock.parents[1]
        owner = json.loads(lock.read_text())
        run_dir = state_dir / "runs" / owner["run_id"]
        # Wait for A's slow step to run in its worker: that is what B must not kill.
        journal = run_dir / "events.jsonl"
        while '"step":"check_database"' not in (journal.read_text() if journal.exists() else ""):
            assert time.monotonic() < deadline, "A's slow step never started"
            time.sleep(0.1)
        time.sleep(1)
        workers = [p for p in _descendants(first.pid) if "dr-database" in p.cmdline()]
        assert workers, "A runs its slow step in no worker process: nothing to protect"
        lock_bytes = lock.read_bytes()

        same_dir = drhost("resume", owner["run_id"])
        assert same_dir.returncode == 7, same_dir.stderr[-2000:]
        assert f"run {owner['run_id']} is in use by another drhost" in same_dir.stderr

        def elsewhere(body: dict[str, Any]) -> None:
            body["controller"]["host"] = "controller.elsewhere.example"
            if sshd is not None:
                body["config"]["targets"]["dr-demo-1"] = {
                    "transport": "ssh", "root": str(root), "host": sshd.host, "port": sshd.port, "user": "root",
                    "key_file": str(sshd.client_key), "known_hosts": str(sshd.known_hosts),
                    "host_key_policy": "strict"}

        for name, change in (("copy-here", None), ("copy-elsewhere", elsewhere)):
            other_state = tmp_path / name
            (other_state / "runs").mkdir(parents=True)
            _copy_run(run_dir, other_state, change)
            copied = drhost("resume", owner["run_id"], env={"DRHOST_STATE_DIR": str(other_state)})
            assert copied.returncode == 7, copied.stderr[-3000:]
            assert "Traceback" not in copied.stderr
            if change is None:
                assert f"is being driven by drhost pid {first.pid} on this host" in copied.stderr
            else:
                assert f"locked by run {owner['run_id']} (pid {first.pid}" in copied.stderr
                assert "not provably gone" in copied.stderr
            assert lock.read_bytes() == lock_bytes, f"{name}: B changed A's lock"
            assert all(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), \
                f"{name}: B killed A's workers"

        out, err = first.communicate(timeout=240)
        assert first.returncode == 0, err[-3000:]
        assert json.loads(out)["status"] == "succeeded"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        if sshd is not None:
            sshd.stop()
    assert not lock.exists(), "the finished run kept its lock"
