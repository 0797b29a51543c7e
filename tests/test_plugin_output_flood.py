"""A real run with plugins that flood ctx.log and ctx.progress: a core plugin (thread) and a business plugin
(process worker) each log and report progress 100000 times in one step. The run directory stays within a
bound computed from the ``[run] plugin_*`` limits, and each flooding call leaves one ``plugin.output_dropped``."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import CLI_TIMEOUT_S, pids_under, run_json
from plugin_factory import make_plugin, simple_plugin

pytestmark = [pytest.mark.podman, pytest.mark.slow, pytest.mark.integration]

REPORTS = 100_000
LONG = 100_000  # the first line's length: far over line_chars
LINE = "flood {i:06d} " + "x" * 80  # 93 characters, ASCII: characters are bytes
LOG_LINES, LOG_BYTES, LINE_CHARS, INTERVAL_S = 300, 20_000, 200, 0.2
STEP_TIMEOUT_S = 30  # simple_plugin's step timeout: bounds how many progress events a call can write
LIMITS = ("--set", f"run.plugin_log_lines={LOG_LINES}", "--set", f"run.plugin_log_bytes={LOG_BYTES}",
          "--set", f"run.plugin_log_line_chars={LINE_CHARS}", "--set", f"run.plugin_progress_interval_s={INTERVAL_S}")
FLOOD = f"""
ctx.log("L" * {LONG})
for i in range({REPORTS}):
    ctx.log({LINE!r}.format(i=i))
    ctx.progress(i + 1, {REPORTS}, "items")
"""
PLUGINS = {"zz-flood-core": "core", "zz-flood-business": "business"}
#: A call that only reports progress, as often as an upload does: written once an interval, never "dropped".
PROGRESS_ONLY = "zz-progress-only"
PROGRESS = f"""
for i in range({REPORTS}):
    ctx.progress(i + 1, {REPORTS}, "bytes")
"""
#: Generous sizes of what surrounds a line: an event's JSON without its message, a debug.log line's prefix.
EVENT_OVERHEAD, LOG_PREFIX = 400, 200
#: What the demo run writes without the flooding plugins (one target: ~25 KB journal, ~75 KB debug.log).
BASE_EVENTS, BASE_DEBUG = 256 * 1024, 512 * 1024


def call_allowance() -> int:
    """The most one call can add to the journal: its kept lines, its progress events and its note."""
    progress_events = STEP_TIMEOUT_S / INTERVAL_S + 2
    return LOG_BYTES + LOG_LINES * EVENT_OVERHEAD + int(progress_events * EVENT_OVERHEAD) + 4096


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def flooded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path, list[dict[str, Any]]]]:
    """One demo run (one target) with both flooding plugins, under small limits set with --set."""
    base = tmp_path_factory.mktemp("flood")
    site, state_dir = base / "site", base / "state"
    state_dir.mkdir()
    for name, plugin_class in PLUGINS.items():
        make_plugin(site, name, simple_plugin(name, plugin_class, FLOOD))
    make_plugin(site, PROGRESS_ONLY, simple_plugin(PROGRESS_ONLY, "core", PROGRESS))
    env = {**os.environ, "DRHOST_STATE_DIR": str(state_dir), "DRHOST_INSTANT_RETRIES": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-m", "drhost", "upgrade", "--demo", "--demo-targets", "1", "--json",
                               *LIMITS], capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=env,
                              stdin=subprocess.DEVNULL)
        summary = run_json(proc)
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_dir = Path(summary["run_dir"])
        yield summary, run_dir, read_events(run_dir)
    finally:
        for pid in pids_under(state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_flooding_plugins_do_not_fail_the_run(flooded: tuple[dict[str, Any], Path, list[dict[str, Any]]]) -> None:
    """A plugin over its output limits is not a failure: the run succeeds and both flooding steps completed."""
    summary, _, events = flooded
    assert {t["status"] for t in summary["targets"].values()} == {"succeeded"}
    completed = {e["plugin"] for e in events if e["event"] == "step.completed" and e.get("step") == "work"}
    assert completed == {*PLUGINS, PROGRESS_ONLY}


def test_run_directory_stays_within_the_computed_bound(
        flooded: tuple[dict[str, Any], Path, list[dict[str, Any]]]) -> None:
    """events.jsonl and debug.log stay under what the limits allow (not the ~30 MB the flood would write)."""
    _, run_dir, _ = flooded
    calls = len(PLUGINS)
    journal = (run_dir / "events.jsonl").stat().st_size
    debug = (run_dir / "debug.log").stat().st_size
    assert journal <= BASE_EVENTS + calls * call_allowance(), journal
    # debug.log has every event again (the journal's echo) and each kept line once more (the plugin's logger).
    assert debug <= BASE_DEBUG + calls * (2 * call_allowance() + LOG_LINES * LOG_PREFIX), debug
    with open(run_dir / "debug.log", encoding="utf-8") as handle:
        flood_lines = [len(line) for line in handle if "L" * 100 in line]
    assert flood_lines and max(flood_lines) < 10 * LINE_CHARS  # the 100000-character line was cut


@pytest.mark.parametrize("plugin", list(PLUGINS))
def test_one_output_dropped_event_per_flooding_call_with_the_right_counts(
        flooded: tuple[dict[str, Any], Path, list[dict[str, Any]]], plugin: str) -> None:
    """Exactly one plugin.output_dropped per call: its counts are the lines, bytes and progress reports that
    are not in the journal, and the lines kept are the call's first ones, cut to line_chars."""
    _, _, events = flooded
    mine = [e for e in events if e.get("plugin") == plugin and e.get("step") == "work"]
    (dropped,) = [e for e in mine if e["event"] == "plugin.output_dropped"]
    assert (dropped["target"], dropped["stage"]) == ("dr-demo-1", "upgrade")
    logs = [e["message"] for e in mine if e["event"] == "plugin.log"]
    cut_note = f" [... {LONG - LINE_CHARS} more characters]"
    first = "L" * LINE_CHARS + cut_note
    kept = 1 + (LOG_BYTES - len(first)) // len(LINE.format(i=0))  # the byte limit is reached first here
    assert kept < LOG_LINES
    assert logs == [first, *(LINE.format(i=i) for i in range(kept - 1))]
    data = dropped["data"]
    assert data["log_lines"] == REPORTS + 1 - kept
    assert data["log_bytes"] == (LONG - LINE_CHARS) + (REPORTS + 1 - kept) * len(LINE.format(i=0))
    assert data["truncated"] == 1
    progress = [e for e in mine if e["event"] == "step.progress"]
    assert data["progress"] == REPORTS - len(progress)
    assert data["limits"] == {"log_lines": LOG_LINES, "log_bytes": LOG_BYTES, "line_chars": LINE_CHARS,
                              "progress_interval_s": INTERVAL_S}
    assert mine.index(dropped) > max(mine.index(e) for e in progress)  # the note comes at the call's end


