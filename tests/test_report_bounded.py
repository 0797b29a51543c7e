"""``drhost report`` of a huge journal: read line by line in bounded memory, with per-target limits on what
the report keeps ("N more not shown"), and the same timelines as a whole-file read would give."""

from __future__ import annotations

import json
import random
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from drhost.orchestrator._records import new_target_record
from drhost.report._html import MESSAGE_CHARS, SHOWN_PER_TARGET, report_data, write_report
from drhost.state import RunState, iter_journal

RUN_ID = "20260101-000000-abcdef"
TARGETS = ("t1", "t2")
T0 = 1_800_000_000.0


def make_run(state_dir: Path, events: list[dict[str, Any]], *, flood: int = 0, torn: bool = True) -> Path:
    """A run of two succeeded targets whose journal is ``events`` with ``flood`` plugin.log events of t1
    spread among them (in time order), and a torn last line."""
    body = {"created": T0, "status": "succeeded", "finished": T0 + 1000, "config": {"targets": {}},
            "package": {"version": "2.0.0"},
            "targets": {name: {**new_target_record(), "status": "succeeded"} for name in TARGETS}}
    state = RunState.create(RUN_ID, body)
    stamped = sorted(events, key=lambda e: e["ts"])
    with open(state.run_dir / "events.jsonl", "w", encoding="utf-8") as out:
        i = 0
        for n in range(flood):
            ts = T0 + 1000 * n / max(flood, 1)
            while i < len(stamped) and stamped[i]["ts"] <= ts:
                out.write(json.dumps(stamped[i]) + "\n")
                i += 1
            out.write(json.dumps({"ts": ts, "event": "plugin.log", "run_id": RUN_ID, "target": "t1",
                                  "stage": "upgrade", "step": "work", "plugin": "p", "message": f"flood {n:07d} "
                                  + "x" * 300, "data": {"level": "info"}}) + "\n")
        for event in stamped[i:]:
            out.write(json.dumps(event) + "\n")
        if torn:
            out.write('{"ts": 1, "event": "step.failed", "target": "t1", "mess')
    return state.run_dir


def ev(name: str, ts: float, target: str | None = "t1", **fields: Any) -> dict[str, Any]:
    data = fields.pop("data", {})
    return {"ts": ts, "event": name, "run_id": RUN_ID, **({"target": target} if target else {}), **fields,
            "data": data}


def capped_events() -> list[dict[str, Any]]:
    """t1: 1500 failed attempts, each with a warning; 150 timeouts and 150 output notes. t2: one step."""
    events = [ev("run.started", T0, None, data={"mode": "upgrade"}), ev("target.started", T0 + 0.001),
              ev("stage.started", T0 + 0.002, stage="upgrade")]
    ts = T0 + 1
    for n in range(1500):  # 1500 attempts: a bar each, a warning marker each, a failure marker each
        events += [ev("step.started", ts, stage="upgrade", step="s", plugin="p", data={"attempt": 1, "attempts": 1}),
                   ev("watchdog.warning", ts + 0.01, stage="upgrade", step="s", plugin="p",
                      data={"percent": 85, "urgent": False, "remaining_s": 3, "elapsed_s": 17, "timeout_s": 20}),
                   ev("step.failed", ts + 0.02, stage="upgrade", step="s", plugin="p", message=f"boom {n}",
                      data={"ended": "failed"})]
        ts += 0.1
    for n in range(150):
        events += [ev("watchdog.timeout", ts, stage="upgrade", step="s", plugin="p", message=f"timeout {n}",
                      data={"attempt": n}),
                   ev("plugin.output_dropped", ts + 0.01, stage="upgrade", step="s", plugin="p", message="over",
                      data={"log_lines": n, "log_bytes": 10 * n, "truncated": 0, "progress": 2 * n})]
        ts += 0.1
    events.append(ev("stage.completed", ts, stage="upgrade"))
    events.append(ev("step.started", ts + 1, target="t2", stage="upgrade", step="s", plugin="p",
                     data={"attempt": 1, "attempts": 1}))
    return events


