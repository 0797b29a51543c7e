"""The ssh TargetSession against real OpenSSH servers on loopback (tests/sshd_hosts.py)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from drhost.errors import DrhostError, ExitCode
from drhost.transport import AuthError, CommandStopped, HostKeyError, SshSession, SshTarget
from drhost.transport._heartbeat import HeartbeatSettings
from drhost.transport._ssh_connect import fingerprint
from sshd_hosts import SshHost, sshd_available, start_hosts

available, why = sshd_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not available, reason=why)]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[SshHost]:
    (sshd,) = start_hosts(tmp_path, 1)
    try:
        yield sshd
    finally:
        sshd.stop()


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


def test_run_returns_output_and_exit_code(session: SshSession) -> None:
    """run returns stdout, stderr, stdin-fed input and the exit code of the remote command."""
    result = session.run(["sh", "-c", "echo out; echo err >&2; cat; exit 3"], input="fed in\n")
    assert result.returncode == 3
    assert result.stdout == "out\nfed in\n"
    assert result.stderr == "err\n"
    assert result.argv == ("sh", "-c", "echo out; echo err >&2; cat; exit 3")


def test_argv_words_are_never_interpreted_by_a_shell(session: SshSession, tmp_path: Path) -> None:
    """Each argv word reaches the command verbatim: quotes, $, ;, spaces and newlines are not shell syntax."""
    canary = tmp_path / "pwned"
    nasty = ["it's", '"$HOME"', f"; touch {canary}", "$(touch {canary})", "a\nb", "`id`", "*"]
    result = session.run(["printf", "%s|", *nasty])
    assert result.stdout == "|".join(nasty) + "|"
    assert not canary.exists()


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
    ssh = SshSession("t", SshTarget("t", "127.0.0.1", 1), run_id="r", work_dir=str(tmp_path))
    monkeypatch.setattr(ssh, "_ensure", lambda: transport)
    status, out, err = ssh._exec("true", None, 5)
    assert (status, out, err) == (0, b"x" * 1000 + b"y" * 500, b"")


def test_peer_that_accepts_and_says_nothing_is_a_network_failure(host: SshHost, tmp_path: Path) -> None:
    """A black-holed peer (connection accepted, not a byte back) fails as a network TransportError after the
    banner timeout — never as a library error that would crash a run."""
    from drhost.transport import TransportError
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
    assert "did not complete within 1 s" in str(caught.value)
