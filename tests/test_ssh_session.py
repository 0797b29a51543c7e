"""The ssh TargetSession against real OpenSSH servers on loopback (tests/sshd_hosts.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from drhost.errors import DrhostError, ExitCode
from drhost.transport import AuthError, CommandStopped, HostKeyError, SshSession, SshTarget, TransportError
from drhost.transport._heartbeat import HeartbeatSettings
from drhost.transport._ssh_connect import SilentPeer, _authenticate, _handshake, connect, fingerprint
from sshd_hosts import SshHost

# The skip is in the sshd fixture (``host``, tests/conftest.py), not here: the scripted-peer tests at the end
# need no sshd.
pytestmark = [pytest.mark.integration]


def target_for(host: SshHost, **overrides: object) -> SshTarget:
    settings: dict[str, object] = {"key_file": str(host.client_key), "known_hosts": str(host.known_hosts)}
    settings.update(overrides)
    return SshTarget(host.name, host.host, host.port, **settings)  # type: ignore[arg-type]


@pytest.fixture
def session(host: SshHost, tmp_path: Path) -> Iterator[SshSession]:
    ssh = SshSession(host.name, target_for(host), run_id="run1", work_dir=str(tmp_path / "work"),
                     kill_grace_s=1.0, poll_interval_s=0.05)
    try:
        yield ssh
    finally:
        ssh.close()


def host_fingerprint(host: SshHost) -> str:
    return fingerprint(paramiko.PKey.from_path(host.host_key))


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def processes_matching(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout.splitlines()
    return [line for line in found if "pgrep" not in line]


@pytest.mark.sshd
def test_run_returns_output_and_exit_code(session: SshSession) -> None:
    """run returns stdout, stderr, stdin-fed input and the exit code of the remote command."""
    result = session.run(["sh", "-c", "echo out; echo err >&2; cat; exit 3"], input="fed in\n")
    assert result.returncode == 3
    assert result.stdout == "out\nfed in\n"
    assert result.stderr == "err\n"
    assert result.argv == ("sh", "-c", "echo out; echo err >&2; cat; exit 3")


@pytest.mark.sshd
def test_argv_words_are_never_interpreted_by_a_shell(session: SshSession, tmp_path: Path) -> None:
    """Each argv word reaches the command verbatim: quotes, $, ;, spaces and newlines are not shell syntax."""
    canary = tmp_path / "pwned"
    nasty = ["it's", '"$HOME"', f"; touch {canary}", "$(touch {canary})", "a\nb", "`id`", "*"]
    result = session.run(["printf", "%s|", *nasty])
    assert result.stdout == "|".join(nasty) + "|"
    assert not canary.exists()


@pytest.mark.sshd
def test_environment_is_explicit(session: SshSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """The remote command sees only drhost's base environment plus what the caller passes, under /bin/sh."""
    monkeypatch.setenv("DRHOST_LEAK_CHECK", "from-the-controller")
    result = session.run(["sh", "-c", "env; echo parent=$(cat /proc/$PPID/comm)"], env={"STEP": "a b"},
                         cwd="/tmp")
    lines = result.stdout.splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("parent="))
    assert "DRHOST_LEAK_CHECK" not in result.stdout
    assert env["STEP"] == "a b"
    assert env["LANG"] == "C.UTF-8"
    assert env["PWD"] == "/tmp"
    # Nothing from a login shell or rc file (SSH_CLIENT, SHLVL set by bash, BASH_ENV, aliases' env) leaks in.
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "HOME", "STEP", "PWD", "SHLVL", "_"}
    assert not any(name.startswith(("SSH_", "BASH")) for name in env)
    assert "parent=sh" in lines


@pytest.mark.sshd
def test_write_text_is_atomic_with_mode_and_file_ops(session: SshSession, tmp_path: Path) -> None:
    """write_text creates parents, replaces the file in one rename with the given mode; read/exists/remove work."""
    path = tmp_path / "etc" / "product" / "conf.ini"
    session.write_text(str(path), "first\n", mode=0o600)
    inode_before = path.stat().st_ino
    session.write_text(str(path), "second ✓\n", mode=0o640)
    assert session.read_text(str(path)) == "second ✓\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.stat().st_ino != inode_before  # replaced by rename, not rewritten in place
    assert [p.name for p in path.parent.iterdir()] == ["conf.ini"]  # no temp file left
    assert session.exists(str(path))
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    assert session.exists(str(link))  # lstat: a dangling symlink exists
    session.remove(str(path))
    assert not session.exists(str(path))
    session.remove(str(path))  # removing what is gone is not an error
    with pytest.raises(Exception, match="recursive"):
        session.remove(str(tmp_path / "etc"))
    session.remove(str(tmp_path / "etc"), recursive=True)
    assert not (tmp_path / "etc").exists()
    with pytest.raises(Exception, match="cannot read"):
        session.read_text(str(tmp_path / "missing"))


