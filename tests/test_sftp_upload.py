"""Resumable, pipelined, checksummed SFTP upload against real sshd hosts, through a fault-injecting proxy."""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from drhost.transport._rates import rate_and_eta
from drhost.transport._sftp_upload import UploadError, UploadReport, sha256_command, upload_resumable
from sshd_hosts import SshHost, sshd_available, start_hosts
from tcp_proxy import TcpProxy

pytestmark = [
    pytest.mark.sshd,
    pytest.mark.integration,
    pytest.mark.skipif(not sshd_available()[0], reason=sshd_available()[1]),
]

MiB = 1024 * 1024


def connect(host: SshHost, address: tuple[str, int]) -> paramiko.Transport:
    """A paramiko transport over a TCP_NODELAY socket to ``address``, host key checked, key auth."""
    sock = socket.create_connection(address, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock)
    transport.start_client(timeout=10)
    kind, blob = (host.directory / "host_key.pub").read_text().split()[:2]
    server_key = transport.get_remote_server_key()
    assert (server_key.get_name(), server_key.asbytes()) == (kind, base64.b64decode(blob))
    transport.auth_publickey("root", paramiko.Ed25519Key.from_private_key_file(str(host.client_key)))
    return transport


def remote_sha256_over(transport: paramiko.Transport) -> Callable[[str, int | None], str]:
    """``remote_sha256`` that runs ``head -c N FILE | sha256sum`` on the target."""

    def remote_sha256(path: str, length: int | None) -> str:
        command = sha256_command(path, length)
        channel = transport.open_session(timeout=10)
        channel.exec_command(f"/bin/sh -c {shlex.quote(command)}")
        output = channel.makefile("rb").read().decode()
        status = channel.recv_exit_status()
        channel.close()
        assert status == 0, output
        return output.split()[0]

    return remote_sha256


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as handle:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            handle.write(block)
            left -= len(block)
    return path


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHost]:
    (started,) = start_hosts(tmp_path_factory.mktemp("sftp"), 1)
    yield started
    started.stop()


@pytest.fixture
def proxy(host: SshHost) -> Iterator[TcpProxy]:
    with TcpProxy(host.host, host.port) as running:
        yield running


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_file(tmp_path_factory.mktemp("local") / "package.tar", 32 * MiB)


def upload(host: SshHost, proxy: TcpProxy, local: Path, remote: Path, **kwargs: object) -> UploadReport:
    transport = connect(host, (proxy.host, proxy.port))
    try:
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        return upload_resumable(
            sftp,
            str(local),
            str(remote),
            remote_sha256=remote_sha256_over(transport),
            **kwargs,  # type: ignore[arg-type]
        )
    finally:
        transport.close()


def test_whole_file_uploads_and_matches(host: SshHost, proxy: TcpProxy, big_file: Path) -> None:
    """A 32 MiB file arrives whole: the target's sha256 equals the local one and no .part is left."""
    remote = host.root / "pkg-whole.tar"
    report = upload(host, proxy, big_file, remote)
    assert report.sha256 == sha256_file(big_file) == hashlib.sha256(remote.read_bytes()).hexdigest()
    assert (report.bytes_total, report.bytes_sent, report.resumed_from, report.attempts) == (32 * MiB, 32 * MiB, 0, 1)
    assert not Path(str(remote) + ".part").exists()
    assert report.mb_per_s > 0


