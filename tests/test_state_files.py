"""Durable state: atomic checkpoints with checksums, a previous generation, an append-only journal."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from drhost import failpoints
from drhost.errors import RefusedError, StateError
from drhost.events import Event
from drhost.state import Journal, RunLock, RunState, StateFile, atomic_write, find_run, read_journal, write_private_json


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


def test_only_state_commits_count_as_the_checkpoint_failpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``state.before_commit@N`` counts the run state's commits only: a cache, a report or a context file written
    on the way cannot shift it, and a change that writes nothing new is not a commit."""
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path))
    log = tmp_path / "failpoints.log"
    monkeypatch.setattr(failpoints, "_LOG", str(log))
    state = RunState.create("run-f", {"status": "created", "targets": {"t": {"status": "pending"}}})
    atomic_write(tmp_path / "runtime.json", b"{}")
    write_private_json(tmp_path, "timeout", {"a": 1})
    with state.mutate_target("t") as record:
        record["status"] = "running"
    with state.mutate() as body:
        body["status"] = "created"  # as it was: nothing to commit
    assert log.read_text().splitlines() == ["state.before_commit", "state.committed"]


def test_run_killed_before_its_first_checkpoint_is_named_as_such(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A run directory with no checkpoint yet is reported as never checkpointed, not as missing."""
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path))
    run_dir = tmp_path / "runs" / "20261206-195048-3b34c7"
    run_dir.mkdir(parents=True, mode=0o700)
    (run_dir / "state.db.new").write_text("{")  # a database being built when the controller was killed
    with pytest.raises(StateError) as info:
        find_run(run_dir.name)
    assert "has no checkpoint" in str(info.value) and "nothing to resume" in str(info.value)
    with pytest.raises(StateError, match="no run '20261206-195048-000000'"):
        find_run("20261206-195048-000000")


def test_run_directory_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run directory is mode 0700 and its state database, with its write-ahead log, 0600."""
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path))
    state = RunState.create("run-y", {"status": "created", "targets": {"t": {"status": "pending"}}})
    with state.mutate_target("t") as record:
        record["status"] = "running"
    assert stat.S_IMODE(os.stat(state.run_dir).st_mode) == 0o700
    files = sorted(p.name for p in state.run_dir.iterdir())
    assert files == ["state.db", "state.db-shm", "state.db-wal"]
    assert {stat.S_IMODE(os.stat(state.run_dir / name).st_mode) for name in files} == {0o600}

def test_write_private_json_writes_private_json(tmp_path: Path) -> None:
    """write_private_json creates the directory 0700 and a 0600 file holding the data as sorted, indented JSON."""
    directory = tmp_path / "contexts" / "run1"
    data = {"b": 1, "a": {"path": Path("/opt/x")}, "errors": []}
    path = write_private_json(directory, "upgrade.db-migrate", data)
    assert path == directory / "upgrade.db-migrate.json"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"a": {"path": "/opt/x"}, "b": 1, "errors": []}
    assert path.read_text().index('"a"') < path.read_text().index('"b"')


@pytest.mark.parametrize(("name", "file_name"), [
    ("step 1/upgrade:db", "step-1-upgrade-db.json"),
    ("../../etc/passwd", "..-..-etc-passwd.json"),
    ("..", "context.json"),
    ("数据库", "---.json"),
])
def test_write_private_json_sanitises_names(tmp_path: Path, name: str, file_name: str) -> None:
    """Names keep only [A-Za-z0-9._-]; anything else becomes '-', so the file always lands in the directory."""
    path = write_private_json(tmp_path, name, {"x": 1})
    assert path == tmp_path / file_name
    assert [p.name for p in tmp_path.iterdir()] == [file_name]


def test_write_private_json_replaces_atomically(tmp_path: Path) -> None:
    """A second save replaces the file by rename (new inode, no temp file left); a save that fails to encode
    leaves the previous file intact."""
    first = write_private_json(tmp_path, "step", {"n": 1})
    inode = first.stat().st_ino
    second = write_private_json(tmp_path, "step", {"n": 2})
    assert second == first and second.stat().st_ino != inode
    assert json.loads(second.read_text()) == {"n": 2}

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("cannot print")

    with pytest.raises(RuntimeError):
        write_private_json(tmp_path, "step", {"n": Unprintable()})
    assert json.loads(second.read_text()) == {"n": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["step.json"]


def test_a_target_record_changes_only_through_mutate_target() -> None:
    """Outside drhost/state, no ``with state.mutate() as body:`` block indexes ``body["targets"]``: a change to one
    target's record names its target (``mutate_target``), so the store writes that record and not the fleet's."""
    import ast

    import drhost

    source = Path(drhost.__file__).parent
    offenders = []
    for path in sorted(source.rglob("*.py")):
        if "state" in path.relative_to(source).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.With):
                continue
            for item in node.items:
                call = item.context_expr
                if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and call.func.attr == "mutate" and isinstance(item.optional_vars, ast.Name)):
                    continue
                body_name = item.optional_vars.id
                for inner in (n for statement in node.body for n in ast.walk(statement)):
                    if isinstance(inner, ast.Subscript) and isinstance(inner.value, ast.Name) \
                            and inner.value.id == body_name and isinstance(inner.slice, ast.Constant) \
                            and inner.slice.value == "targets":
                        offenders.append(f"{path.relative_to(source.parent)}:{inner.lineno}")
    assert offenders == []


def test_reading_a_run_leaves_its_directory_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader (status, report) holds no connection once it has read: the run directory is byte for byte what
    it was, with no -wal or -shm of the reader's left behind; a controller's close folds its WAL in."""
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path))
    state = RunState.create("run-r", {"status": "created", "targets": {"t": {"status": "pending"}}})
    with state.mutate_target("t") as record:
        record["status"] = "running"
    state.close()
    before = {p.name: p.read_bytes() for p in state.run_dir.iterdir()}
    assert sorted(before) == ["state.db"]
    reader = RunState.open(state.run_dir)
    with reader.reading_target("t") as record:
        assert record["status"] == "running"
    assert {p.name: p.read_bytes() for p in state.run_dir.iterdir()} == before
