"""One upgrade per target at a time, end to end: a second run on a locked target refuses and names the owner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cli_helpers import demo_roots, run_json

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
