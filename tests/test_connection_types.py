"""The design's SSH connection types (seed 4.6.1) against real OpenSSH servers: control, plugin_exec and
status_check are connections of their own with their own heartbeat, and the status-check connection reconnects
only on the operator's word (drhost reconnect), which `drhost status` shows while it waits."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from cli_helpers import pids_under, run_json
from demo_proxy import network_events_of
from drhost.config import defaults
from drhost.transport import ManualReconnect, TargetSession, transport
from sshd_hosts import SshHost, sshd_available
from state_rows import read_state

available, why = sshd_available()
pytestmark = [pytest.mark.integration, pytest.mark.sshd, pytest.mark.skipif(not available, reason=why)]


def config_with(**rows: dict[str, float]) -> dict[str, Any]:
    config = defaults()
    for name, row in rows.items():
        config["ssh"][name].update(row)
    return config


def open_as(host: SshHost, tmp_path: Path, connection: str, config: dict[str, Any]) -> TargetSession:
    spec = {"transport": "ssh", "host": host.host, "port": host.port, "key_file": str(host.client_key),
            "known_hosts": str(host.known_hosts), "root": str(tmp_path / "root")}
    return transport("ssh").connect(host.name, spec, config, run_id="run1", run_dir=None, on_network=None,
                                    connection=connection)  # type: ignore[arg-type]


def connection_children(sshd_pid: int) -> list[psutil.Process]:
    """The listening sshd's per-connection processes."""
    return psutil.Process(sshd_pid).children()


def drop_connections(sshd_pid: int) -> int:
    """The server ends every connection it serves (their sshd processes are killed): each client sees its
    connection closed. Returns how many were dropped."""
    children = connection_children(sshd_pid)
    for child in children:
        child.send_signal(signal.SIGKILL)
    psutil.wait_procs(children, timeout=10)
    return len(children)


def test_each_connection_type_is_a_connection_of_its_own_with_its_own_heartbeat(
        host: SshHost, tmp_path: Path) -> None:
    """control, plugin_exec and status_check each open their own TCP connection, each with the [ssh:TYPE]
    heartbeat of its row."""
    config = config_with(control={"heartbeat_s": 7}, plugin_exec={"heartbeat_s": 5}, status_check={"heartbeat_s": 11})
    sessions = {name: open_as(host, tmp_path, name, config) for name in ("control", "plugin_exec", "status_check")}
    try:
        for session in sessions.values():
            assert session.run(["true"], timeout=30).returncode == 0
        assert host.process is not None and len(connection_children(host.process.pid)) == 3
        beats = {name: session.heartbeat_settings for name, session in sessions.items()}  # type: ignore[attr-defined]
        assert {name: (b.connection_type, b.interval_s) for name, b in beats.items()} == {
            "control": ("control", 7), "plugin_exec": ("plugin_exec", 5), "status_check": ("status_check", 11)}
    finally:
        for session in sessions.values():
            session.close()


def test_a_lost_status_check_connection_waits_for_the_operator_then_reconnects_on_their_word(
        host: SshHost, tmp_path: Path) -> None:
    """Once dropped, the status-check connection is not reconnected by drhost: every use fails as a manual
    reconnect, with the cause, and opens nothing; reconnect_now() (the operator's word) reconnects it."""
    session = open_as(host, tmp_path, "status_check", config_with())
    try:
        assert session.run(["true"], timeout=30).returncode == 0
        assert host.process is not None and drop_connections(host.process.pid) == 1
        for _ in range(2):
            with pytest.raises(ManualReconnect) as raised:
                session.run(["true"], timeout=30)
            assert raised.value.connection == "status_check" and raised.value.cause
            assert "operator" in str(raised.value)
        assert session.waiting_for_operator() is not None
        assert session.connections == 1, "nothing may be reconnected before the operator says so"
        session.reconnect_now()
        assert session.waiting_for_operator() is None and session.connections == 2
        assert session.run(["echo", "back"], timeout=30).stdout == "back\n"
    finally:
        session.close()


def test_a_lost_control_connection_reconnects_by_itself(host: SshHost, tmp_path: Path) -> None:
    """The control connection ([ssh:control], 3 reconnects) comes back on its own after a drop."""
    session = open_as(host, tmp_path, "control", config_with())
    try:
        assert session.run(["true"], timeout=30).returncode == 0
        assert host.process is not None and drop_connections(host.process.pid) == 1
        assert session.run(["echo", "again"], timeout=30).stdout == "again\n"
        assert session.connections == 2 and session.waiting_for_operator() is None
    finally:
        session.close()


