"""Step-duration history and the remaining-time estimates built on it."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from drhost.i18n import translator
from drhost.watchdog._history import (
    FLUSH_EVERY_S,
    KEEP_PER_STEP,
    KEEP_POOLED,
    StepHistory,
    _parse,
    _Unusable,
    remaining_for,
    remaining_s,
)

KEY = "upgrade/dr-database/upgrade_db_schema"
OTHER_KEY = "upgrade/dr-daemon/restart"


def _history(tmp_path: Path) -> StepHistory:
    return StepHistory(tmp_path / "history" / "step-durations.json")


def _stored(path: Path) -> dict[str, dict[str, list[float]]]:
    document = json.loads(path.read_text())
    assert document["format"] == 1
    targets: dict[str, dict[str, list[float]]] = document["targets"]
    return targets


# --- record / expected ----------------------------------------------------------------------


def test_expected_is_median_of_odd_count(tmp_path: Path) -> None:
    """With an odd number of samples the expected duration is the middle one."""
    history = _history(tmp_path)
    for value in (30.0, 10.0, 20.0):
        history.record("dr-demo-1", KEY, value)
    assert history.expected_s("dr-demo-1", KEY) == 20.0


def test_expected_is_median_of_even_count(tmp_path: Path) -> None:
    """With an even number of samples the expected duration is the mean of the two middle ones."""
    history = _history(tmp_path)
    for value in (1.0, 2.0, 3.0, 10.0):
        history.record("dr-demo-1", KEY, value)
    assert history.expected_s("dr-demo-1", KEY) == 2.5


def test_only_last_twenty_are_kept(tmp_path: Path) -> None:
    """Each step keeps its newest 20 durations; older ones no longer count."""
    history = _history(tmp_path)
    for value in range(1, 26):
        history.record("dr-demo-1", KEY, float(value))
    assert _stored(history.path)["dr-demo-1"][KEY] == [float(v) for v in range(6, 26)]
    assert KEEP_PER_STEP == 20
    assert history.expected_s("dr-demo-1", KEY) == 15.5


def test_other_targets_answer_for_a_new_target(tmp_path: Path) -> None:
    """A target without history gets the median over every target's durations for the step."""
    history = _history(tmp_path)
    for value in (10.0, 20.0):
        history.record("dr-demo-1", KEY, value)
    for value in (30.0, 100.0, 40.0):
        history.record("dr-demo-2", KEY, value)
    assert history.expected_s("dr-demo-9", KEY) == 30.0
    assert history.expected_s("dr-demo-1", KEY) == 15.0


def test_an_estimate_follows_every_new_sample(tmp_path: Path) -> None:
    """Estimates are remembered between asks, yet each new sample shows at once: in its own target's estimate,
    in the fleet's for targets without their own, and never in another target's own."""
    history = _history(tmp_path)
    assert history.expected_s("dr-demo-9", KEY) is None
    history.note("dr-demo-1", KEY, 10.0)
    assert (history.expected_s("dr-demo-1", KEY), history.expected_s("dr-demo-9", KEY)) == (10.0, 10.0)
    history.note("dr-demo-2", KEY, 30.0)
    assert history.expected_s("dr-demo-9", KEY) == 20.0
    assert (history.expected_s("dr-demo-1", KEY), history.expected_s("dr-demo-2", KEY)) == (10.0, 30.0)
    history.note("dr-demo-1", KEY, 20.0)
    assert (history.expected_s("dr-demo-1", KEY), history.expected_s("dr-demo-9", KEY)) == (15.0, 20.0)
    history.flush()
    assert (history.expected_s("dr-demo-1", KEY), history.expected_s("dr-demo-2", KEY)) == (15.0, 30.0)


def test_unknown_step_has_no_expectation(tmp_path: Path) -> None:
    """A step no target has run has no expected duration, and no file is needed to say so."""
    history = _history(tmp_path)
    assert history.expected_s("dr-demo-1", KEY) is None
    history.record("dr-demo-1", OTHER_KEY, 5.0)
    assert history.expected_s("dr-demo-1", KEY) is None


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, -math.inf])
def test_unusable_durations_are_ignored(tmp_path: Path, bad: float) -> None:
    """Negative, NaN and infinite durations are not recorded."""
    history = _history(tmp_path)
    history.record("dr-demo-1", KEY, 8.0)
    history.record("dr-demo-1", KEY, bad)
    assert _stored(history.path)["dr-demo-1"][KEY] == [8.0]
    assert history.expected_s("dr-demo-1", KEY) == 8.0


