"""The per-call output budget (``orchestrator/_output_budget.py``) on a fake clock: log lines, bytes, line
length, the progress rate, the last progress, and what is counted as dropped."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from drhost.context import HostContext
from drhost.orchestrator._output_budget import CallOutput, Dropped, HeldProgress, OutputBudget, OutputLimits
from worker_helpers import make_context


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def budget(clock: FakeClock | None = None, **limits: Any) -> OutputBudget:
    return OutputBudget(OutputLimits(**limits), clock=clock or FakeClock())


def test_log_lines_stop_at_the_line_limit_and_are_counted() -> None:
    """Lines past ``log_lines`` are dropped, and each dropped line and its bytes are counted."""
    b = budget(log_lines=3)
    kept = [b.admit_log(f"line {i}") for i in range(10)]
    assert kept == ["line 0", "line 1", "line 2", *[None] * 7]
    assert b.dropped() == Dropped(log_lines=7, log_bytes=7 * len("line 0"), progress=0, truncated=0)


def test_log_bytes_limit_spends_the_budget_for_good() -> None:
    """The first line over ``log_bytes`` ends the call's logging: a later short line is dropped too."""
    b = budget(log_lines=100, log_bytes=25)
    assert b.admit_log("a" * 10) == "a" * 10
    assert b.admit_log("b" * 10) == "b" * 10
    assert b.admit_log("c" * 10) is None  # 30 > 25
    assert b.admit_log("d") is None  # would fit, but what is written stays the call's first lines
    assert b.dropped() == Dropped(log_lines=2, log_bytes=11)


def test_bytes_are_counted_in_utf8() -> None:
    """The byte limit is UTF-8 bytes, not characters: 4 three-byte characters do not fit in 10 bytes."""
    b = budget(log_bytes=10)
    assert b.admit_log("ééé") == "ééé"  # 6 bytes
    assert b.admit_log("€€") is None  # 6 more bytes: 12 > 10
    assert b.dropped().log_bytes == 6


def test_long_lines_are_cut_with_a_note_and_the_tail_counted() -> None:
    """A line over ``line_chars`` is kept cut to that length with '[... N more characters]'; its tail
    counts as dropped bytes and the line as truncated, not as dropped."""
    b = budget(line_chars=80)
    kept = b.admit_log("x" * 80 + "y" * 920)
    assert kept == "x" * 80 + " [... 920 more characters]"
    assert b.dropped() == Dropped(log_lines=0, log_bytes=920, progress=0, truncated=1)


def test_cut_lines_count_against_the_byte_limit_as_written() -> None:
    """What a cut line costs is what is written (its head and the note), so the limit bounds the file."""
    b = budget(line_chars=100, log_bytes=1024)
    written = 0
    while (line := b.admit_log("z" * 10_000)) is not None:
        written += len(line)
    assert written <= 1024 and written > 1024 - 130


def test_progress_is_written_at_most_once_per_interval() -> None:
    """Reports within ``progress_interval_s`` of the last written one are held, not written."""
    clock = FakeClock()
    b = budget(clock, progress_interval_s=0.5)
    assert b.admit_progress({"done": 1}) == HeldProgress({"done": 1}, 100.0)
    clock.now += 0.125  # steps exact in binary: 0.5 s after the first is exactly 100.5
    assert b.admit_progress({"done": 2}) is None
    clock.now += 0.125
    assert b.admit_progress({"done": 3}) is None
    clock.now += 0.25
    assert b.admit_progress({"done": 4}) == HeldProgress({"done": 4}, 100.5)
    assert b.dropped().progress == 2  # 2 was superseded by 3, 3 by 4


def test_held_progress_is_due_once_its_interval_passed() -> None:
    """The held report is handed out by ``due`` only after the interval, keeping the time it was made."""
    clock = FakeClock()
    b = budget(clock, progress_interval_s=1.0)
    b.admit_progress({"done": 1})
    clock.now += 0.25
    b.admit_progress({"done": 2})
    assert b.wait_s() == 0.75
    assert b.due() is None
    clock.now += 0.75
    assert b.due() == HeldProgress({"done": 2}, 100.25)
    assert b.due() is None and b.wait_s() is None
    assert b.dropped().progress == 0


def test_close_hands_out_the_last_progress_whatever_the_interval() -> None:
    """At the call's end the last held report is written, so the final value is never lost."""
    clock = FakeClock()
    b = budget(clock, progress_interval_s=60)
    for done in range(1, 1001):
        b.admit_progress({"done": done, "total": 1000})
        clock.now += 0.001
    final = b.close()
    assert final is not None and final.args == {"done": 1000, "total": 1000}
    assert b.dropped().progress == 998  # 1 written at once, 1000 at close