# -- the whole run ----------------------------------------------------------------------------------------------

SLOW_UPGRADE = ("--set", "plugin.dr-database.fault=upgrade_db_schema:slow:1", "--set",
                "plugin.dr-database.fault_delay_s=20", "--set", "watchdog.resources_every_s=0.5")


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_event(state_dir: Path, proc: subprocess.Popen[str], matches: Callable[[dict[str, Any]], bool],
                   what: str, timeout: float = 90) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read() if proc.stderr else ''}"
        for run_dir in (state_dir / "runs").glob("*"):
            if any(matches(event) for event in read_events(run_dir)):
                return run_dir
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s")


def demo_sshd(state_dir: Path) -> int:
    """The pid of the demo's one listening sshd."""
    (pid,) = [p for p in pids_under(state_dir) if psutil.Process(p).name() == "sshd"]
    return pid


@pytest.mark.slow
@pytest.mark.podman
def test_status_check_drop_is_shown_and_the_operator_reconnects_it_while_the_run_goes_on(
        state_dir: Path, drhost: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """In a real upgrade over SSH whose connections all drop mid-step: the status-check connection's loss is said
    once and shown by `drhost status`; the upgrade goes on; `drhost reconnect` brings it back; the run succeeds."""
    env = {**os.environ, "DRHOST_STATE_DIR": str(state_dir), "DRHOST_INSTANT_RETRIES": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "drhost", "upgrade", "--demo", "--ssh", "--demo-targets", "1",
                             "--json", *SLOW_UPGRADE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        run_dir = wait_for_event(state_dir, proc, lambda e: e["event"] == "watchdog.resources"
                                 and e.get("step") == "upgrade_db_schema", "a resources sample of the slow step")
        # Every connection of the run drops: the steps' and the control connection come back by themselves,
        # the status-check connection waits for the operator.
        assert drop_connections(demo_sshd(state_dir)) >= 2
        wait_for_event(state_dir, proc, lambda e: e["event"] == "network.manual_reconnect", "the manual-reconnect note")
        run_id = run_dir.name
        status = run_json(drhost("status", run_id, "--json"))
        (target,) = status["targets"]
        assert target["status_check"]["cause"], target
        text = drhost("status", run_id).stdout
        assert f"drhost reconnect {run_id} dr-demo-1" in text and "status-check connection lost" in text

        asked = drhost("reconnect", run_id)
        assert asked.returncode == 0, asked.stderr
        assert "dr-demo-1: reconnect of the status-check connection asked" in asked.stdout
        wait_for_event(state_dir, proc, lambda e: e["event"] == "network.reconnected"
                       and e.get("data", {}).get("connection") == "status_check", "the operator's reconnect")
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    events = network_events_of(run_dir)  # each network event checked against its documented schema
    # Said once per loss, not at every sample (one every 0.5 s here): between two notes of a loss, the status-check
    # connection came back. (A later loss of the reconnected connection is a loss of its own, said again.)
    said = [e["event"] for e in events if e["event"] == "network.manual_reconnect"
            or (e["event"] == "network.reconnected" and e.get("data", {}).get("connection") == "status_check")]
    assert said[0] == "network.manual_reconnect"
    assert all(not (a == b == "network.manual_reconnect") for a, b in itertools.pairwise(said)), said
    assert json.loads(out)["status"] == "succeeded"
    assert "status_check" not in read_state(run_dir)["targets"]["dr-demo-1"]


@pytest.mark.slow
@pytest.mark.podman
def test_reconnect_names_an_unknown_target_and_changes_nothing(
        state_dir: Path, drhost: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """`drhost reconnect RUN NAME` for a target the run does not have is a usage error naming its targets."""
    made = drhost("upgrade", "--demo", "--demo-targets", "1", "--json")
    assert made.returncode == 0, made.stderr[-2000:]
    (run_dir,) = (state_dir / "runs").iterdir()
    refused = drhost("reconnect", run_dir.name, "nosuch")
    assert refused.returncode == 2
    assert "no target 'nosuch'" in refused.stderr and "dr-demo-1" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (run_dir / "reconnect").exists()
    idle = drhost("reconnect", run_dir.name)
    assert idle.returncode == 0 and "no status-check connection waits" in idle.stdout
