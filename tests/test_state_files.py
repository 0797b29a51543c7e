"""Durable state: atomic checkpoints with checksums, a previous generation, an append-only journal."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from drhost.errors import RefusedError, StateError
from drhost.events import Event
from drhost.state import Journal, RunLock, RunState, StateFile, read_journal


def test_state_round_trips_with_checksum(tmp_path: Path) -> None:
    """What is written is what is read back, and the file carries format and checksum."""
    file = StateFile(tmp_path / "state.json")
    file.write({"a": 1, "nested": {"b": [1, 2]}})
    body, problem = file.read()
    assert body == {"a": 1, "nested": {"b": [1, 2]}} and problem is None
    document = json.loads((tmp_path / "state.json").read_text())
    assert document["format"] == 1 and len(document["checksum"]) == 64


def test_state_files_are_owner_only(tmp_path: Path) -> None:
    """State files are mode 0600."""
    file = StateFile(tmp_path / "state.json")
    file.write({"a": 1})
    assert stat.S_IMODE(os.stat(tmp_path / "state.json").st_mode) == 0o600


def test_corrupt_state_falls_back_to_previous_generation(tmp_path: Path) -> None:
    """A tampered or truncated newest file is detected and the previous generation is used, saying why."""
    file = StateFile(tmp_path / "state.json")
    file.write({"gen": 1})
    file.write({"gen": 2})
    raw = (tmp_path / "state.json").read_bytes()
    (tmp_path / "state.json").write_bytes(raw[: len(raw) // 2])
    body, problem = file.read()
    assert body == {"gen": 1}
    assert problem is not None and "not valid JSON" in problem


def test_edited_state_fails_its_checksum(tmp_path: Path) -> None:
    """A hand-edited body no longer matches its checksum."""
    file = StateFile(tmp_path / "state.json")
    file.write({"gen": 1})
    file.write({"gen": 2})
    document = json.loads((tmp_path / "state.json").read_text())
    document["body"]["gen"] = 3
    (tmp_path / "state.json").write_text(json.dumps(document))
    body, problem = file.read()
    assert body == {"gen": 1} and "checksum mismatch" in (problem or "")


def test_no_usable_generation_refuses_to_guess(tmp_path: Path) -> None:
    """With every generation unusable, reading fails with what was wrong with each."""
    (tmp_path / "state.json").write_text("{")
    with pytest.raises(StateError) as info:
        StateFile(tmp_path / "state.json").read()
    assert "will not guess" in str(info.value) and "state.json.1: missing" in str(info.value)


def test_journal_appends_json_lines_and_ignores_a_torn_tail(tmp_path: Path) -> None:
    """Each event is one JSON line with ts, event and run_id; a half-written last line is skipped."""
    journal = Journal(tmp_path / "events.jsonl")
    journal(Event("step.started", "r1", target="t", stage="upgrade", step="s", plugin="p"))
    journal(Event("step.completed", "r1", target="t"))
    journal.close()
    with open(tmp_path / "events.jsonl", "a") as handle:
        handle.write('{"ts": 1, "event": "torn')
    events = read_journal(tmp_path / "events.jsonl")
    assert [e["event"] for e in events] == ["step.started", "step.completed"]
    assert {"ts", "event", "run_id", "target", "stage", "step", "plugin"} <= set(events[0])


def test_run_lock_is_exclusive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second controller cannot take a run that is being driven."""
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path))
    state = RunState.create("run-x", {"targets": {}})
    first = RunLock(state.run_dir)
    first.acquire()
    second = RunLock(state.run_dir)
    # flock is per open file description, so a second open in this process conflicts too.
    with pytest.raises(RefusedError) as info:
        second.acquire()
    assert "in use by another drhost" in str(info.value) and f"pid {os.getpid()}" in str(info.value)
    first.release()
    second.acquire()
    second.release()


def test_run_directory_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run directory is mode 0700 and its state 0600."""
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path))
    state = RunState.create("run-y", {"targets": {}})
    assert stat.S_IMODE(os.stat(state.run_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state.run_dir / "state.json").st_mode) == 0o600