def test_nothing_is_written_after_close() -> None:
    """Output after the call ended (a hung thread) is dropped and counted, even well within the limits."""
    clock = FakeClock()
    b = budget(clock)
    b.close()
    clock.now += 10
    assert b.admit_log("late") is None
    assert b.admit_progress({"done": 1}) is None
    assert b.dropped() == Dropped(log_lines=1, log_bytes=4, progress=1)


def test_nothing_dropped_is_falsy() -> None:
    """A call within its limits has nothing to record (no output_dropped event)."""
    b = budget()
    b.admit_log("hello")
    b.admit_progress({"done": 1})
    assert b.close() is None
    assert not b.dropped()


def test_limits_come_from_the_run_section() -> None:
    """The four ``[run]`` keys set the limits; a config without them gets the defaults."""
    limits = OutputLimits.from_config({"run": {"plugin_log_lines": 7, "plugin_log_bytes": 2048,
                                               "plugin_log_line_chars": 90, "plugin_progress_interval_s": 2}})
    assert limits == OutputLimits(log_lines=7, log_bytes=2048, line_chars=90, progress_interval_s=2.0)
    assert OutputLimits.from_config({"run": {}}) == OutputLimits(2000, 1024 * 1024, 4000, 0.5)


def _call_output(limits: OutputLimits) -> tuple[CallOutput, list[Mapping[str, Any]], list[HeldProgress],
                                                list[Mapping[str, Any]]]:
    watched: list[Mapping[str, Any]] = []
    progress: list[HeldProgress] = []
    logged: list[Mapping[str, Any]] = []
    output = CallOutput(OutputBudget(limits), watch=watched.append, write_progress=progress.append,
                        write_log=logged.append)
    return output, watched, progress, logged


def test_call_output_feeds_the_watch_every_report_and_writes_the_last() -> None:
    """The watchdog sees every report; the journal gets a rate-limited few and, at close, the last."""
    output, watched, progress, _ = _call_output(OutputLimits(progress_interval_s=30))
    for done in range(1, 501):
        output("progress", {"done": done, "total": 500})
    assert len(watched) == 500
    assert [p.args["done"] for p in progress] == [1]
    dropped = output.close()
    assert [p.args["done"] for p in progress] == [1, 500]
    assert dropped.progress == 498


def test_call_output_writes_a_held_report_when_its_interval_passes() -> None:
    """A report held back is written by the timer once the interval has passed, without waiting for the end."""
    output, _, progress, _ = _call_output(OutputLimits(progress_interval_s=0.1))
    output("progress", {"done": 1})
    output("progress", {"done": 2})
    deadline = time.monotonic() + 5
    while len(progress) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [p.args["done"] for p in progress] == [1, 2]
    assert output.close().progress == 0
    assert len(progress) == 2  # nothing held any more: close writes nothing twice


def test_host_context_log_writes_debug_log_and_journal_only_within_the_budget(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """HostContext.log asks the call's budget first: debug.log and the journal get the same admitted lines."""
    ctx = make_context(tmp_path)
    output, _, _, logged = _call_output(OutputLimits(log_lines=5, line_chars=80))
    ctx._notify = output  # the orchestrator passes its CallOutput as notify; here it is swapped in
    with caplog.at_level("DEBUG", logger="test"):
        ctx.log("w" * 200)
        for i in range(1000):
            ctx.log(f"line {i}", level="warning")
    written = [r.getMessage() for r in caplog.records if r.name == "test"]
    assert written == [m["message"] for m in logged]
    assert len(written) == 5 and written[0] == "w" * 80 + " [... 120 more characters]"
    assert output.close() == Dropped(log_lines=996, log_bytes=120 + sum(len(f"line {i}") for i in range(4, 1000)),
                                     progress=0, truncated=1)


def test_budget_is_safe_across_threads() -> None:
    """Several threads logging at once never get more than ``log_lines`` lines through, and all are counted."""
    b = budget(log_lines=1000)
    kept: list[str] = []

    def flood() -> None:
        for _ in range(2000):
            if (line := b.admit_log("x")) is not None:
                kept.append(line)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(kept) == 1000
    assert b.dropped().log_lines == 8000 - 1000


def test_a_context_without_a_budget_logs_everything(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A HostContext whose notify carries no budget (tests, tools) keeps logging every line as before."""
    events: list[tuple[str, Any]] = []
    ctx: HostContext = make_context(tmp_path, events=events)
    with caplog.at_level("INFO", logger="test"):
        for i in range(3000):
            ctx.log(f"l{i}")
    assert len([e for e in events if e[0] == "log"]) == 3000
