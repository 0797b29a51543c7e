"""What the console shows: one line per event, progress with rate and time left."""

from __future__ import annotations

import io

from drhost.events import Event
from drhost.report import PlainReporter, describe
from drhost.report._console import progress_text


def test_byte_progress_shows_amount_rate_and_eta() -> None:
    """An upload's progress shows percent, MiB done of total, MB/s and the time left."""
    event = Event("step.progress", "r", data={"done": 30 * 2**20, "total": 64 * 2**20, "unit": "bytes",
                                               "elapsed_s": 0.7})
    assert progress_text(event) == " 47% 30.0/64.0 MiB 45 MB/s ETA 1s"


def test_count_progress_shows_percent_only() -> None:
    """Progress in other units shows the percentage."""
    assert progress_text(Event("step.progress", "r", data={"done": 9, "total": 20, "unit": "tables"})) == " 45%"


def test_failed_attempt_line_says_retrying() -> None:
    """A failed attempt reads 'attempt N/M of [stage] step (plugin) failed: why; retrying in S s'."""
    event = Event("step.failed", "r", target="t1", stage="upgrade", step="stop_services", plugin="dr-core",
                  message="exit 1", data={"attempt": 2, "attempts": 4, "ended": "failed", "retrying_in_s": 10.0})
    assert describe(event) == ("t1: attempt 2/4 of [upgrade] stop_services (dr-core) failed: exit 1; "
                               "retrying in 10 s")


def test_plain_reporter_skips_chatty_events() -> None:
    """Plain output has lines for steps, not for every progress report."""
    stream = io.StringIO()
    reporter = PlainReporter(stream)
    reporter(Event("step.progress", "r", data={"done": 1, "total": 2}))
    reporter(Event("step.completed", "r", target="t", stage="backup", step="s", plugin="p",
                   data={"duration_s": 1.25}))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("t: [backup] s (p) done in 1.2 s")