def test_progress_written_once_an_interval_is_not_an_overrun(
        flooded: tuple[dict[str, Any], Path, list[dict[str, Any]]]) -> None:
    """A call that only reports progress, 100000 times, has its reports written once an interval and its last
    one at the end, and leaves no plugin.output_dropped and no warning: coalescing is the budget's design."""
    _, run_dir, events = flooded
    mine = [e for e in events if e.get("plugin") == PROGRESS_ONLY and e.get("step") == "work"]
    assert "step.completed" in {e["event"] for e in mine}
    assert not [e for e in mine if e["event"] == "plugin.output_dropped"]
    progress = [e for e in mine if e["event"] == "step.progress"]
    assert 1 <= len(progress) <= STEP_TIMEOUT_S / INTERVAL_S + 2
    assert (progress[-1]["data"]["done"], progress[-1]["data"]["total"]) == (REPORTS, REPORTS)
    assert f"{PROGRESS_ONLY}: output over its budget" not in (run_dir / "debug.log").read_text()


@pytest.mark.parametrize("plugin", list(PLUGINS))
def test_final_progress_is_in_the_journal_and_the_rate_is_limited(
        flooded: tuple[dict[str, Any], Path, list[dict[str, Any]]], plugin: str) -> None:
    """The last progress event of a flooding call is its final report, the others are an interval apart (the
    median gap: an event's ts is its write moment, which a loaded machine may delay for one event and not the
    next; the exact spacing is test_output_budget's, on a fake clock), and there are at most
    duration / interval + 2 of them."""
    _, _, events = flooded
    progress = [e for e in events if e["event"] == "step.progress" and e.get("plugin") == plugin]
    assert progress and (progress[-1]["data"]["done"], progress[-1]["data"]["total"]) == (REPORTS, REPORTS)
    written = [e["ts"] for e in progress[:-1]]  # the last one is written at the call's end, whenever that is
    assert len(written) >= 2, written  # reports were written during the call, not only the first and the last
    assert statistics.median(b - a for a, b in itertools.pairwise(written)) >= INTERVAL_S - 0.01, written
    (done,) = [e for e in events if e["event"] == "step.completed" and e.get("plugin") == plugin]
    assert len(progress) <= done["data"]["duration_s"] / INTERVAL_S + 2


def test_debug_log_has_one_note_per_flooding_call(flooded: tuple[dict[str, Any], Path, list[dict[str, Any]]]) -> None:
    """debug.log says once per flooding call what was not written, in a warning line of that plugin."""
    _, run_dir, _ = flooded
    text = (run_dir / "debug.log").read_text(encoding="utf-8")
    for plugin in PLUGINS:
        notes = [line for line in text.splitlines()
                 if " WARNING " in line and f"plugin.{plugin}.dr-demo-1: {plugin}: output over its budget" in line]
        assert len(notes) == 1, notes