def test_markers_steps_timeouts_and_notes_are_capped_per_target_and_counted(state_dir: Path) -> None:
    """Per target the report keeps at most SHOWN_PER_TARGET of each kind; the rest is counted in not_shown."""
    data = report_data(make_run(state_dir, capped_events()))
    t1, t2 = data["targets"]
    shown_steps = sum(len(s["steps"]) for s in t1["stages"]) + len(t1["loose_steps"])
    assert shown_steps == SHOWN_PER_TARGET["steps"] and t1["not_shown"]["steps"] == 1500 - shown_steps
    assert len(t1["markers"]) == SHOWN_PER_TARGET["markers"]
    assert t1["not_shown"]["markers"] == 1500 * 2 + 150 - SHOWN_PER_TARGET["markers"]
    assert len(t1["timeouts"]) == SHOWN_PER_TARGET["timeouts"] and t1["not_shown"]["timeouts"] == 50
    assert len(t1["output_dropped"]) == SHOWN_PER_TARGET["output_dropped"]
    assert t1["not_shown"]["output_dropped"] == 50
    assert t1["output_dropped"][3] == {"ts": t1["output_dropped"][3]["ts"], "stage": "upgrade", "step": "s",
                                       "plugin": "p", "message": "over", "log_lines": 3, "log_bytes": 30,
                                       "truncated": 0, "progress": 6}
    assert [m["kind"] for m in t1["markers"][:3]] == ["warning", "failure", "warning"]  # the first ones kept
    assert t2["not_shown"] == {} and len(t2["loose_steps"]) == 1


def test_long_messages_are_cut(state_dir: Path) -> None:
    """A message of megabytes (a step failure, a timeout block) is cut to MESSAGE_CHARS in the report data."""
    huge = "m" * 3_000_000
    events = [ev("run.started", T0, None, data={"mode": "upgrade"}),
              ev("stage.started", T0 + 1, stage="upgrade"),
              ev("step.started", T0 + 2, stage="upgrade", step="s", plugin="p", data={"attempt": 1, "attempts": 1}),
              ev("step.failed", T0 + 3, stage="upgrade", step="s", plugin="p", message=huge,
                 data={"ended": "failed"}),
              ev("watchdog.timeout", T0 + 4, stage="upgrade", step="s", plugin="p", message=huge, data={"attempt": 1}),
              ev("stage.failed", T0 + 5, stage="upgrade", message=huge)]
    t1 = report_data(make_run(state_dir, events))["targets"][0]
    note = f" [... {len(huge) - MESSAGE_CHARS} more characters]"
    assert t1["stages"][0]["steps"][0]["message"] == "m" * MESSAGE_CHARS + note
    assert t1["stages"][0]["message"] == "m" * MESSAGE_CHARS + note
    assert t1["timeouts"][0]["message"] == "m" * MESSAGE_CHARS + note
    assert max(len(m["title"]) for m in t1["markers"]) < MESSAGE_CHARS + 200


def test_huge_journal_is_read_in_bounded_memory(state_dir: Path) -> None:
    """A journal of 100000 plugin.log events (~45 MB) is reported with a Python heap peak under 16 MB, and
    its torn last line is ignored: the flood only stretches the time axis and t1's last-seen time."""
    events = [ev("run.started", T0, None, data={"mode": "upgrade"}), ev("target.started", T0 + 0.5),
              ev("stage.started", T0 + 1, stage="upgrade"),
              ev("step.started", T0 + 2, stage="upgrade", step="work", plugin="p",
                 data={"attempt": 1, "attempts": 1}),
              ev("step.completed", T0 + 998, stage="upgrade", step="work", plugin="p", data={"duration_s": 996}),
              ev("stage.completed", T0 + 999, stage="upgrade")]
    run_dir = make_run(state_dir, events, flood=100_000)
    size = (run_dir / "events.jsonl").stat().st_size
    assert size > 40 * 2**20
    tracemalloc.start()
    try:
        started = time.monotonic()
        data = report_data(run_dir)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB journal"
    assert time.monotonic() - started < 60
    t1 = data["targets"][0]
    assert [(s["stage"], s["outcome"]) for s in t1["stages"]] == [("upgrade", "completed")]
    assert [(b["step"], b["outcome"]) for b in t1["stages"][0]["steps"]] == [("work", "completed")]
    assert t1["last"] == pytest.approx(T0 + 999) and data["axis"]["start"] == T0
    assert data["run"]["modes"] == ["upgrade"] and t1["not_shown"] == {}


