"""A controller killed while a step's command runs: the resume stops that command before it goes on."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cli_helpers import run_json
from sshd_hosts import sshd_available

pytestmark = [pytest.mark.podman, pytest.mark.slow, pytest.mark.integration]

Drhost = Callable[..., subprocess.CompletedProcess[str]]
HANG = ("--set", "plugin.dr-database.fault=upgrade_db_schema:remote_hang:1")
KILL_MID_STEP = {"DRHOST_FAILPOINT": "step.mid:upgrade/dr-database/upgrade_db_schema+2"}


def sleepers() -> list[int]:
    """Processes running the remote_hang fault's command (``sleep 86400``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == b"sleep\x0086400\x00":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("transport", ["local", pytest.param("ssh", marks=pytest.mark.sshd)])
def test_resume_stops_the_command_a_killed_controller_left_running(
        drhost: Drhost, state_dir: Path, transport: str) -> None:
    """The step's command outlives its killed controller; the resume stops it (and says so) before re-running
    the step, and nothing of it is left afterwards."""
    if transport == "ssh" and not sshd_available()[0]:
        pytest.skip(sshd_available()[1])
    before = set(sleepers())
    ssh = ("--ssh",) if transport == "ssh" else ()
    killed = drhost("upgrade", "--demo", "--demo-targets", "1", *ssh, "--keep", "--json", *HANG, env=KILL_MID_STEP)
    assert killed.returncode == -9, killed.stderr[-2000:]
    orphans = set(sleepers()) - before
    assert orphans, "the step's command did not outlive the controller: nothing to test"
    (run_dir,) = (state_dir / "runs").iterdir()
    resumed = drhost("resume", run_dir.name, "--json")
    assert run_json(resumed)["status"] == "succeeded", resumed.stderr[-2000:]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    (stopped,) = [e for e in events if e["event"] == "target.leftovers_stopped"]
    assert len(stopped["data"]["stopped"]) == 1
    deadline = time.monotonic() + 5
    while orphans & set(sleepers()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not orphans & set(sleepers())
