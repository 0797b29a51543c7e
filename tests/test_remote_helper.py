"""The remote helper against real OpenSSH servers: one process per connection runs every command, exactly as
an exec request of its own would; it comes back after it dies; a target without its Python falls back to a
session per command and says so."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from drhost.target_check import check_target
from drhost.transport import SshSession, SshTarget
from sshd_hosts import SshHost

pytestmark = [pytest.mark.integration, pytest.mark.sshd]

def session_for(host: SshHost, tmp_path: Path, **options: object) -> SshSession:
    target = SshTarget(host.name, host.host, host.port, key_file=str(host.client_key),
                       known_hosts=str(host.known_hosts))
    return SshSession(host.name, target, run_id="run1", work_dir=str(tmp_path / "work"), kill_grace_s=1.0,
                      poll_interval_s=0.05, **options)  # type: ignore[arg-type]


@pytest.fixture
def channels(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every SSH session channel opened from now on (paramiko's own count: one per exec request or helper)."""
    opened: list[str] = []
    original = paramiko.Transport.open_session

    def counting(self: paramiko.Transport, *args: object, **kwargs: object) -> paramiko.Channel:
        opened.append("session")
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(paramiko.Transport, "open_session", counting)
    yield opened


def helper_pid(session: SshSession) -> int:
    """The pid of the session's helper on the target, as the session says it (``doctor`` shows the same)."""
    found = re.search(r"remote helper running \(python 3\.\d+\.\d+, pid (\d+)\)", str(session.remote_helper()))
    assert found, session.remote_helper()
    return int(found.group(1))


COMMANDS = [
    (["sh", "-c", "printf 'out\\n'; printf 'err\\n' >&2; exit 3"], None),
    (["cat"], "stdin reaches the command\n"),
    (["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' a; head -c 40000 /dev/zero | tr '\\0' b >&2"], None),
    (["printf", "%s", "ünïcode ☃"], None),
    (["sh", "-c", "kill -9 $$"], None),
]


def outcome(session: SshSession) -> list[tuple[int, str, str]]:
    results = [session.run(argv, input=given, timeout=60) for argv, given in COMMANDS]
    return [(r.returncode, r.stdout, r.stderr) for r in results]


def test_every_command_goes_through_one_helper_with_the_same_results(
        host: SshHost, tmp_path: Path, channels: list[str]) -> None:
    """Commands through the helper give what exec requests of their own give (exit codes, a signal, stdout,
    stderr, stdin, large and non-ASCII output); the helper opens one channel for all of them, where a session
    per command opens at least one per command."""
    with_helper = session_for(host, tmp_path)
    try:
        through_helper = outcome(with_helper)
        pid = helper_pid(with_helper)
        assert b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()  # the sshd host is this machine
    finally:
        with_helper.close()
    helper_channels = len(channels)
    channels.clear()
    without = session_for(host, tmp_path, remote_helper=None)
    try:
        assert outcome(without) == through_helper
    finally:
        without.close()
    assert helper_channels == 1, helper_channels
    assert len(channels) >= len(COMMANDS)
    assert through_helper[0] == (3, "out\n", "err\n") and through_helper[1][1] == "stdin reaches the command\n"
    assert len(through_helper[2][1]) == 300000 and through_helper[3][1] == "ünïcode ☃"


