"""``become = sudo`` against real OpenSSH servers that refuse root login: a non-root login user, and every
remote effect (commands, detached jobs and their stops, file reads, writes and uploads) done as root."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drhost.transport import AuthError, Become, BecomeError, CommandStopped, SshSession, SshTarget, TransportError
from sshd_hosts import LoginUser, SshHost, sshd_available, start_hosts

available, why = sshd_available()
pytestmark = [pytest.mark.sshd, pytest.mark.integration,
              pytest.mark.skipif(not available, reason=why)]

PASSWORD_ENV = "DRHOST_TEST_BECOME_PASSWORD"
TO_ROOT = Become()


@pytest.fixture
def host(login_host: SshHost) -> SshHost:
    return login_host


def session_for(host: SshHost, tmp_path: Path, become: Become | None = TO_ROOT, *,
                user: str | None = None) -> SshSession:
    user = user or host.login_user or "root"
    ssh = SshTarget(host.name, host.host, host.port, user=user, key_file=str(host.client_key),
                    known_hosts=str(host.known_hosts))
    # Without become the work directory must be the login user's own: it cannot enter the test's.
    work = tmp_path / "work" if become is not None else Path(f"/home/{user}/.drhost-test")
    return SshSession(host.name, ssh, run_id="run1", work_dir=str(work), kill_grace_s=1.0,
                      poll_interval_s=0.05, reconnects=1, become=become)


def test_the_targets_refuse_root_login(host: SshHost, tmp_path: Path) -> None:
    """The test targets' sshd turns root away: whatever works here works without logging in as root."""
    root = session_for(host, tmp_path, None, user="root")
    try:
        with pytest.raises(AuthError):
            root.run(["true"])
    finally:
        root.close()


def test_commands_and_files_run_as_root_through_sudo(host: SshHost, tmp_path: Path) -> None:
    """Logged in as a user, commands run as root, and files are written, read and removed as root where the
    login user has no right; the login user alone cannot."""
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    plain = session_for(host, tmp_path, None)
    session = session_for(host, tmp_path)
    try:
        assert plain.run(["id", "-un"]).stdout.strip() == host.login_user
        with pytest.raises(TransportError):
            plain.write_text(str(private / "nope"), "x")
        result = session.run(["sh", "-c", "id -un; echo $HOME; cat"], input="fed in\n")
        assert (result.returncode, result.stdout) == (0, "root\n/root\nfed in\n")
        session.write_text(str(private / "conf"), "written as root\n", mode=0o640)
        info = (private / "conf").stat()
        assert (info.st_uid, info.st_mode & 0o777) == (0, 0o640)
        assert session.read_text(str(private / "conf")) == "written as root\n"
        assert session.exists(str(private / "conf"))
        session.remove(str(private / "conf"))
        assert not (private / "conf").exists()
    finally:
        plain.close()
        session.close()


def test_upload_is_staged_as_the_login_user_then_moved_into_place_as_root(host: SshHost, tmp_path: Path) -> None:
    """put() sends the file as the login user into its private staging directory, then moves it, verified,
    into a root-only directory as root (owner root, mode 0644); nothing staged is left."""
    payload = tmp_path / "package.bin"
    payload.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    session = session_for(host, tmp_path)
    try:
        session.put(str(payload), str(private / "pkg" / "package.bin"))
    finally:
        session.close()
    placed = private / "pkg" / "package.bin"
    assert hashlib.sha256(placed.read_bytes()).digest() == hashlib.sha256(payload.read_bytes()).digest()
    assert (placed.stat().st_uid, placed.stat().st_mode & 0o777) == (0, 0o644)
    staging = Path(f"/home/{host.login_user}/.drhost-staging")
    assert staging.stat().st_mode & 0o777 == 0o700
    assert not (staging / "run1").exists()


def test_a_root_job_past_its_deadline_is_stopped_and_confirmed_gone(host: SshHost, tmp_path: Path) -> None:
    """A detached command running as root is stopped at its deadline (TERM, then KILL) and confirmed gone,
    though the login user could not signal it."""
    marker = f"become-{secrets.token_hex(4)}"
    session = session_for(host, tmp_path)
    try:
        with pytest.raises(CommandStopped):
            session.run(["sh", "-c", f"id -u > {tmp_path / 'uid'}; trap '' TERM; sleep 300; echo {marker}"],
                        timeout=1.5)
    finally:
        session.close()
    assert (tmp_path / "uid").read_text() == "0\n"
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert left == []


