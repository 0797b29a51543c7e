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


def _timeout_event() -> Event:
    return Event("watchdog.timeout", "r", target="t1", stage="upgrade", step="upgrade_db_schema", plugin="dr-database",
                 data={"category": "database", "measurement": {"data_bytes": 2.1e9, "label": "catalog"},
                       "configured_s": 1800, "elapsed_s": 2100, "exceeded_s": 300,
                       "environment": {"cpu_percent": 85, "memory_percent": 78, "disk_io_percent": 92},
                       "controller_environment": {"cpu_percent": 5, "memory_percent": 10, "disk_io_percent": 0},
                       "context_path": "/runs/r/timeouts/x.json"})


def test_timeout_block_is_rendered_in_the_operators_language() -> None:
    """The plain reporter prints the whole timeout block, aligned, in English or in zh_CN by its translator."""
    from drhost.watchdog import translator

    english, chinese = io.StringIO(), io.StringIO()
    PlainReporter(english, translator("C"))(_timeout_event())
    PlainReporter(chinese, translator("zh_CN"))(_timeout_event())
    lines = english.getvalue().splitlines()
    assert lines[0].endswith("t1: [error] upgrade operation timed out")
    assert lines[1].strip() == "step:        [upgrade] upgrade_db_schema (dr-database)"
    assert "reason:      database operation; catalog 2.1 GB" in english.getvalue()
    assert "exceeded by: 300 s (5 min)" in english.getvalue()
    text = chinese.getvalue()
    assert "[错误] 升级操作超时" in text and "数据库操作超时, catalog: 2.1GB" in text and "超出时间:" in text
    # The controller row belongs to plugin timeouts only.
    assert "controller:" not in english.getvalue()


def test_warning_and_progress_lines_name_the_step() -> None:
    """Watchdog lines say which target and step they are about, then the design's wording."""
    warning = Event("watchdog.warning", "r", target="t1", stage="upgrade", step="s", plugin="p",
                    data={"percent": 85, "urgent": False, "remaining_s": 270, "elapsed_s": 1530, "timeout_s": 1800,
                          "budget_percent": 85.0, "budget_left_s": 270})
    assert describe(warning) == ("t1: [upgrade] s (p) [warning] operation about to time out, 4.5 min left "
                                 "(25.5 min of 30 min used)")
    progress = Event("watchdog.progress", "r", target="t1", stage="upgrade", step="s", plugin="p",
                     data={"percent": 45.0, "done": 9, "total": 20, "unit": "tables", "remaining_s": 720,
                           "elapsed_s": 600, "timeout_s": 1800, "budget_percent": 33.3, "budget_left_s": 1200})
    assert describe(progress) == "t1: [upgrade] s (p) [progress] 45% (9/20 tables done), about 12 min left"


def test_eta_board_adds_the_running_step_to_the_rest_of_the_target() -> None:
    """A target's ETA is its step's remaining time plus its later steps; the run's is the slowest target's."""
    from drhost.report._console import EtaBoard

    board = EtaBoard()
    board.see(Event("step.started", "r", target="a", data={"expected_s": 10, "rest_after_s": 50}, ts=100.0))
    board.see(Event("step.started", "r", target="b", data={"expected_s": 5, "rest_after_s": 20}, ts=100.0))
    assert board.target("a", 104.0) == 56.0 and board.target("b", 104.0) == 21.0
    assert board.run(104.0) == 56.0
    board.see(Event("watchdog.progress", "r", target="a", data={"remaining_s": 30}, ts=104.0))
    assert board.target("a", 106.0) == 78.0
    board.see(Event("step.started", "r", target="c", data={"expected_s": None, "rest_after_s": None}, ts=104.0))
    assert board.target("c", 105.0) is None and board.run(105.0) is None
    board.see(Event("target.succeeded", "r", target="c"))
    assert board.run(106.0) == 78.0


class _ClosedPipe(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")


def test_a_console_that_goes_away_ends_the_output_not_the_caller() -> None:
    """A reporter whose stream breaks raises nothing and stops writing after the first failure."""
    pipe = _ClosedPipe()
    plain = PlainReporter(pipe)
    event = Event(event="step.completed", run_id="r", target="t", stage="upgrade", step="s", plugin="p",
                  data={"duration_s": 1.0})
    for _ in range(3):
        plain(event)
    assert pipe.writes == 1
