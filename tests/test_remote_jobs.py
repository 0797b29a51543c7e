"""The detached-job protocol's parsing: the job's output is never mixed with the login shell's noise."""

from __future__ import annotations

from pathlib import Path

from drhost.transport import _remote_jobs as jobs


def test_job_output_is_taken_from_the_frame_not_the_channel_stderr() -> None:
    """What the account's rc files print on the channel's stderr never appears as the job's stderr."""
    def exec_fn(command: str, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
        return 0, b"4242\nrc 3\n4 4\nout\nerr\n", b"pyenv: cannot rehash: /root/.pyenv/shims isn't writable\n"

    result = jobs.start_and_wait(exec_fn, "/tmp/jobs", ["sh", "-c", "exit 3"], {"PATH": "/bin"}, wait_s=1)
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")


def test_a_running_job_returns_no_result_from_its_start() -> None:
    """A job still running after the start's wait is left detached and reported without a result."""
    def exec_fn(command: str, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
        return 0, b"4242\n", b""

    result = jobs.start_and_wait(exec_fn, "/tmp/jobs", ["sleep", "60"], {}, wait_s=1)
    assert result.started and result.returncode is None


def test_every_word_is_quoted() -> None:
    """The command line quotes every word and every environment value; nothing is interpreted."""
    line = jobs.command_line(["echo", "$(reboot)", "a b;c"], {"X": "1 `id`"}, "/tmp/x y")
    assert "'$(reboot)'" in line and "'a b;c'" in line and "'X=1 `id`'" in line and "'/tmp/x y'" in line


def test_a_cut_off_output_is_an_error_not_a_shorter_output() -> None:
    """Output shorter than its frame announces raises TransportError instead of reaching the plugin cut."""
    import pytest

    from drhost.transport import TransportError

    def exec_fn(command: str, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
        return 0, b"4242\nrc 0\n30000 0\n{\"jobs\": [", b""

    with pytest.raises(TransportError, match="incomplete: 10 of 30000 bytes"):
        jobs.start_and_wait(exec_fn, "/tmp/jobs", ["drproduct-db", "dump"], {}, wait_s=1)


def test_a_cut_off_output_is_said_in_chinese_with_its_sizes() -> None:
    """The cut-off-output error reads in Chinese with zh_CN, with the same byte counts; its English is unchanged."""
    import pytest

    from drhost.i18n import translator
    from drhost.transport import TransportError

    def exec_fn(command: str, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
        return 0, b"4242\nrc 0\n30000 0\n{\"jobs\": [", b""

    with pytest.raises(TransportError) as caught:
        jobs.start_and_wait(exec_fn, "/tmp/jobs", ["drproduct-db", "dump"], {}, wait_s=1)
    assert str(caught.value) == "job output arrived incomplete: 10 of 30000 bytes"
    assert caught.value.in_language(translator("zh_CN")) == "作业输出不完整: 只收到 10/30000 字节"


def test_an_empty_pid_or_rc_reads_as_not_written_yet_by_both_pollers(tmp_path: Path) -> None:
    """The wrapper writes pid and rc with one write into a file its redirection just made empty: the shell
    scripts' poll and the helper's read an empty file as a missing one (starting; running or gone by the
    group), and a written one as written."""
    import os
    import signal
    import subprocess

    from drhost.transport import remote_helper

    def local_exec(command: str, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
        done = subprocess.run(["/bin/sh", "-c", command], input=stdin or b"", capture_output=True, timeout=timeout)
        return done.returncode, done.stdout, done.stderr

    def request(message: dict[str, object], timeout: float) -> dict[str, object]:
        return remote_helper.OPERATIONS[str(message["op"])](message)

    job_id = "20261207T000000-0badcafe"
    job = tmp_path / job_id
    job.mkdir()
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    dead = subprocess.Popen(["true"], start_new_session=True)
    dead.wait()
    try:
        cases = [("", None, "starting"), (f"{sleeper.pid}\n", "", "running"), (f"{dead.pid}\n", "", "gone"),
                 (f"{sleeper.pid}\n", "3\n", "exited")]
        for pid, rc, state in cases:
            (job / "pid").write_text(pid)
            (job / "rc").unlink(missing_ok=True)
            if rc is not None:
                (job / "rc").write_text(rc)
            for status in (jobs.poll(local_exec, str(tmp_path), job_id),
                           jobs.poll_helper(request, str(tmp_path), job_id)):
                assert status.state == state, (pid, rc, status)
                assert status.returncode == (3 if state == "exited" else None)
    finally:
        os.killpg(sleeper.pid, signal.SIGKILL)
        sleeper.wait()
