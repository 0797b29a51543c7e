"""The detached-job protocol's parsing: the job's output is never mixed with the login shell's noise."""

from __future__ import annotations

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