def test_events_slightly_out_of_order_are_sorted_as_before(state_dir: Path) -> None:
    """Events that reach the journal a little out of time order (threads racing for it) are put back in
    order: a step's end written before its start still closes its bar."""
    events = [ev("run.started", T0, None, data={"mode": "upgrade"}), ev("stage.started", T0 + 1, stage="upgrade")]
    ts = T0 + 2
    for n in range(50):
        events += [ev("step.started", ts, stage="upgrade", step=f"s{n}", plugin="p",
                      data={"attempt": 1, "attempts": 1}),
                   ev("step.completed", ts + 0.001, stage="upgrade", step=f"s{n}", plugin="p")]
        ts += 0.01
    events.append(ev("stage.completed", ts, stage="upgrade"))
    run_dir = make_run(state_dir, events, torn=False)
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    shuffled = lines[:2] + [lines[i + 1] if i % 2 == 0 else lines[i - 1] for i in range(2, len(lines) - 1)] \
        + lines[-1:]
    random.Random(1).shuffle(shuffled[10:20])
    (run_dir / "events.jsonl").write_text("\n".join(shuffled) + "\n")
    assert [json.loads(line)["event"] for line in shuffled[2:4]] == ["step.completed", "step.started"]
    t1 = report_data(run_dir)["targets"][0]
    assert [(b["step"], b["outcome"]) for b in t1["stages"][0]["steps"]] == [(f"s{n}", "completed")
                                                                              for n in range(50)]


def test_iter_journal_streams_and_ignores_a_torn_line(tmp_path: Path) -> None:
    """iter_journal yields complete events one at a time; a torn last line and junk lines are skipped."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"ts": 1, "event": "a"}\nnot json\n[1, 2]\n{"ts": 2, "event": "b"}\n{"ts": 3, "ev')
    events = iter_journal(path)
    assert next(events) == {"ts": 1, "event": "a"}
    assert [e["event"] for e in events] == ["b"]


@pytest.mark.integration
def test_page_lists_output_notes_and_what_was_not_shown(state_dir: Path, tmp_path: Path) -> None:
    """The drawn page lists a target's output notes and says how many of each kind are not shown."""
    from test_html_report import browse, parse

    page = write_report(make_run(state_dir, capped_events()))
    rendered = browse(page.as_uri(), tmp_path / "profile", "--dump-dom")
    assert rendered.returncode == 0 and "<html" in rendered.stdout, rendered.stderr[-2000:]
    (details,) = parse(rendered.stdout).find("target-details", data_target="t1")
    (hidden,) = details.find("not-shown")
    assert hidden.text() == ("2650 more markers not shown; 50 more output notes not shown; "
                             "500 more step bars not shown; 50 more timeout reports not shown")
    notes = [n for n in details.walk() if n.tag == "h4" and n.text() == "Plugin output over its limits"]
    assert len(notes) == 1
    items = [n.text() for n in details.walk() if n.tag == "li" and n.text().endswith("[upgrade] s p: over")]
    assert len(items) == SHOWN_PER_TARGET["output_dropped"]
    (t2,) = parse(rendered.stdout).find("target-details", data_target="t2")
    assert not t2.find("not-shown")