def test_unusable_durations_in_the_file_are_dropped(tmp_path: Path) -> None:
    """NaN, Infinity and negative values already in the file are skipped, the rest is used."""
    history = _history(tmp_path)
    history.path.parent.mkdir()
    raw = '{"format": 1, "targets": {"dr-demo-1": {"KEY": [NaN, -3, Infinity, 7, 9]}}}'
    history.path.write_text(raw.replace("KEY", KEY))
    assert history.expected_s("dr-demo-1", KEY) == 8.0
    assert history.path.exists()


# --- persistence ------------------------------------------------------------------------------


def test_second_instance_sees_records(tmp_path: Path) -> None:
    """What one StepHistory records, another on the same file reads."""
    _history(tmp_path).record("dr-demo-1", KEY, 12.0)
    assert _history(tmp_path).expected_s("dr-demo-1", KEY) == 12.0


def test_reads_are_cached_until_reload(tmp_path: Path) -> None:
    """An instance keeps the history it read until reload(), then sees other writers' records."""
    reader, writer = _history(tmp_path), _history(tmp_path)
    writer.record("dr-demo-1", KEY, 10.0)
    assert reader.expected_s("dr-demo-1", KEY) == 10.0
    writer.record("dr-demo-1", KEY, 30.0)
    assert reader.expected_s("dr-demo-1", KEY) == 10.0
    reader.reload()
    assert reader.expected_s("dr-demo-1", KEY) == 20.0


def test_record_refreshes_from_the_file(tmp_path: Path) -> None:
    """Recording re-reads the file under the lock, so it keeps and then shows others' records."""
    first, second = _history(tmp_path), _history(tmp_path)
    assert first.expected_s("dr-demo-1", KEY) is None
    second.record("dr-demo-1", KEY, 10.0)
    first.record("dr-demo-1", KEY, 30.0)
    assert _stored(first.path)["dr-demo-1"][KEY] == [10.0, 30.0]
    assert first.expected_s("dr-demo-1", KEY) == 20.0


def test_default_location_and_owner_only_modes(state_dir: Path) -> None:
    """By default the history lives in <state>/history; file and lock are 0600, the directory 0700."""
    history = StepHistory()
    history.record("dr-demo-1", KEY, 3.0)
    directory = state_dir / "history"
    assert history.path == directory / "step-durations.json"
    assert os.stat(history.path).st_mode & 0o777 == 0o600
    assert os.stat(directory / "step-durations.json.lock").st_mode & 0o777 == 0o600
    assert os.stat(directory).st_mode & 0o777 == 0o700


def test_directory_is_0700_despite_permissive_umask(tmp_path: Path) -> None:
    """The history directory is 0700 whatever the umask, since mkdir alone would follow it."""
    old = os.umask(0o277)
    try:
        history = _history(tmp_path)
        history.record("dr-demo-1", KEY, 3.0)
    finally:
        os.umask(old)
    assert os.stat(history.path.parent).st_mode & 0o777 == 0o700


# --- concurrency ------------------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from drhost.watchdog._history import StepHistory

    path, key, gate = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    deadline = time.monotonic() + 30
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    history = StepHistory(path)
    for i in range(15):
        history.record("dr-demo-1", key, float(i))
""")


@pytest.mark.integration
def test_concurrent_processes_lose_no_record(tmp_path: Path) -> None:
    """Four processes recording at once each keep all 15 of their durations."""
    path = tmp_path / "history" / "step-durations.json"
    gate = tmp_path / "go"
    keys = [f"upgrade/plugin-{n}/step" for n in range(4)]
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), key, str(gate)]) for key in keys]
    # Released together so that their read-modify-write cycles overlap.
    time.sleep(0.3)
    gate.touch()
    assert [w.wait(timeout=60) for w in writers] == [0, 0, 0, 0]
    stored = _stored(path)["dr-demo-1"]
    assert {key: stored.get(key) for key in keys} == {key: [float(i) for i in range(15)] for key in keys}


# --- corruption -------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "problem"), [
    ('{"format": 1, "targets": {"dr-demo-1": {"x": [1, 2', "not valid JSON"),
    ("[1, 2, 3]", "expected a JSON object"),
    ('{"format": 99}', "expected format 1"),
    ('{"format": 1, "targets": {"dr-demo-1": {"x": "fast"}}}', "expected a list of numbers"),
], ids=["truncated", "list", "format-99", "wrong-type"])
def test_corrupt_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                     content: str, problem: str) -> None:
    """An unusable file reads as empty, is moved to .corrupt-<time> with a warning, and recording goes on."""
    history = _history(tmp_path)
    history.path.parent.mkdir()
    history.path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="drhost.watchdog._history"):
        assert history.expected_s("dr-demo-1", "x") is None
    aside = [p for p in history.path.parent.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].name.startswith("step-durations.json.corrupt-")
    assert aside[0].read_text() == content
    assert not history.path.exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(history.path) in warnings[0] and problem in warnings[0]
    history.record("dr-demo-1", "x", 4.0)
    assert history.expected_s("dr-demo-1", "x") == 4.0
    assert _stored(history.path) == {"dr-demo-1": {"x": [4.0]}}


def test_corrupt_file_found_while_recording_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file that went bad after the last read is moved aside by record, which then writes afresh."""
    history = _history(tmp_path)
    history.record("dr-demo-1", KEY, 1.0)
    history.path.write_text("{")
    with caplog.at_level(logging.WARNING, logger="drhost.watchdog._history"):
        history.record("dr-demo-1", KEY, 9.0)
    assert any(".corrupt-" in p.name for p in history.path.parent.iterdir())
    assert any(str(history.path) in r.getMessage() for r in caplog.records)
    assert _stored(history.path) == {"dr-demo-1": {KEY: [9.0]}}