@pytest.fixture
def password_host(tmp_path: Path, password_login_user: LoginUser) -> Iterator[SshHost]:
    (sshd,) = start_hosts(tmp_path, 1, login_user=password_login_user.name)
    try:
        yield sshd
    finally:
        sshd.stop()


def test_password_sudo_gets_the_password_on_stdin_and_never_logs_it(
        password_host: SshHost, tmp_path: Path, password_login_user: LoginUser, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """With password sudo the password (from an env var) is fed when sudo asks: the command runs as root,
    its input and output are its own, and the password is in no log and in no job file."""
    caplog.set_level(logging.DEBUG)
    sudo_password = password_login_user.password
    assert sudo_password is not None
    monkeypatch.setenv(PASSWORD_ENV, sudo_password)
    session = session_for(password_host, tmp_path, Become(password_env=PASSWORD_ENV))
    try:
        result = session.run(["sh", "-c", "id -un; cat"], input="only this\n")
        assert (result.returncode, result.stdout, result.stderr) == (0, "root\nonly this\n", "")
        session.write_text(str(tmp_path / "by-root"), "x")
    finally:
        session.close()
    assert (tmp_path / "by-root").stat().st_uid == 0
    assert sudo_password not in caplog.text
    work = tmp_path / "work"
    assert not any(sudo_password.encode() in path.read_bytes() for path in work.rglob("*") if path.is_file())


def test_wrong_sudo_password_is_one_clear_error_not_retried(
        password_host: SshHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused password is a BecomeError naming where the password came from (never the password), on
    the first try: no reconnect, no second attempt."""
    wrong = "not-" + secrets.token_hex(6)
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    session = session_for(password_host, tmp_path, Become(password_env=PASSWORD_ENV))
    started = time.monotonic()
    try:
        with pytest.raises(BecomeError) as caught:
            session.run(["true"])
    finally:
        session.close()
    message = str(caught.value)
    assert f"${PASSWORD_ENV}" in message and "wrong password" in message and wrong not in message
    assert caught.value.category == "auth"
    assert session.connections == 1
    assert time.monotonic() - started < 30


def test_password_sudo_without_a_password_says_what_to_set(password_host: SshHost, tmp_path: Path) -> None:
    """sudo asking for a password that is not configured is an error naming the keys that supply one."""
    session = session_for(password_host, tmp_path, Become())
    try:
        with pytest.raises(BecomeError, match="become_password_env or become_password_file"):
            session.run(["true"])
    finally:
        session.close()


def test_a_login_user_sudo_does_not_allow_is_refused_with_sudos_reason(host: SshHost, tmp_path: Path) -> None:
    """Becoming a user sudo's rules do not allow is refused with what sudo said, not retried as a network
    failure."""
    session = session_for(host, tmp_path, Become(user="no-such-user-here"))
    try:
        with pytest.raises(BecomeError, match="no-such-user-here"):
            session.run(["true"])
    finally:
        session.close()


def test_the_remote_helper_runs_as_root_after_one_sudo_per_connection(
        host: SshHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With become the remote helper itself is started through sudo: it runs as root, and every command after
    it runs as root through it, on the one channel (one sudo a connection, not one a command)."""
    import re

    import paramiko

    opened: list[int] = []
    original = paramiko.Transport.open_session

    def counting(self: paramiko.Transport, *args: object, **kwargs: object) -> paramiko.Channel:
        opened.append(1)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(paramiko.Transport, "open_session", counting)
    session = session_for(host, tmp_path)
    try:
        users = {session.run(["id", "-un"]).stdout.strip() for _ in range(5)}
        found = re.search(r"remote helper running .*pid (\d+)", str(session.remote_helper()))
        assert found, session.remote_helper()
        # The target is this machine: the helper's own process, as the kernel sees it.
        uid_line = next(line for line in Path(f"/proc/{found.group(1)}/status").read_text().splitlines()
                        if line.startswith("Uid:"))
    finally:
        session.close()
    assert users == {"root"} and len(opened) == 1, (users, opened)
    assert uid_line.split()[1] == "0"