def test_calls_from_many_threads_share_one_helper_and_each_gets_its_own_answer(
        host: SshHost, tmp_path: Path, channels: list[str]) -> None:
    """Twelve threads at once on one connection, their commands ending in another order than they started: each
    gets its own output, one of the waiting calls reads the channel for all (no reader thread of the helper's),
    and one helper serves them all."""
    session = session_for(host, tmp_path)
    results: dict[int, tuple[int, str]] = {}

    def work(index: int) -> None:
        done = session.run(["sh", "-c", f"sleep 0.{(11 - index) % 4}; echo {index}"], timeout=60)
        results[index] = (done.returncode, done.stdout)

    try:
        assert session.run(["true"], timeout=30).returncode == 0
        pid = helper_pid(session)
        workers = [threading.Thread(target=work, args=(index,)) for index in range(12)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert results == {index: (0, f"{index}\n") for index in range(12)}
        assert helper_pid(session) == pid and len(channels) == 1
        assert not [t.name for t in threading.enumerate() if "helper-reader" in t.name]
    finally:
        session.close()


def test_a_large_request_waits_for_the_window_whatever_timeout_the_last_reader_left(
        host: SshHost, tmp_path: Path) -> None:
    """The channel's timeout is the reading call's deadline: a request bigger than the SSH window, sent while a
    tiny one is left on the channel, waits for the window as long as it takes — same helper, no reconnect."""
    session = session_for(host, tmp_path)
    try:
        assert session.run(["true"], timeout=30).returncode == 0
        pid = helper_pid(session)
        assert session._helper is not None
        session._helper._channel.settimeout(1e-6)
        given = "x" * (6 * 1024 * 1024)  # three times paramiko's 2 MiB window, and base64 on top
        # The helper stopped for a second: it reads nothing meanwhile, so the window shuts for certain.
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(1.0, os.kill, (pid, signal.SIGCONT)).start()
        done = session.run(["wc", "-c"], input=given, timeout=120)
        assert (done.returncode, done.stdout.strip()) == (0, str(len(given)))
        assert helper_pid(session) == pid
    finally:
        session.close()


def test_a_killed_helper_is_started_again_and_the_command_runs_once(host: SshHost, tmp_path: Path) -> None:
    """The helper killed on the target between two commands: the next command gets a new helper and runs
    (once: its job is not started twice)."""
    session = session_for(host, tmp_path, reconnects=2)
    marker = tmp_path / "runs.log"
    try:
        assert session.run(["true"], timeout=30).returncode == 0
        first = helper_pid(session)
        os.kill(first, signal.SIGKILL)
        result = session.run(["sh", "-c", f"echo once >> {marker}; echo done"], timeout=60)
        assert (result.returncode, result.stdout) == (0, "done\n")
        assert marker.read_text() == "once\n"
        # A new helper: on the same connection when the old one's end was seen first, else after a reconnect.
        assert helper_pid(session) != first and session.connections in (1, 2)
    finally:
        session.close()


def test_a_target_without_the_helpers_python_falls_back_and_doctor_says_so(host: SshHost, tmp_path: Path) -> None:
    """An interpreter the target does not have: every command still runs (a session each), and ``doctor
    --target`` names the reason; with the default python3, doctor says the helper runs."""
    session = session_for(host, tmp_path, remote_helper="/nonexistent/python3")
    try:
        result = session.run(["sh", "-c", "echo fine"], timeout=30)
        assert (result.returncode, result.stdout) == (0, "fine\n")
        said = str(session.remote_helper())
        assert said.startswith("no remote helper") and "/nonexistent/python3" in said and "per command" in said
    finally:
        session.close()
    target = {"transport": "ssh", "host": host.host, "port": host.port, "user": "root", "root": str(tmp_path / "r"),
              "key_file": str(host.client_key), "known_hosts": str(host.known_hosts)}
    from drhost.config import load_config

    config = load_config(overrides=[]).data
    for helper, expected in ((None, "remote helper running (python 3."), ("/nonexistent/python3", "no remote helper")):
        checks = check_target(host.name, {**target, **({"remote_helper": helper} if helper else {})}, config)
        (line,) = [check for check in checks if check.name == "helper"]
        assert line.ok and line.detail.startswith(expected), checks


def test_the_helper_starts_the_same_wrapper_as_the_shell_scripts() -> None:
    """One job protocol: the wrapper the helper starts is, byte for byte, the one the shell scripts start."""
    from drhost.transport import _remote_jobs, remote_helper

    assert remote_helper.WRAPPER == _remote_jobs.WRAPPER


def test_a_job_started_by_the_helper_is_polled_and_stopped_by_the_scripts_and_back(
        host: SshHost, tmp_path: Path) -> None:
    """A long job started through the helper is seen running and then exited by the shell scripts' poll, and
    one started by a script by the helper's; the helper's wait ends as soon as the job does."""
    from drhost.transport import _remote_jobs as jobs

    with_helper = session_for(host, tmp_path)
    without = session_for(host, tmp_path, remote_helper=None)
    env = {"PATH": jobs.DEFAULT_PATH}
    try:
        assert with_helper.run(["true"], timeout=30).returncode == 0  # the helper is up
        helper = with_helper._helper
        assert helper is not None

        def ask(request: dict[str, object], timeout: float) -> dict[str, object]:
            return helper.request(request, timeout)

        started = jobs.start_and_wait_helper(ask, with_helper.job_dir, ["sh", "-c", "sleep 1; echo slow"], env,
                                             job_id="cross-1", wait_s=0.1)
        assert started.started and started.returncode is None
        assert jobs.poll(without._exec, with_helper.job_dir, "cross-1").state == "running"
        assert jobs.poll(without._exec, with_helper.job_dir, "cross-1", wait_s=5).state == "exited"
        assert jobs.read_output(without._exec, with_helper.job_dir, "cross-1", remove=True) == (b"slow\n", b"")
        by_script = jobs.start_and_wait(without._exec, with_helper.job_dir, ["sh", "-c", "sleep 1; exit 4"], env,
                                        job_id="cross-2")
        assert by_script.started and by_script.returncode is None
        waited = time.monotonic()
        status = jobs.poll_helper(ask, with_helper.job_dir, "cross-2", wait_s=10)
        assert (status.state, status.returncode) == ("exited", 4) and time.monotonic() - waited < 5
        assert jobs.start_and_wait_helper(ask, with_helper.job_dir, ["true"], env, job_id="cross-2").started is False
        missing = jobs.poll_helper(ask, with_helper.job_dir, "no-such-job")
        assert missing.state == "missing" == jobs.poll(without._exec, with_helper.job_dir, "no-such-job").state
    finally:
        with_helper.close()
        without.close()


def test_an_upload_is_verified_by_the_hash_the_helper_took_as_it_arrived(host: SshHost, tmp_path: Path) -> None:
    """put() of a file: the helper hashes it on the target as its bytes arrive, so no sha256sum of the whole
    file runs after the transfer; the file on the target is the local one, byte for byte."""
    local = tmp_path / "package.bin"
    local.write_bytes(os.urandom(8 * 1024 * 1024))
    session = session_for(host, tmp_path)
    sent: list[str] = []
    real_exec = session._exec

    def recording(command: str, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
        sent.append(command)
        return real_exec(command, stdin, timeout)

    session._exec = recording  # type: ignore[method-assign]
    target = tmp_path / "target" / "package.bin"
    try:
        session.put(str(local), str(target))
    finally:
        session.close()
    assert target.read_bytes() == local.read_bytes()
    assert not [command for command in sent if "sha256sum" in command], sent


def test_a_followed_hash_that_differs_is_checked_again_before_anything_is_concluded(
        host: SshHost, tmp_path: Path) -> None:
    """A hash taken while the bytes arrived that does not match (or none at all) is never taken as a failed
    upload: the whole file is hashed again, and only that hash decides."""
    from drhost.transport._sftp_upload import upload_resumable

    local = tmp_path / "package.bin"
    local.write_bytes(os.urandom(1024 * 1024))
    session = session_for(host, tmp_path)
    hashed_after: list[str] = []
    try:
        session.run(["true"], timeout=30)
        sftp = session._sftp_client()
        for followed in ("0" * 64, None):
            def remote_sha256(path: str, length: int | None) -> str:
                hashed_after.append(path)
                return hashlib.sha256(Path(path).read_bytes()[:length]).hexdigest()

            target = tmp_path / f"up-{followed}.bin"
            report = upload_resumable(sftp, str(local), str(target), remote_sha256=remote_sha256,
                                      hash_while=lambda path, size, value=followed: lambda: value)
            assert report.attempts == 1 and target.read_bytes() == local.read_bytes()
    finally:
        session.close()
    assert len(hashed_after) == 2