@pytest.mark.sshd
def test_put_and_get(session: SshSession, tmp_path: Path) -> None:
    """put copies a controller file atomically (reporting progress), get copies it back."""
    source = tmp_path / "pkg.bin"
    source.write_bytes(os.urandom(300_000))
    seen: list[tuple[int, int]] = []
    remote = tmp_path / "remote" / "pkg.bin"
    session.put(str(source), str(remote), lambda done, total: seen.append((done, total)))
    assert remote.read_bytes() == source.read_bytes()
    assert seen[-1] == (300_000, 300_000)
    back = tmp_path / "back.bin"
    session.get(str(remote), str(back))
    assert back.read_bytes() == source.read_bytes()


@pytest.mark.sshd
def test_unknown_host_key_is_refused_with_fingerprint(host: SshHost, tmp_path: Path) -> None:
    """A host not in known_hosts is refused (strict), naming host, key type and SHA256 fingerprint."""
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError) as caught:
        SshSession("h", target_for(host, known_hosts=str(empty)), run_id="r", work_dir="/tmp").run(["true"])
    message = str(caught.value)
    assert f"[{host.host}]:{host.port}" in message
    assert "ssh-ed25519" in message
    assert host_fingerprint(host) in message
    assert isinstance(caught.value, DrhostError) and caught.value.exit_code == ExitCode.REFUSED


@pytest.mark.sshd
def test_changed_host_key_is_refused_loudly(host: SshHost, tmp_path: Path) -> None:
    """A known host offering a different key is refused even with accept-new, showing old and new fingerprints."""
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    public = (tmp_path / "other_key.pub").read_text().split()
    known = tmp_path / "known_changed"
    known.write_text(f"[{host.host}]:{host.port} {public[0]} {public[1]}\n")
    with pytest.raises(HostKeyError) as caught:
        SshSession("h", target_for(host, known_hosts=str(known), host_key_policy="accept-new"),
                   run_id="r", work_dir="/tmp").run(["true"])
    message = str(caught.value)
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in message
    assert fingerprint(paramiko.PKey.from_path(other)) in message
    assert host_fingerprint(host) in message
    assert known.read_text().count("\n") == 1  # nothing was added


@pytest.mark.sshd
def test_accept_new_adds_the_key(host: SshHost, tmp_path: Path) -> None:
    """With accept-new an unknown host key is appended to known_hosts (mode 0600) and then trusted."""
    known = tmp_path / "ssh" / "known_hosts"
    target = target_for(host, known_hosts=str(known), host_key_policy="accept-new")
    ssh = SshSession("h", target, run_id="r", work_dir=str(tmp_path / "w"))
    assert ssh.run(["true"]).returncode == 0
    ssh.close()
    assert known.read_text() == host.known_hosts_line()
    assert known.stat().st_mode & 0o777 == 0o600
    strict = SshSession("h", target_for(host, known_hosts=str(known)), run_id="r", work_dir=str(tmp_path / "w"))
    assert strict.run(["true"]).returncode == 0
    strict.close()


