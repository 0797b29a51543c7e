"""An idle SSH connection costs the controller (almost) nothing, against real OpenSSH servers: paramiko's reader
thread of an established connection does not wake ten times a second, and closing a connection still ends that
thread at once instead of after its long tick."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from drhost.demo.sshd import process_tree, signal_processes
from drhost.transport import SshSession, SshTarget
from drhost.transport._ssh_connect import IDLE_TICK_S
from sshd_hosts import SshHost, make_host

pytestmark = [pytest.mark.integration, pytest.mark.sshd]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SshHost]:
    host = make_host(tmp_path / "hosts", "idle")
    host.start()
    yield host
    host.stop()


@pytest.fixture
def session(server: SshHost, tmp_path: Path) -> Iterator[SshSession]:
    target = SshTarget(server.name, server.host, server.port, key_file=str(server.client_key),
                       known_hosts=str(server.known_hosts))
    opened = SshSession(server.name, target, run_id="run1", work_dir=str(tmp_path / "work"), reconnects=0)
    yield opened
    opened.close()


def voluntary_switches(thread: paramiko.Transport) -> int:
    """How often ``thread`` has blocked so far: each wake-up from an idle ``recv`` is one more."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")))


def test_an_idle_connection_does_not_wake_its_reader_ten_times_a_second(session: SshSession) -> None:
    """Over 2 s without traffic the reader thread wakes a handful of times at most, not paramiko's twenty."""
    assert session.run(["true"], timeout=30).returncode == 0
    transport = session._ensure()
    assert transport.sock.gettimeout() == IDLE_TICK_S
    time.sleep(0.3)  # the command's last packets (exit status, channel close) are read first
    before = voluntary_switches(transport)
    time.sleep(2.0)
    woken = voluntary_switches(transport) - before
    assert woken <= 4, f"reader woke {woken} times in 2 s of silence"


def test_closing_a_connection_to_a_frozen_peer_ends_its_reader_at_once(server: SshHost,
                                                                      session: SshSession) -> None:
    """The long tick bounds nothing an operator waits for: closing the connection to a peer that no longer answers
    (what the heartbeat does when it declares one dead) ends its reader within a second or two, not a tick on."""
    before = server.session_pids()
    assert session.run(["true"], timeout=30).returncode == 0
    transport = session._ensure()
    frozen = process_tree(next(pid for pid in server.session_pids() if pid not in before))
    signal_processes(frozen, signal.SIGSTOP)
    try:
        session.close()
        # A frozen peer sends no FIN back: only our own shutdown wakes a reader blocked in recv.
        transport.join(timeout=3.0)
        assert not transport.is_alive()
    finally:
        signal_processes(frozen, signal.SIGCONT)


def test_a_connection_still_works_after_idling_past_its_tick(session: SshSession,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that slept out whole ticks in ``recv`` still serves the next command on the same connection."""
    monkeypatch.setattr("drhost.transport._ssh_connect.IDLE_TICK_S", 0.2)
    assert session.run(["true"], timeout=30).returncode == 0
    transport = session._ensure()
    time.sleep(1.0)
    done = session.run(["echo", "after"], timeout=30)
    assert (done.returncode, done.stdout.strip()) == (0, "after")
    assert session._ensure() is transport
