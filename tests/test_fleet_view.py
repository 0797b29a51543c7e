"""The live view of a fleet: batch headers, host lines, and ETAs per host, batch and run from the events."""

from __future__ import annotations

import io
import re

import pytest

from drhost.events import EVENT_NAMES, Event
from drhost.i18n import Translate, translator
from drhost.report import LiveReporter
from drhost.report._console import _ROW_LABELS, EtaBoard
from drhost.report._fleet import FleetBoard

RUN = "run-1"


def _event(name: str, ts: float, target: str | None = None, message: str = "", **data: object) -> Event:
    return Event(name, RUN, target=target, stage="upgrade" if target else None,
                 step="s" if name.startswith("step") else None, plugin="p" if target else None, message=message,
                 data=data, ts=ts)


def _started(batches: list[list[str]], forks: int = 2, pause_s: float = 0.0) -> Event:
    return _event("run.started", 0.0, batches=[{"targets": b, "group": None} for b in batches], forks=forks,
                  pause_s=pause_s, mode="upgrade", targets=[t for b in batches for t in b], steps=3)


def _board() -> tuple[FleetBoard, EtaBoard]:
    eta = EtaBoard()
    return FleetBoard(eta.target), eta


def _see(board: FleetBoard, eta: EtaBoard, *events: Event) -> None:
    for event in events:
        eta.see(event)
        board.see(event)


def test_eta_of_a_batch_adds_waves_of_queued_hosts() -> None:
    """A batch's ETA is its slowest running host plus one typical host per wave still queued behind forks."""
    board, eta = _board()
    _see(board, eta, _started([["a"], ["b", "c", "d", "e", "f"]], forks=2),
         _event("target.started", 0.0, "a"), _event("step.started", 0.0, "a", expected_s=2.0, rest_after_s=8.0))
    assert eta.target("a", 1.0) == 9.0
    assert board.batch_eta(0, 1.0) == 9.0
    # later batch: 5 hosts, forks 2 -> 3 waves of a typical host (the expected total, 10 s)
    assert board.run_eta(1.0) == 9.0 + 3 * 10.0
    _see(board, eta, _event("target.succeeded", 12.0, "a"),
         _event("rollout.batch_finished", 12.0, batch=0, counts={"succeeded": 1}))
    assert board.typical_s() == 12.0, "a host that finished replaces the estimate"
    _see(board, eta, _event("target.started", 12.0, "b"), _event("step.started", 12.0, "b", expected_s=3.0,
                                                                  rest_after_s=9.0),
         _event("target.started", 12.0, "c"), _event("step.started", 12.0, "c", expected_s=1.0,
                                                      rest_after_s=4.0))
    # b: 12 s left at t=12, c: 5 s; d, e, f queued behind 2 forks -> 2 waves of 12 s
    assert board.batch_eta(1, 12.0) == 12.0 + 2 * 12.0
    assert board.run_eta(12.0) == board.batch_eta(1, 12.0)


def test_pauses_between_batches_count_in_the_run_eta() -> None:
    """Each later batch adds the configured pause before it."""
    board, eta = _board()
    _see(board, eta, _started([["a"], ["b"], ["c"]], forks=1, pause_s=30.0),
         _event("target.started", 0.0, "a"), _event("step.started", 0.0, "a", expected_s=5.0, rest_after_s=5.0))
    assert board.run_eta(0.0) == 10.0 + 2 * (10.0 + 30.0)


def test_unknown_durations_give_no_eta() -> None:
    """With no history and no finished host, the run's ETA stays unknown instead of guessed."""
    board, eta = _board()
    _see(board, eta, _started([["a"], ["b"]]), _event("target.started", 0.0, "a"),
         _event("step.started", 0.0, "a", expected_s=None, rest_after_s=None))
    assert board.batch_eta(0, 1.0) is None
    assert board.run_eta(1.0) is None


def test_a_stopped_rollout_has_no_run_eta_and_says_why() -> None:
    """After the budget stops the rollout the view shows the reason and no longer promises an end."""
    board, eta = _board()
    _see(board, eta, _started([["a"], ["b"]]), _event("target.started", 0.0, "a"),
         _event("step.started", 0.0, "a", expected_s=1.0, rest_after_s=1.0),
         _event("rollout.stopped", 1.0, reason="1 of 1 targets failed in batch 1"))
    assert board.run_eta(1.0) is None
    lines = board.lines(1.0, lambda h: h, 20, lambda s: f"{s:g}s", lambda m: m)
    assert lines[-1] == "rollout stopped: 1 of 1 targets failed in batch 1"
    assert "batch 2/2: 1 hosts waiting" in lines


