"""Uploads through the SSH session: their own connection, resumed after a cut, verified on the target."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from drhost.transport import SshSession, SshTarget, TransportError
from drhost.transport._heartbeat import HeartbeatSettings
from sshd_hosts import SshHost, sshd_available
from tcp_proxy import TcpProxy

pytestmark = [pytest.mark.sshd, pytest.mark.skipif(not sshd_available()[0], reason=sshd_available()[1])]
MiB = 1024 * 1024


def session_via(proxy: TcpProxy, host: SshHost, tmp_path: Path, reconnects: int = 2) -> SshSession:
    known = tmp_path / "known_hosts_proxy"
    key_type, key = (host.directory / "host_key.pub").read_text().split()[:2]
    known.write_text(f"[{proxy.host}]:{proxy.port} {key_type} {key}\n")
    target = SshTarget(name="h", host=proxy.host, port=proxy.port, key_file=str(host.client_key),
                       known_hosts=str(known))
    return SshSession("h", target, run_id="r", work_dir=str(host.root / ".drhost"),
                      transfer_heartbeat=HeartbeatSettings("transfer", 1.0, 4.0, reconnects))


def test_upload_cut_halfway_resumes_with_only_the_rest(host: SshHost, tmp_path: Path) -> None:
    """A connection cut at half an upload reconnects and sends only what was not verified yet."""
    local = tmp_path / "pkg.bin"
    local.write_bytes(os.urandom(24 * MiB))
    with TcpProxy(host.host, host.port).start() as proxy:
        session = session_via(proxy, host, tmp_path)
        session.run(["true"])  # the control connection is up before the faults start
        proxy.limit_data(12 * MiB)

        def lift_after_first_cut() -> None:
            # The first upload connection is cut at 12 MiB; the one after it must get through.
            while proxy.connections < 3:
                time.sleep(0.01)
            proxy.limit_data(None)

        threading.Thread(target=lift_after_first_cut, daemon=True).start()
        before = proxy.bytes_up
        remote = host.root / "staging" / "pkg.bin"
        session.put(str(local), str(remote))
        sent = proxy.bytes_up - before
        session.close()
    assert hashlib.sha256(remote.read_bytes()).digest() == hashlib.sha256(local.read_bytes()).digest()
    assert proxy.connections >= 3
    # 24 MiB in all: about 12 before the cut and the remaining 12 after, not 12 + 24.
    assert sent < 27 * MiB, f"{sent / MiB:.1f} MiB went up for a 24 MiB file"


def test_upload_that_cannot_reconnect_is_a_network_failure(host: SshHost, tmp_path: Path) -> None:
    """When every reconnect of an upload fails, the step fails as a network failure naming the attempts."""
    local = tmp_path / "pkg.bin"
    local.write_bytes(os.urandom(8 * MiB))
    with TcpProxy(host.host, host.port).start() as proxy:
        session = session_via(proxy, host, tmp_path, reconnects=1)
        session.run(["true"])
        proxy.limit_data(2 * MiB)  # every connection is cut after 2 MiB
        with pytest.raises(TransportError) as info:
            session.put(str(local), str(host.root / "staging" / "pkg.bin"))
        session.close()
    assert info.value.category == "network" and "gave up after 1 reconnects" in str(info.value)
    assert not (host.root / "staging" / "pkg.bin").exists()