def test_why_a_history_is_unusable_is_said_in_the_operators_language() -> None:
    """Why a history file is unusable reads in Chinese with zh_CN, quoting the values found; English unchanged."""
    zh = translator("zh_CN")
    with pytest.raises(_Unusable) as wrong_format:
        _parse(b'{"format": "99"}')
    assert str(wrong_format.value) == "expected format 1, found '99'"
    assert wrong_format.value.in_language(zh) == "期望格式 1, 实际为 '99'"
    with pytest.raises(_Unusable) as wrong_type:
        _parse(b'{"format": 1, "targets": {"dr-demo-1": {"x": "fast"}}}')
    assert str(wrong_type.value) == "target 'dr-demo-1', step 'x': expected a list of numbers"
    assert wrong_type.value.in_language(zh) == "目标 'dr-demo-1', 步骤 'x': 期望数字列表"


def test_two_corrupt_files_in_one_second_are_both_kept(tmp_path: Path) -> None:
    """A second corrupt file moved aside does not overwrite the first one."""
    history = _history(tmp_path)
    history.path.parent.mkdir()
    for content in ("{", "[]"):
        history.path.write_text(content)
        history.reload()
    kept = sorted(p.read_text() for p in history.path.parent.iterdir() if ".corrupt-" in p.name)
    assert kept == ["[]", "{"]


# --- remaining_s ------------------------------------------------------------------------------


def test_remaining_from_progress_alone() -> None:
    """Without history, remaining = elapsed * (1 - f) / f."""
    assert remaining_s(None, 30.0, 0.25) == 90.0


def test_remaining_blends_progress_and_history() -> None:
    """With both, remaining = f * progress estimate + (1 - f) * (expected - elapsed)."""
    # progress: 20 * 0.5 / 0.5 = 20; history: 100 - 20 = 80.
    assert remaining_s(100.0, 20.0, 0.5) == 50.0


def test_blend_history_part_never_negative() -> None:
    """Past the expected duration the history term counts as 0, leaving the weighted progress estimate."""
    # progress: 150 * 0.5 / 0.5 = 150; history: max(0, 100 - 150) = 0.
    assert remaining_s(100.0, 150.0, 0.5) == 75.0


@pytest.mark.parametrize("fraction", [1.0, 1.5])
def test_remaining_is_zero_when_done(fraction: float) -> None:
    """A fraction of 1 or more means nothing remains, whatever history says."""
    assert remaining_s(100.0, 10.0, fraction) == 0.0


@pytest.mark.parametrize("fraction", [None, 0.0, math.nan])
def test_remaining_from_history_alone(fraction: float | None) -> None:
    """Without usable progress, remaining = expected - elapsed."""
    assert remaining_s(100.0, 40.0, fraction) == 60.0


def test_remaining_unknown_when_slower_than_usual() -> None:
    """Without progress, a step past its expected duration has unknown remaining time, not 0."""
    assert remaining_s(100.0, 120.0, None) is None
    assert remaining_s(100.0, 100.0, None) == 0.0


@pytest.mark.parametrize("fraction", [None, 0.0])
def test_remaining_unknown_without_anything(fraction: float | None) -> None:
    """With neither history nor progress there is no estimate."""
    assert remaining_s(None, 10.0, fraction) is None


def test_blend_moves_from_history_to_progress() -> None:
    """Early on the blend stays near history, late it stays near progress, by weight exactly 1 - f."""
    expected, elapsed = 1000.0, 10.0
    by_history = expected - elapsed
    for fraction in (0.1, 0.9):
        by_progress = elapsed * (1 - fraction) / fraction
        blend = remaining_s(expected, elapsed, fraction)
        assert blend is not None
        assert (blend - by_progress) / (by_history - by_progress) == pytest.approx(1 - fraction)
    early = remaining_s(expected, elapsed, 0.1)
    late = remaining_s(expected, elapsed, 0.9)
    assert early is not None and late is not None
    assert early == pytest.approx(900.0) and abs(early - by_history) < abs(early - 90.0)
    assert late == pytest.approx(100.0) and abs(late - 10 / 9) < abs(late - by_history)