def _live_block(monkeypatch: pytest.MonkeyPatch, t: Translate) -> tuple[list[str], str]:
    """The live view's last block, and all it wrote, after batch 1 of 3 finished and batch 2 began."""
    # The view cuts lines at the terminal's width: pin one, whatever runs the test (a tty, CI, an xdist worker).
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("LINES", "40")
    stream = io.StringIO()
    view = LiveReporter(3, stream=stream, t=t, redraw_every_s=0)  # a frame per event: the last is the block
    events = [_started([["a"], ["b", "c", "d"], ["e"]], forks=2),
              _event("rollout.batch_started", 0.0, batch=0, message="batch 1 of 3: 1 targets"),
              _event("target.started", 0.0, "a"), _event("step.started", 0.0, "a", expected_s=1.0,
                                                          rest_after_s=1.0),
              _event("target.succeeded", 2.0, "a"),
              _event("rollout.batch_finished", 2.0, batch=0, counts={"succeeded": 1},
                     message="batch 1 of 3 finished: 1 succeeded"),
              _event("rollout.batch_started", 2.0, batch=1, message="batch 2 of 3: 3 targets"),
              _event("target.started", 2.0, "b"), _event("step.started", 2.0, "b", expected_s=1.0,
                                                          rest_after_s=1.0)]
    for event in events:
        view(event)
    return stream.getvalue().rsplit("\x1b[J", 1)[-1].splitlines(), stream.getvalue()


def test_live_view_shows_batches_and_the_current_batch_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal, finished batches are one line, the running batch shows its hosts, later batches wait."""
    lines, written = _live_block(monkeypatch, lambda m: m)
    assert "batch 1/3: done — 1 succeeded" in lines
    assert any(re.match(r"batch 2/3: 0/3 hosts done, ETA \d+s$", line) for line in lines), lines
    assert any(line.startswith("b ") and "[upgrade] s (p)" in line and "ETA" in line for line in lines), lines
    assert any(re.match(r"c\s+waiting$", line) for line in lines), lines
    assert "batch 3/3: 1 hosts waiting" in lines
    assert re.match(r"elapsed\s+[\d.]+ s, run ETA \d+s", lines[-1]), lines[-1]
    assert "batch 2 of 3: 3 targets" in written, "batch starts are notable lines above the block"


def test_live_view_of_a_thousand_targets_is_a_summary_drawn_a_few_times_a_second(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A thousand targets in one batch, events arriving every millisecond: each frame fits the terminal (one
    batch line, the hosts at work, "… N more hosts", elapsed), frames come at most every redraw interval,
    not per event, and the last frame counts every finished host."""
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("LINES", "30")
    now = [0.0]
    stream = io.StringIO()
    view = LiveReporter(3, stream=stream, t=lambda m: m, redraw_every_s=0.2, clock=lambda: now[0])
    hosts = [f"h{i:04d}" for i in range(1000)]
    events = [_started([hosts], forks=50)]
    for host in hosts:
        events += [_event("target.started", 0.0, host), _event("step.started", 0.0, host, expected_s=1.0,
                                                                rest_after_s=1.0),
                   _event("step.completed", 0.0, host), _event("target.succeeded", 0.0, host)]
    for event in events:
        now[0] += 0.001
        view(event)
    frames = stream.getvalue().split("\x1b[J")[1:]
    assert len(frames) <= len(events) * 0.001 / 0.2 + 2, len(frames)
    assert max(len(frame.splitlines()) for frame in frames) <= 30
    now[0] += 1
    view(_event("rollout.paused", 0.0))  # any event once a frame is due draws one
    last = stream.getvalue().rsplit("\x1b[J", 1)[-1].splitlines()
    assert any(line.startswith("batch 1/1: 1000/1000 hosts done") for line in last), last
    assert any("more hosts" in line for line in last) and len(last) <= 30, last


def test_live_view_in_chinese_translates_every_word_it_adds(monkeypatch: pytest.MonkeyPatch) -> None:
    """With zh_CN the block's own words (batches, statuses, ETA, elapsed, stages) are Chinese; names stay."""
    lines, _ = _live_block(monkeypatch, translator("zh_CN"))
    assert "批次 1/3: 完成 — 1 成功" in lines, lines
    assert any(re.match(r"批次 2/3: 0/3 台主机完成, 预计剩余 \d+s$", line) for line in lines), lines
    assert any(line.startswith("b ") and "[升级] s (p)" in line and "预计剩余" in line for line in lines), lines
    assert any(re.match(r"c\s+等待中$", line) for line in lines), lines
    assert "批次 3/3: 1 台主机等待中" in lines
    assert re.match(r"已用时\s+[\d.]+ 秒, 全部预计剩余 \d+s", lines[-1]), lines[-1]
    english_words = re.compile(r"\b(batch|hosts?|done|waiting|ETA|elapsed|upgrade)\b")
    assert [line for line in lines if english_words.search(line)] == [], lines


@pytest.mark.parametrize("name", sorted(n for n in EVENT_NAMES if n.startswith(("target.", "rollback.", "network."))))
def test_every_event_a_host_row_can_show_has_a_label(name: str) -> None:
    """A target, rollback or network event a host's row shows has a catalogue label (so it is translated)."""
    assert name in _ROW_LABELS, f"{name}: add it to _ROW_LABELS in drhost/report/_console.py"


def test_many_hosts_are_cut_to_the_terminal() -> None:
    """A batch of 50 hosts on a 20-line terminal shows the hosts at work first and counts the rest."""
    board, eta = _board()
    hosts = [f"h{i:02d}" for i in range(50)]
    _see(board, eta, _started([hosts], forks=5), *(_event("target.started", 0.0, h) for h in hosts[:5]))
    lines = board.lines(0.0, lambda h: h, 12, lambda s: f"{s:g}s", lambda m: m)
    assert len(lines) <= 13
    assert lines[1:6] == hosts[:5], "running hosts come first"
    assert lines[-1] == "  … 41 more hosts (41 waiting, 0 done)"
