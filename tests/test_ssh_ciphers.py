"""The ciphers drhost offers, against real OpenSSH servers: AES-GCM where the server has it (no per-packet MAC
computed in Python), CTR with a server that offers only that, and a clear refusal, naming the host, from a
server that offers only ciphers drhost no longer accepts (CBC)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from drhost.transport import SshSession, SshTarget
from drhost.transport._ssh_connect import CIPHERS, AlgorithmsRefused
from sshd_hosts import SshHost, make_host

pytestmark = [pytest.mark.integration, pytest.mark.sshd]


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SshHost]:
    host = make_host(tmp_path / "hosts", "ciphers")
    host.sshd_options = tuple(request.param)
    host.start()
    yield host
    host.stop()


def session_for(host: SshHost, tmp_path: Path) -> SshSession:
    target = SshTarget(host.name, host.host, host.port, key_file=str(host.client_key),
                       known_hosts=str(host.known_hosts))
    return SshSession(host.name, target, run_id="run1", work_dir=str(tmp_path / "work"), reconnects=0)


@pytest.mark.parametrize(("server", "cipher"), [((), "aes128-gcm@openssh.com"),
                                                (("Ciphers=aes256-ctr",), "aes256-ctr")],
                         indirect=["server"], ids=["openssh-defaults", "ctr-only"])
def test_the_best_cipher_both_ends_have_is_used(server: SshHost, tmp_path: Path, cipher: str) -> None:
    """An OpenSSH server with its defaults gets AES-GCM both ways; one that offers only CTR still works."""
    session = session_for(server, tmp_path)
    try:
        assert session.run(["true"], timeout=30).returncode == 0
        transport = session._ensure()
        assert (transport.local_cipher, transport.remote_cipher) == (cipher, cipher)
    finally:
        session.close()


@pytest.mark.parametrize("server", [("Ciphers=aes128-cbc",)], indirect=True, ids=["cbc-only"])
def test_a_server_with_only_cbc_is_refused_by_name(server: SshHost, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """CBC and 3DES are not offered: a server with nothing else is one clear error naming its address and what
    drhost offers, not retried (no attempt would do better), and not a silent downgrade."""
    assert not any("cbc" in cipher or "3des" in cipher for cipher in CIPHERS)
    handshakes: list[object] = []
    start_client = paramiko.Transport.start_client

    def counted(self: paramiko.Transport, *args: object, **kwargs: object) -> None:
        handshakes.append(self)
        start_client(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(paramiko.Transport, "start_client", counted)
    session = session_for(server, tmp_path)
    session._reconnects = 3
    try:
        for _ in range(2):  # the first connection of a session, then one after it
            with pytest.raises(AlgorithmsRefused) as caught:
                session.run(["true"], timeout=30)
    finally:
        session.close()
    assert len(handshakes) == 2
    message = str(caught.value)
    assert f"{server.host}:{server.port}" in message and "aes128-gcm@openssh.com, aes256-gcm" in message, message
