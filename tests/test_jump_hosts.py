"""``proxy_jump``: targets in network namespaces of their own that only a bastion reaches (this machine has no
route to them, and their firewalls drop what is not from the bastion); every hop's host key is checked, and a
bastion that dies is a dead connection like any other: detected within the heartbeat bound, then the whole
chain reconnects and the running command is re-attached, not run again."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drhost.demo.bastion import BastionNetwork, bastion_available, build_bastion_network
from drhost.transport import Become, HostKeyError, SshSession, SshTarget, TransportError
from drhost.transport._heartbeat import HeartbeatSettings
from drhost.transport._registry import TRANSPORTS
from sshd_hosts import LoginUser, sshd_available

ok, why = sshd_available()
network_ok, network_why = bastion_available()
pytestmark = [pytest.mark.sshd, pytest.mark.integration, pytest.mark.skipif(not ok, reason=why),
              pytest.mark.skipif(not network_ok, reason=network_why)]

FAST = HeartbeatSettings("plugin_exec", interval_s=0.5, dead_after_s=2.0, reconnects=5)


@pytest.fixture
def network(tmp_path: Path, login_user: LoginUser) -> Iterator[BastionNetwork]:
    built = build_bastion_network(tmp_path / "net", ["t1"], login_user=login_user.name)
    try:
        yield built
    finally:
        built.close()


def session_for(network: BastionNetwork, tmp_path: Path, *, jump: bool = True, known_hosts: Path | None = None,
                events: list[tuple[str, str]] | None = None) -> SshSession:
    host = network.targets["t1"]
    user = str(host.login_user)
    common: dict[str, Any] = {"key_file": str(host.client_key),
                              "known_hosts": str(known_hosts or host.known_hosts), "connect_timeout_s": 3.0}
    hops = (SshTarget("t1 (jump host 1)", network.bastion.host, network.bastion.port, user=user, **common),)
    target = SshTarget("t1", host.host, host.port, user=user, jump=hops if jump else (), **common)
    return SshSession("t1", target, run_id="run1", work_dir=str(tmp_path / "work"), kill_grace_s=1.0,
                      poll_interval_s=0.05, reconnects=5, heartbeat=FAST, transfer_heartbeat=FAST, become=Become(),
                      on_network=None if events is None else lambda event, message, data: events.append(
                          (event, message)))


def test_a_target_behind_the_bastion_is_reached_only_through_it(network: BastionNetwork, tmp_path: Path) -> None:
    """No direct connection is possible; through proxy_jump commands run as root (become), and files are
    written and uploaded, verified, on the target."""
    direct = session_for(network, tmp_path, jump=False)
    try:
        with pytest.raises(TransportError, match="No route to host"):
            direct.run(["true"])
    finally:
        direct.close()
    payload = tmp_path / "package.bin"
    payload.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    session = session_for(network, tmp_path)
    try:
        result = session.run(["sh", "-c", "id -un; cat"], input="through the bastion\n")
        session.put(str(payload), str(tmp_path / "placed" / "package.bin"))
    finally:
        session.close()
    assert (result.returncode, result.stdout) == (0, "root\nthrough the bastion\n")
    placed = (tmp_path / "placed" / "package.bin").read_bytes()
    assert hashlib.sha256(placed).digest() == hashlib.sha256(payload.read_bytes()).digest()


def test_the_bastions_host_key_is_checked_too(network: BastionNetwork, tmp_path: Path) -> None:
    """A known_hosts that knows the target but not the bastion refuses at the bastion, naming it."""
    host = network.targets["t1"]
    only_target = tmp_path / "known_hosts_target_only"
    only_target.write_text(host.known_hosts_line())
    session = session_for(network, tmp_path, known_hosts=only_target)
    try:
        with pytest.raises(HostKeyError) as caught:
            session.run(["true"])
    finally:
        session.close()
    assert f"t1 (jump host 1) ([{network.bastion.host}]:{network.bastion.port})" in str(caught.value)
    assert "can't be established" in str(caught.value)


def test_a_dead_bastion_is_a_dead_connection_the_chain_reconnects_and_the_command_is_reattached(
        network: BastionNetwork, tmp_path: Path) -> None:
    """The bastion black-holed mid-command: a heartbeat declares the connection dead within its bound; once
    the bastion is back the whole chain is reconnected and the same command's result is read, not rerun."""
    marker = tmp_path / "runs"
    events: list[tuple[str, str]] = []
    session = session_for(network, tmp_path, events=events)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = session.run(["sh", "-c", f"echo ran >> {marker}; sleep 4; echo done"], timeout=60)
        except Exception as exc:
            result["error"] = exc

    try:
        session.run(["true"])  # connected, heartbeats running
        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(1.0)
        network.isolate(network.bastion.netns or "", True)
        isolated = time.monotonic()
        while not any(event == "network.peer_dead" for event, _ in events) and time.monotonic() - isolated < 15:
            time.sleep(0.05)
        detected = time.monotonic() - isolated
        network.isolate(network.bastion.netns or "", False)
        worker.join(60)
    finally:
        session.close()
    assert "error" not in result, result.get("error")
    assert result["value"].stdout == "done\n"
    assert marker.read_text() == "ran\n"  # re-attached, never started twice
    dead = [message for event, message in events if event == "network.peer_dead"]
    assert dead, events
    assert detected <= FAST.dead_after_s + FAST.interval_s + 2.0, (detected, dead)
    assert any(event == "network.reconnected" for event, _ in events), events
    assert session.connections >= 2


def test_proxy_jump_is_parsed_from_the_inventory_and_shown_by_plan(tmp_path: Path) -> None:
    """The ssh transport reads proxy_jump (user, host, port per hop, the target's user by default) and names
    the way in; a malformed value is a config problem naming the hop."""
    ssh = TRANSPORTS["ssh"]
    target = {"transport": "ssh", "host": "db1", "user": "ops", "root": "/opt/p",
              "proxy_jump": "jump@bastion1:2222,[2001:db8::7]", "become": "sudo"}
    assert ssh.problems(target) == []
    assert ssh.where(target) == "ssh ops@db1:22 via jump@bastion1:2222 → ops@[2001:db8::7]:22, sudo to root"
    (problem,) = ssh.problems({**target, "proxy_jump": "bastion1:99999"})
    assert problem[0] == "proxy_jump" and "hop 1: port '99999'" in problem[1]