def test_cut_at_half_resumes_with_only_the_rest(host: SshHost, proxy: TcpProxy, big_file: Path) -> None:
    """A cut halfway leaves a .part; a new transport resumes after its verified prefix and sends only the rest."""
    remote = host.root / "pkg-cut.tar"
    total = big_file.stat().st_size
    proxy.limit_data(total // 2)
    # upload_resumable lets network failures through as they come, and which one a cut is depends on what
    # sees it first: paramiko's reader (SSHException "Server connection dropped"), its writer (EOFError) or
    # the socket (OSError). Exactly those three; an UploadError or a success still fails the test.
    with pytest.raises((OSError, EOFError, paramiko.SSHException)):
        upload(host, proxy, big_file, remote, chunk_size=256 * 1024)
    assert not remote.exists()
    proxy.limit_data(None)
    report = upload(host, proxy, big_file, remote, chunk_size=256 * 1024)
    chunk = 256 * 1024
    assert report.resumed_from >= 0.4 * total, report
    assert report.bytes_sent <= total - report.resumed_from + chunk, report
    assert report.attempts == 1
    assert hashlib.sha256(remote.read_bytes()).hexdigest() == sha256_file(big_file)


def test_corrupted_part_is_sent_again(host: SshHost, proxy: TcpProxy, big_file: Path) -> None:
    """A .part whose full hash does not match (bytes flipped on the target) is deleted and sent again: attempts == 2."""
    remote = host.root / "pkg-corrupt.tar"
    part = Path(str(remote) + ".part")
    transport = connect(host, (proxy.host, proxy.port))
    real = remote_sha256_over(transport)
    flipped: list[int] = []

    def corrupt_once(path: str, length: int | None) -> str:
        if length is None and not flipped:
            with open(part, "r+b") as handle:  # the target's file: flip bytes in its middle
                handle.seek(big_file.stat().st_size // 2)
                byte = handle.read(1)
                handle.seek(-1, 1)
                handle.write(bytes([byte[0] ^ 0xFF]))
            flipped.append(1)
        return real(path, length)

    try:
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        report = upload_resumable(sftp, str(big_file), str(remote), remote_sha256=corrupt_once)
    finally:
        transport.close()
    assert flipped and report.attempts == 2
    assert report.bytes_sent == 2 * report.bytes_total
    assert hashlib.sha256(remote.read_bytes()).hexdigest() == sha256_file(big_file) == report.sha256


def test_corruption_every_time_raises_file_error(host: SshHost, proxy: TcpProxy, tmp_path: Path) -> None:
    """When every attempt's hash differs, UploadError(category='file') names both hashes and no file is renamed."""
    local = random_file(tmp_path / "small.bin", 300 * 1024)
    remote = host.root / "pkg-always-bad.bin"
    transport = connect(host, (proxy.host, proxy.port))
    try:
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        with pytest.raises(UploadError) as caught:
            upload_resumable(sftp, str(local), str(remote), remote_sha256=lambda path, n: "0" * 64, attempts=2)
    finally:
        transport.close()
    assert caught.value.category == "file"
    assert caught.value.remote_sha256 == "0" * 64 and caught.value.local_sha256 == sha256_file(local)
    assert caught.value.local_sha256 in str(caught.value)
    assert not remote.exists()


def test_foreign_part_restarts_from_zero(host: SshHost, proxy: TcpProxy, tmp_path: Path) -> None:
    """A .part whose prefix differs from the local file is not trusted: the upload restarts at byte 0."""
    local = random_file(tmp_path / "pkg.bin", 3 * MiB)
    remote = host.root / "pkg-foreign.bin"
    Path(str(remote) + ".part").write_bytes(os.urandom(MiB))
    report = upload(host, proxy, local, remote)
    assert (report.resumed_from, report.bytes_sent, report.attempts) == (0, 3 * MiB, 1)
    assert remote.read_bytes() == local.read_bytes()


def test_longer_part_restarts_from_zero(host: SshHost, proxy: TcpProxy, tmp_path: Path) -> None:
    """A .part longer than the local file is restarted from 0 and truncated to the local size."""
    local = random_file(tmp_path / "pkg.bin", MiB)
    remote = host.root / "pkg-longer.bin"
    Path(str(remote) + ".part").write_bytes(local.read_bytes() + b"tail")
    report = upload(host, proxy, local, remote)
    assert (report.resumed_from, report.bytes_sent) == (0, MiB)
    assert remote.read_bytes() == local.read_bytes()


def test_progress_reaches_total(host: SshHost, proxy: TcpProxy, tmp_path: Path) -> None:
    """Progress is monotonic from the resumed byte and its last call is (total, total)."""
    local = random_file(tmp_path / "pkg.bin", 5 * MiB + 123)
    remote = host.root / "pkg-progress.bin"
    Path(str(remote) + ".part").write_bytes(local.read_bytes()[: 2 * MiB])
    calls: list[tuple[int, int]] = []
    report = upload(host, proxy, local, remote, progress=lambda done, total: calls.append((done, total)))
    assert report.resumed_from == 2 * MiB and report.bytes_sent == 3 * MiB + 123
    assert calls[0] == (2 * MiB, report.bytes_total) and calls[-1] == (report.bytes_total, report.bytes_total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert remote.read_bytes() == local.read_bytes()


def test_latency_does_not_serialise_writes(host: SshHost, proxy: TcpProxy, tmp_path: Path) -> None:
    """With 50 ms one-way latency, 8 MiB still take far fewer round trips than one per write request."""
    local = random_file(tmp_path / "pkg.bin", 8 * MiB)
    remote = host.root / "pkg-latency.bin"
    proxy.set_latency(0.05)
    report = upload(host, proxy, local, remote, chunk_size=64 * 1024)
    # 128 requests of 64 KiB at one 100 ms round trip each would take >= 12.8 s; pipelined, a few round trips
    # and the transfer itself, which leaves room for a loaded machine.
    assert report.duration_s < 10, report
    assert remote.read_bytes() == local.read_bytes()


class CountingSha256:
    """hashlib as _sftp_upload sees it, counting the bytes its sha256 objects are fed."""

    def __init__(self) -> None:
        self.fed = 0

    def sha256(self) -> object:
        outer = self
        real = hashlib.sha256()

        class Counted:
            def update(self, data: bytes) -> None:
                outer.fed += len(data)
                real.update(data)

            def hexdigest(self) -> str:
                return real.hexdigest()

        return Counted()


def test_a_file_sent_again_is_not_hashed_again(host: SshHost, proxy: TcpProxy, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The same unchanged file sent to a second place is not read for its hash again, and still verified."""
    from drhost.transport import _sftp_upload

    counting = CountingSha256()
    monkeypatch.setattr(_sftp_upload, "hashlib", counting)
    local = random_file(tmp_path / "pkg.bin", 3 * MiB)
    first = upload(host, proxy, local, host.root / "pkg-again-1.bin")
    assert counting.fed == 3 * MiB
    second = upload(host, proxy, local, host.root / "pkg-again-2.bin")
    assert counting.fed == 3 * MiB
    assert first.sha256 == second.sha256 == sha256_file(local)
    assert (host.root / "pkg-again-2.bin").read_bytes() == local.read_bytes()


def test_a_rewritten_file_is_hashed_afresh_even_with_its_old_mtime(host: SshHost, proxy: TcpProxy,
                                                                   tmp_path: Path) -> None:
    """A file rewritten in place, same size and its mtime set back, is hashed again: the new bytes are sent
    and verified, never matched against the old hash."""
    local = random_file(tmp_path / "pkg.bin", MiB)
    upload(host, proxy, local, host.root / "pkg-rewritten-1.bin")
    before = local.stat()
    with open(local, "r+b") as handle:
        handle.write(os.urandom(MiB))
    os.utime(local, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (local.stat().st_size, local.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    report = upload(host, proxy, local, host.root / "pkg-rewritten-2.bin")
    assert report.sha256 == sha256_file(local) and report.attempts == 1
    assert (host.root / "pkg-rewritten-2.bin").read_bytes() == local.read_bytes()


def test_rate_and_eta() -> None:
    """rate_and_eta gives MB/s and seconds left; inf before anything moved, 0 at the end."""
    assert rate_and_eta(0, 100, 1.0) == (0.0, float("inf"))
    assert rate_and_eta(50_000_000, 100_000_000, 5.0) == (10.0, 5.0)
    assert rate_and_eta(100, 100, 0.0) == (0.0, 0.0)


def test_proxy_blackhole_keeps_connection_but_drops_data(host: SshHost, proxy: TcpProxy) -> None:
    """The proxy's black hole forwards nothing while the TCP connection stays open."""
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        assert sock.recv(4) == b"SSH-"
        sock.recv(1024)
        proxy.blackhole(True)
        sock.sendall(b"SSH-2.0-probe\r\n")
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(1024)
        assert proxy.open_links()