@pytest.mark.sshd
def test_failed_password_auth_never_shows_the_password(
    host: SshHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused password (from env var or file) appears in no exception text, repr or log line."""
    secret = "s3cr3t-Pa55word-do-not-leak"
    monkeypatch.setenv("DRHOST_TEST_PW", secret)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    pw_file = tmp_path / "pw"
    pw_file.write_text(secret + "\n")
    caplog.set_level(logging.DEBUG)
    for overrides in ({"password_env": "DRHOST_TEST_PW"}, {"password_file": str(pw_file)}):
        target = target_for(host, key_file=None, **overrides)
        assert secret not in repr(target)
        ssh = SshSession("h", target, run_id="r", work_dir="/tmp", reconnects=1)
        with pytest.raises(AuthError) as caught:
            ssh.run(["true"])
        ssh.close()
        text = f"{caught.value} {caught.value!r} {caught.value.args}"
        assert "password from" in text
        assert secret not in text
        assert caught.value.exit_code == ExitCode.REFUSED
    assert secret not in caplog.text
    assert secret not in (host.directory / "sshd.log").read_text()


@pytest.mark.sshd
def test_step_survives_connection_loss_and_runs_once(host: SshHost, session: SshSession, tmp_path: Path) -> None:
    """A step running while its connection is killed is re-attached after reconnect, never run twice."""
    counter = tmp_path / "counter"
    results: list[object] = []
    worker = threading.Thread(
        target=lambda: results.append(session.run(["sh", "-c", f"sleep 3; echo done >> {counter}; echo ok"])))
    worker.start()
    assert wait_for(lambda: session.connections == 1 and list((tmp_path / "work" / "jobs" / "run1").glob("*/pid")))
    time.sleep(0.5)
    for pid in host.session_pids():
        os.kill(pid, signal.SIGKILL)  # the connection dies; the detached step must not
    worker.join(30)
    assert not worker.is_alive()
    assert session.connections >= 2
    (result,) = results
    assert result.returncode == 0 and result.stdout == "ok\n"  # type: ignore[attr-defined]
    assert counter.read_text() == "done\n"


@pytest.mark.sshd
def test_timed_out_step_leaves_no_process(session: SshSession) -> None:
    """On timeout the whole remote process group (even a TERM-ignoring child) is killed and confirmed gone."""
    marker = f"drhost-timeout-marker-{os.getpid()}"
    script = f"trap '' TERM; sh -c 'trap \"\" TERM; sleep 60; : {marker}' & sleep 60; : {marker}"
    started = time.monotonic()
    with pytest.raises(CommandStopped) as caught:
        session.run(["sh", "-c", script], timeout=1)
    assert caught.value.timed_out
    assert time.monotonic() - started < 15
    assert processes_matching(marker) == []


@pytest.mark.sshd
def test_cancel_stops_the_remote_group(session: SshSession) -> None:
    """Setting the cancel event stops the running remote command's process group and raises CommandStopped."""
    marker = f"drhost-cancel-marker-{os.getpid()}"
    cancel = threading.Event()
    timer = threading.Timer(1.0, cancel.set)
    timer.start()
    with pytest.raises(CommandStopped) as caught:
        session.run(["sh", "-c", f"sleep 60 & sleep 60; : {marker}"], cancel=cancel)
    timer.join()
    assert not caught.value.timed_out
    assert processes_matching(marker) == []


@pytest.mark.sshd
def test_frozen_peer_is_detected_and_the_step_reattached(host: SshHost, tmp_path: Path) -> None:
    """A frozen connection is declared dead by the heartbeat; the session reconnects and the step runs once."""
    settings = HeartbeatSettings("plugin_exec", interval_s=0.3, dead_after_s=1.2, reconnects=3)
    ssh = SshSession(host.name, target_for(host), run_id="run1", work_dir=str(tmp_path / "work"),
                     poll_interval_s=0.05, heartbeat=settings)
    counter = tmp_path / "counter"
    results: list[object] = []
    worker = threading.Thread(
        target=lambda: results.append(ssh.run(["sh", "-c", f"sleep 3; echo done >> {counter}; echo ok"])))
    worker.start()
    try:
        assert wait_for(lambda: list((tmp_path / "work" / "jobs" / "run1").glob("*/pid")))
        frozen = host.session_pids()
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        worker.join(40)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        ssh.close()
    assert not worker.is_alive()
    assert ssh.dead_peer is not None and ssh.connections >= 2
    (result,) = results
    assert result.returncode == 0  # type: ignore[attr-defined]
    assert counter.read_text() == "done\n"


@pytest.mark.sshd
def test_large_outputs_arrive_whole_every_time(session: SshSession) -> None:
    """Outputs of a few hundred KB on stdout and stderr arrive byte-exact on every one of 25 runs (data, EOF and
    exit status arriving together must not lose the tail)."""
    script = "head -c 300000 /dev/zero | tr '\\0' a; head -c 50000 /dev/zero | tr '\\0' b >&2"
    for _ in range(25):
        result = session.run(["sh", "-c", script])
        assert (len(result.stdout), len(result.stderr)) == (300000, 50000)
        assert set(result.stdout) == {"a"} and set(result.stderr) == {"b"}


class _LateDataChannel:
    """A channel whose last data, EOF and exit status all become ready between the reader's two checks."""

    def __init__(self) -> None:
        self.data = [b"x" * 1000, b"y" * 500]
        self.asked = 0
        self.closed = False
        self.eof_received = True
        self.status_event = threading.Event()

    def exec_command(self, command: str) -> None: ...
    def sendall(self, data: bytes) -> None: ...
    def shutdown_write(self) -> None: ...
    def close(self) -> None: ...

    def recv_ready(self) -> bool:
        self.asked += 1
        return self.asked > 1 and bool(self.data)  # not yet at the first look, buffered right after

    def recv(self, size: int) -> bytes:
        return self.data.pop(0)

    def recv_stderr_ready(self) -> bool:
        return False

    def exit_status_ready(self) -> bool:
        return True

    def recv_exit_status(self) -> int:
        return 0


def test_output_buffered_with_the_exit_status_is_not_lost(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Data that arrives together with EOF and the exit status is drained, not dropped."""
    channel = _LateDataChannel()
    transport = type("T", (), {"open_session": lambda self, timeout: channel, "is_active": lambda self: True})()
    # The path of an exec request per command (a target without the remote helper).
    ssh = SshSession("t", SshTarget("t", "127.0.0.1", 1), run_id="r", work_dir=str(tmp_path), remote_helper=None)
    monkeypatch.setattr(ssh, "_ensure", lambda: transport)
    status, out, err = ssh._exec("true", None, 5)
    assert (status, out, err) == (0, b"x" * 1000 + b"y" * 500, b"")


def test_a_refused_connect_is_said_in_chinese_naming_the_address(tmp_path: Path) -> None:
    """A connect to a port nobody listens on fails with the address and the OS's reason, in English as before and
    in Chinese with zh_CN (the OS's reason stays as the OS said it)."""
    from drhost.i18n import translator

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransportError) as caught:
        connect(SshTarget("t", "127.0.0.1", port, known_hosts=str(tmp_path / "known_hosts")))
    assert caught.value.category == "network"
    assert str(caught.value) == f"cannot connect to root@127.0.0.1:{port}: Connection refused"
    assert caught.value.in_language(translator("zh_CN")) == f"无法连接 root@127.0.0.1:{port}: Connection refused"


def test_a_connection_lost_for_good_is_said_in_chinese_in_the_error_and_the_event(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A file call whose connection is lost past the reconnects: the error and the network event read in Chinese
    with zh_CN, the call (what was being done) too; their English is unchanged."""
    from drhost.errors import said_in
    from drhost.i18n import translator
    from drhost.transport._ssh import _ConnectionLost

    events: list[tuple[str, str]] = []
    ssh = SshSession("t", SshTarget("t", "127.0.0.1", 1), run_id="r", work_dir=str(tmp_path), reconnects=0,
                     on_network=lambda event, message, data: events.append((event, message)))

    def lost() -> None:
        raise _ConnectionLost("no answer within 30 s")

    monkeypatch.setattr(ssh, "_sftp_client", lost)
    with pytest.raises(TransportError) as caught:
        ssh.read_text("/etc/drproduct.ini")
    zh = translator("zh_CN")
    assert str(caught.value) == ("network failure: t: connection lost during read /etc/drproduct.ini (no answer "
                                 "within 30 s); gave up after 0 reconnects")
    assert caught.value.in_language(zh) == ("网络故障: t: 读取 /etc/drproduct.ini 时连接断开 (no answer within 30 s); "
                                            "重连 0 次后放弃")
    [(event, message)] = events
    assert event == "network.connection_lost"
    assert message == "connection lost during read /etc/drproduct.ini: no answer within 30 s"
    assert said_in(message, zh) == "读取 /etc/drproduct.ini 时连接断开: no answer within 30 s"


@pytest.mark.sshd
def test_peer_that_accepts_and_says_nothing_is_a_network_failure(host: SshHost, tmp_path: Path) -> None:
    """A black-holed peer (connection accepted, not a byte back) fails as a network TransportError after the
    banner timeout — never as a library error that would crash a run."""
    from tcp_proxy import TcpProxy

    with TcpProxy(host.host, host.port) as proxy:
        proxy.blackhole(True)
        target = SshTarget(host.name, proxy.host, proxy.port, key_file=str(host.client_key),
                           known_hosts=str(host.known_hosts), banner_timeout_s=1.0)
        ssh = SshSession(host.name, target, run_id="run1", work_dir=str(tmp_path / "work"), reconnects=0)
        try:
            with pytest.raises(TransportError) as caught:
                ssh.run(["true"])
        finally:
            ssh.close()
    assert caught.value.category == "network"
    # One message whichever of paramiko's two paths reports the silence (start_client's own timeout, or the
    # transport thread's "Error reading SSH protocol banner"): see test_silent_peer_gives_one_message_on_every_path.
    assert str(caught.value) == silent_before_banner(f"root@{proxy.host}:{proxy.port}", 1)


@pytest.mark.sshd
def test_a_peer_gone_silent_costs_one_banner_timeout_not_one_per_reconnect(host: SshHost, tmp_path: Path) -> None:
    """Connected, then the host goes silent (new connections accepted, not a byte back): the call that needs
    a new connection fails after one connection attempt and one banner timeout, though reconnects allow five."""
    from tcp_proxy import TcpProxy

    with TcpProxy(host.host, host.port) as proxy:
        known = tmp_path / "known_hosts_proxy"
        public = (host.directory / "host_key.pub").read_text().split()
        known.write_text(f"[{proxy.host}]:{proxy.port} {public[0]} {public[1]}\n")
        target = SshTarget(host.name, proxy.host, proxy.port, key_file=str(host.client_key), known_hosts=str(known),
                           banner_timeout_s=1.0)
        ssh = SshSession(host.name, target, run_id="run1", work_dir=str(tmp_path / "work"), reconnects=5)
        try:
            assert ssh.run(["true"]).returncode == 0
            proxy.blackhole(True, "down")
            proxy.cut()
            before = proxy.connections
            with pytest.raises(TransportError) as caught:
                ssh.run(["true"])
            attempts = proxy.connections - before
        finally:
            ssh.close()
    assert isinstance(caught.value, SilentPeer), caught.value
    assert attempts == 1
    assert ssh.connections == 1  # the one made before the host went silent


# -- scripted peers on loopback: every path by which paramiko reports a silent or closing server -------------
#
# paramiko reports one peer behaviour in different ways depending on which of its timers or threads sees it
# first (start_client's own timeout vs the transport thread's banner/handshake timers; EOF vs a reset vs a
# failed write). connect() must give one cause and one message for each behaviour. The tests below force
# each path by giving the transport's internal timers other values than start_client's bound, and check from
# the debug log that paramiko really took that path.

CLIENT_BANNER_TIMEOUT_S = 1.0
FAKE_BANNER = "SSH-2.0-FakeSSH_1.0"


def silent_before_banner(address: str, bound: float) -> str:
    return (f"SSH handshake with {address} did not complete within {bound:g} s (the peer accepted the connection "
            "and then sent no SSH banner: it is silent or too slow, e.g. a black hole, a firewall dropping packets "
            "or an overloaded server)")


def silent_after_banner(address: str, bound: float) -> str:
    return (f"SSH handshake with {address} did not complete within {bound:g} s (the peer sent its banner "
            f"{FAKE_BANNER} and then stalled in the key exchange: it is silent or too slow, e.g. a black hole, a "
            "firewall dropping packets or an overloaded server)")


def closed_before_banner(address: str) -> str:
    return (f"SSH handshake with {address} failed: the peer closed the connection before sending an SSH banner "
            "(not an SSH server, or sshd turned the connection away: MaxStartups, tcp wrappers, a firewall reset)")


def closed_in_key_exchange(address: str) -> str:
    return (f"SSH handshake with {address} failed: the peer ({FAKE_BANNER}) closed the connection during the key "
            "exchange")


class ScriptedPeer:
    """A TCP server on 127.0.0.1 that runs ``script(connection)`` in a thread for each connection it accepts;
    connections stay open until the peer is closed, unless the script closes them. A ``held`` peer runs the
    script only once :attr:`release` is set, so that a client can finish connect() first."""

    def __init__(self, script: Callable[[socket.socket], None], *, held: bool = False) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.address = f"root@127.0.0.1:{self.port}"
        self.script_done = threading.Event()
        self.release = threading.Event()
        if not held:
            self.release.set()
        self._script = script
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name=f"scripted-peer-{self.port}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self._connections.append(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        # The peer's own end of a connection it broke on purpose may fail; that is not what the tests check.
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            if self.release.wait(5):
                self._script(connection)
        self.script_done.set()

    def __enter__(self) -> ScriptedPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)
        for connection in self._connections:
            connection.close()


def read_line(connection: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def reset(connection: socket.socket) -> None:
    """Close with a RST instead of a FIN (SO_LINGER 0)."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def disconnect_packet(reason: str) -> bytes:
    """An unencrypted SSH_MSG_DISCONNECT binary packet (RFC 4253 §6, §11.1), as sent before any key exchange."""
    text = reason.encode()
    payload = b"\x01" + struct.pack(">I", 11) + struct.pack(">I", len(text)) + text + struct.pack(">I", 0)
    padding = 8 - (5 + len(payload)) % 8
    padding += 8 if padding < 4 else 0
    return struct.pack(">IB", 1 + len(payload) + padding, padding) + payload + b"\0" * padding


def send_banner(connection: socket.socket) -> None:
    connection.sendall(f"{FAKE_BANNER}\r\n".encode())


def reset_after_client_banner(connection: socket.socket) -> None:
    read_line(connection)
    reset(connection)


def banner_then_fin(connection: socket.socket) -> None:
    send_banner(connection)
    connection.shutdown(socket.SHUT_WR)


def banner_then_disconnect(connection: socket.socket) -> None:
    send_banner(connection)
    connection.sendall(disconnect_packet("go away"))


PEER_SCRIPTS: dict[str, Callable[[socket.socket], None]] = {
    "silent": lambda connection: None,
    "partial-banner": lambda connection: connection.sendall(b"SSH-2.0-Fake"),
    "banner-then-silent": send_banner,
    "fin-at-once": lambda connection: connection.shutdown(socket.SHUT_WR),
    "reset-after-client-banner": reset_after_client_banner,
    "reset-at-once": reset,
    "banner-then-fin": banner_then_fin,
    "banner-then-disconnect": banner_then_disconnect,
}


def expected_handshake_failure(script: str, address: str) -> str:
    if script in ("silent", "partial-banner"):
        return silent_before_banner(address, CLIENT_BANNER_TIMEOUT_S)
    if script == "banner-then-silent":
        return silent_after_banner(address, CLIENT_BANNER_TIMEOUT_S)
    if script in ("fin-at-once", "reset-after-client-banner", "reset-at-once"):
        return closed_before_banner(address)
    return closed_in_key_exchange(address)


def fake_target(peer: ScriptedPeer, tmp_path: Path, **overrides: object) -> SshTarget:
    settings: dict[str, object] = {"known_hosts": str(tmp_path / "known_hosts"),
                                   "banner_timeout_s": CLIENT_BANNER_TIMEOUT_S}
    settings.update(overrides)
    return SshTarget("fake", "127.0.0.1", peer.port, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("script", sorted(PEER_SCRIPTS))
def test_connect_gives_one_message_per_peer_behaviour(script: str, tmp_path: Path) -> None:
    """connect() to a peer that is silent, slow or closes fails with category network and the one message of
    that behaviour, with paramiko's timers as configured (where they race)."""
    with ScriptedPeer(PEER_SCRIPTS[script]) as peer:
        started = time.monotonic()
        with pytest.raises(TransportError) as caught:
            connect(fake_target(peer, tmp_path))
        took = time.monotonic() - started
    assert isinstance(caught.value, TransportError) and caught.value.category == "network"
    assert str(caught.value) == expected_handshake_failure(script, peer.address)
    # Silent is a kind of its own (a reconnect loop stops at it); a peer that closes is not silent.
    assert isinstance(caught.value, SilentPeer) == (script in ("silent", "partial-banner", "banner-then-silent"))
    if "silent" in script or "partial" in script:
        assert took >= CLIENT_BANNER_TIMEOUT_S - 0.05  # the bound the message names was really waited


def test_reset_seen_by_connect_is_the_same_failure_as_a_reset_seen_by_the_banner_exchange(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that accepts and resets at once is "closed before its banner" even when the reset reaches
    connect() itself, which happens when the client thread is slow to run again on a loaded machine."""
    def reset_on_connect(*args: object, **kwargs: object) -> socket.socket:
        raise ConnectionResetError(104, "Connection reset by peer")

    with ScriptedPeer(PEER_SCRIPTS["reset-at-once"]) as peer:
        monkeypatch.setattr(socket, "create_connection", reset_on_connect)
        with pytest.raises(TransportError) as caught:
            connect(fake_target(peer, tmp_path))
    assert caught.value.category == "network"
    assert str(caught.value) == closed_before_banner(peer.address)


def handshake_with(peer: ScriptedPeer, tmp_path: Path, *, banner_timer_s: float, kex_timer_s: float,
                   wait_for_script: bool = False) -> TransportError:
    """Run _handshake (bound CLIENT_BANNER_TIMEOUT_S) with the transport thread's banner and key-exchange
    timers set apart from that bound, so that the path paramiko takes is chosen, not left to chance."""
    target = fake_target(peer, tmp_path)
    sock = socket.create_connection(("127.0.0.1", peer.port), timeout=5)
    if wait_for_script:
        # The peer acts before the client sends its banner, but after connect() returned (a reset that arrives
        # earlier makes connect() fail, which is another path): let it act, then wait until what it did has
        # reached our socket.
        peer.release.set()
        assert peer.script_done.wait(5)
        assert select.select([sock], [], [], 5)[0]
    transport = paramiko.Transport(sock)
    transport.banner_timeout = banner_timer_s
    transport.handshake_timeout = kex_timer_s
    try:
        with pytest.raises(TransportError) as caught:
            _handshake(target, transport)
    finally:
        transport.close()
        sock.close()
    return caught.value


BANNER_READ = "SSHException(Error reading SSH protocol banner)"
RESET_READ = ("SSHException(Error reading SSH protocol banner[Errno 104] Connection reset by peer) <- "
              "ConnectionResetError([Errno 104] Connection reset by peer)")
LATE = 30.0  # a timer that never fires within a test
SOON = 0.2  # a timer that fires well before CLIENT_BANNER_TIMEOUT_S


@pytest.mark.parametrize(("script", "banner_timer_s", "kex_timer_s", "path"), [
    ("silent", LATE, LATE, "start_client timed out"),
    ("silent", SOON, LATE, f"{BANNER_READ} <- TimeoutError()"),
    ("partial-banner", LATE, LATE, "start_client timed out"),
    ("partial-banner", SOON, LATE, f"{BANNER_READ} <- TimeoutError()"),
    ("banner-then-silent", LATE, LATE, "start_client timed out"),
    ("banner-then-silent", LATE, SOON, "EOFError()"),
], ids=["silent/start_client", "silent/banner-timer", "partial/start_client", "partial/banner-timer",
        "banner/start_client", "banner/handshake-timer"])
def test_silent_peer_gives_one_message_on_every_path(script: str, banner_timer_s: float, kex_timer_s: float,
                                                     path: str, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A silent or too slow peer is one network failure naming the bound, whether start_client's timeout or
    the transport thread's banner or handshake timer reports it."""
    caplog.set_level(logging.DEBUG, logger="drhost.transport._ssh_connect")
    with ScriptedPeer(PEER_SCRIPTS[script]) as peer:
        failure = handshake_with(peer, tmp_path, banner_timer_s=banner_timer_s, kex_timer_s=kex_timer_s)
    assert f"{peer.address} ended: {path}\n" in caplog.text + "\n", caplog.text
    assert failure.category == "network"
    assert str(failure) == expected_handshake_failure(script, peer.address)


@pytest.mark.parametrize(("script", "path", "wait_for_script"), [
    ("fin-at-once", f"{BANNER_READ} <- EOFError()", False),
    ("reset-after-client-banner", RESET_READ, False),
    ("reset-at-once", "EOFError()", True),  # the client's banner write fails: paramiko's write_all says EOFError
    ("banner-then-fin", "EOFError()", False),
    ("banner-then-disconnect", "SSHException(Negotiation failed.)", False),
])
def test_closing_peer_gives_one_message_on_every_path(script: str, path: str, wait_for_script: bool,
                                                      tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A peer that closes (FIN, RST on a read or on a write, SSH disconnect) is one network failure saying the
    peer closed, and whether it did so before its banner or in the key exchange — never a timeout."""
    caplog.set_level(logging.DEBUG, logger="drhost.transport._ssh_connect")
    with ScriptedPeer(PEER_SCRIPTS[script], held=wait_for_script) as peer:
        failure = handshake_with(peer, tmp_path, banner_timer_s=LATE, kex_timer_s=LATE,
                                 wait_for_script=wait_for_script)
    assert f"{peer.address} ended: {path}\n" in caplog.text + "\n", caplog.text
    assert failure.category == "network"
    assert str(failure) == expected_handshake_failure(script, peer.address)


# -- the same for authentication: a paramiko server that closes, stalls or refuses ---------------------------

class _AuthServer(paramiko.ServerInterface):
    def __init__(self, on_auth: Callable[[], int]) -> None:
        self.on_auth = on_auth

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return self.on_auth()


class SshPeer(ScriptedPeer):
    """A real SSH server (paramiko in server mode) whose authentication does what ``on_auth(connection)``
    does; ``after_key_exchange(server)`` runs once the key exchange is done."""

    def __init__(self, on_auth: Callable[[socket.socket], int],
                 after_key_exchange: Callable[[paramiko.Transport], None] | None = None) -> None:
        self.host_key = paramiko.ECDSAKey.generate()
        self.servers: list[paramiko.Transport] = []

        def script(connection: socket.socket) -> None:
            server = paramiko.Transport(connection)
            self.servers.append(server)
            server.add_server_key(self.host_key)
            negotiated = threading.Event()
            # With an event start_server returns at once; without, it raises when on_auth has already hung up.
            server.start_server(negotiated, server=_AuthServer(lambda: on_auth(connection)))
            negotiated.wait(10)
            if after_key_exchange is not None and server.is_active():
                after_key_exchange(server)

        super().__init__(script)

    def known_hosts(self, path: Path) -> Path:
        path.write_text(f"[127.0.0.1]:{self.port} {self.host_key.get_name()} {self.host_key.get_base64()}\n")
        return path

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.close()
        super().__exit__(*exc)


@pytest.fixture
def client_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # no agent keys: the key file is the only credential
    path = tmp_path / "client_key"
    paramiko.ECDSAKey.generate().write_private_key_file(str(path))
    return path


def closed_in_auth(address: str) -> str:
    return (f"SSH authentication with {address} broke off: the peer closed the connection during authentication; "
            "sshd does this after MaxAuthTries failed attempts or when LoginGraceTime ran out")


def test_peer_closing_before_the_auth_request_is_the_same_failure(tmp_path: Path, client_key: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A peer that closes after the key exchange, seen before the auth request ("No existing session"), is a
    network failure saying the peer closed during authentication."""
    caplog.set_level(logging.DEBUG, logger="drhost.transport._ssh_connect")
    handshake_done = threading.Event()

    def close_after_handshake(server: paramiko.Transport) -> None:
        handshake_done.wait(10)
        server.close()

    with SshPeer(lambda connection: paramiko.AUTH_FAILED, close_after_handshake) as peer:
        target = fake_target(peer, tmp_path, key_file=str(client_key))
        sock = socket.create_connection(("127.0.0.1", peer.port), timeout=5)
        transport = paramiko.Transport(sock)
        try:
            _handshake(target, transport)
            handshake_done.set()
            assert wait_for(lambda: not transport.is_active(), 5)
            with pytest.raises(TransportError) as caught:
                _authenticate(target, transport)
        finally:
            transport.close()
            sock.close()
    assert "ended: SSHException: No existing session" in caplog.text
    assert type(caught.value) is TransportError and caught.value.category == "network"
    assert str(caught.value) == closed_in_auth(peer.address)


def test_peer_closing_during_the_auth_wait_is_the_same_failure(tmp_path: Path, client_key: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A peer that closes while the client waits for the auth answer (paramiko: AuthenticationException) is
    the same network failure, never an AuthError (which is never retried)."""
    caplog.set_level(logging.DEBUG, logger="drhost.transport._ssh_connect")

    def hang_up(connection: socket.socket) -> int:
        connection.shutdown(socket.SHUT_RDWR)
        return paramiko.AUTH_FAILED

    with SshPeer(hang_up) as peer:
        target = fake_target(peer, tmp_path, key_file=str(client_key), known_hosts=str(peer.known_hosts(
            tmp_path / "known_hosts")))
        with pytest.raises(TransportError) as caught:
            connect(target)
    assert "ended: AuthenticationException: Authentication failed: transport shut down or saw EOF" in caplog.text
    assert not isinstance(caught.value, AuthError) and caught.value.category == "network"
    assert str(caught.value) == closed_in_auth(peer.address)


def test_peer_silent_during_auth_is_a_network_failure_naming_the_bound(tmp_path: Path, client_key: Path) -> None:
    """A peer that stops answering during authentication fails after auth_timeout_s as a network failure,
    not as refused credentials."""
    release = threading.Event()

    def stall(connection: socket.socket) -> int:
        release.wait(10)
        return paramiko.AUTH_FAILED

    with SshPeer(stall) as peer:
        target = fake_target(peer, tmp_path, key_file=str(client_key), auth_timeout_s=0.5,
                             known_hosts=str(peer.known_hosts(tmp_path / "known_hosts")))
        try:
            with pytest.raises(TransportError) as caught:
                connect(target)
        finally:
            release.set()
    assert not isinstance(caught.value, AuthError) and caught.value.category == "network"
    assert str(caught.value) == (f"SSH authentication with {peer.address} did not complete within 0.5 s (the peer "
                                 "stopped answering during authentication)")


def test_refused_key_is_still_an_auth_error(tmp_path: Path, client_key: Path) -> None:
    """A live peer that refuses the key gives AuthError (category auth) listing what was tried."""
    with SshPeer(lambda connection: paramiko.AUTH_FAILED) as peer:
        target = fake_target(peer, tmp_path, key_file=str(client_key),
                             known_hosts=str(peer.known_hosts(tmp_path / "known_hosts")))
        with pytest.raises(AuthError) as caught:
            connect(target)
    assert caught.value.category == "auth"
    assert str(caught.value).startswith(f"authentication as {peer.address} (fake) failed; tried: key file "
                                        f"{client_key} (ecdsa-sha2-nistp256 SHA256:")