# --- remaining_for ----------------------------------------------------------------------------


def test_remaining_for_sums_expected_durations(tmp_path: Path) -> None:
    """The steps still to run add up their expected durations, a new target borrowing from others."""
    history = _history(tmp_path)
    history.record("dr-demo-1", KEY, 40.0)
    history.record("dr-demo-1", OTHER_KEY, 5.0)
    steps = [("dr-demo-1", KEY), ("dr-demo-1", OTHER_KEY), ("dr-demo-2", KEY)]
    assert remaining_for(steps, history) == 85.0
    assert remaining_for([], history) == 0.0


def test_remaining_for_unknown_when_one_step_is_unknown(tmp_path: Path) -> None:
    """One step without history or fallback makes the total unknown rather than too small."""
    history = _history(tmp_path)
    history.record("dr-demo-1", KEY, 40.0)
    assert remaining_for([("dr-demo-1", KEY), ("dr-demo-1", OTHER_KEY)], history) is None
    assert remaining_for([("dr-demo-1", KEY), ("dr-demo-1", OTHER_KEY)], history, {KEY: 1.0}) is None


def test_remaining_for_uses_fallback_for_unknown_steps(tmp_path: Path) -> None:
    """A step without history counts with its fallback; history wins where it exists."""
    history = _history(tmp_path)
    history.record("dr-demo-1", KEY, 40.0)
    fallback = {KEY: 1000.0, OTHER_KEY: 7.0}
    assert remaining_for([("dr-demo-1", KEY), ("dr-demo-1", OTHER_KEY)], history, fallback) == 47.0


def test_a_run_writes_the_history_at_most_every_interval_and_estimates_with_it_at_once(tmp_path: Path) -> None:
    """Noted durations count for estimates at once; a target's end writes every pending sample when the last
    write is FLUSH_EVERY_S old, else leaves them for a later flush; the run's end (flush()) writes at once,
    merged with what another run recorded meanwhile."""
    clock = [1000.0]
    history = StepHistory(_history(tmp_path).path, clock=lambda: clock[0])
    history.note("dr-demo-1", KEY, 1.0)
    history.flush("dr-demo-1")  # the first target's end writes at once
    assert _stored(history.path) == {"dr-demo-1": {KEY: [1.0]}}
    written = history.path.stat().st_mtime_ns, history.path.stat().st_ino
    history.note("dr-demo-1", KEY, 3.0)
    history.note("dr-demo-1", OTHER_KEY, 5.0)
    history.note("dr-demo-2", KEY, 7.0)
    clock[0] += FLUSH_EVERY_S / 2
    history.flush("dr-demo-2")
    assert (history.path.stat().st_mtime_ns, history.path.stat().st_ino) == written
    assert history.expected_s("dr-demo-1", KEY) == 2.0 and history.expected_s("dr-demo-2", KEY) == 7.0
    clock[0] += FLUSH_EVERY_S
    history.flush("dr-demo-2")
    assert _stored(history.path) == {"dr-demo-1": {KEY: [1.0, 3.0], OTHER_KEY: [5.0]}, "dr-demo-2": {KEY: [7.0]}}
    history.note("dr-demo-2", KEY, 8.0)
    other = _history(tmp_path)
    other.record("dr-demo-3", KEY, 9.0)
    history.flush()
    assert _stored(history.path) == {"dr-demo-1": {KEY: [1.0, 3.0], OTHER_KEY: [5.0]},
                                     "dr-demo-2": {KEY: [7.0, 8.0]}, "dr-demo-3": {KEY: [9.0]}}


def test_a_new_targets_estimate_is_the_fleets_newest_samples(tmp_path: Path) -> None:
    """A target with no samples of its own is estimated from the fleet's newest KEEP_POOLED samples of the step,
    read from the file and noted since: the cost of an estimate does not grow with the fleet."""
    history = _history(tmp_path)
    for index in range(KEEP_POOLED):
        history.note(f"old-{index:03d}", KEY, 100.0)
    history.flush()
    fresh = _history(tmp_path)
    assert fresh.expected_s("new", KEY) == 100.0
    for index in range(KEEP_POOLED // 2 + 1):
        fresh.note(f"recent-{index:03d}", KEY, 10.0)
    assert fresh.expected_s("new", KEY) == 10.0  # the newer half outvotes the older
    assert fresh.expected_s("old-000", KEY) == 100.0  # a target's own samples still come first
