"""The run state's SQLite store: rows per target and per step, checksummed, a previous generation, commits that survive
a kill, owner-only files, and a clear error for anything that is not a drhost state database."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drhost import failpoints
from drhost.errors import StateError
from drhost.state._store import STORE_FORMAT, StateStore, canonical, step_row

RUN = {"run_id": "r-1", "status": "running", "plan": {"steps": []}}
TARGETS = {"dr-1": {"status": "pending", "steps": {}}, "dr-2": {"status": "pending", "steps": {}}}


def _store(tmp_path: Path) -> StateStore:
    return StateStore.create(tmp_path / "state.db", RUN, TARGETS)


def test_what_is_written_is_read_back_by_another_connection(tmp_path: Path) -> None:
    """A target's committed record is what a second, independent open of the database reads."""
    store = _store(tmp_path)
    store.write_target("dr-1", {"status": "running", "steps": {"a": {"status": "done"}}})
    store.write_run({**RUN, "status": "finished"})
    run, targets, problem = StateStore.open(tmp_path / "state.db").read()
    assert run == {**RUN, "status": "finished"} and problem is None
    assert targets == {"dr-1": {"status": "running", "steps": {"a": {"status": "done"}}}, "dr-2": TARGETS["dr-2"]}


def test_a_write_changes_only_its_targets_row(tmp_path: Path) -> None:
    """Writing one target leaves every other row, its text and its previous generation, as it was."""
    store = _store(tmp_path)
    store.write_target("dr-2", {"status": "running"})
    before = sqlite3.connect(tmp_path / "state.db").execute(
        "SELECT kind, name, body, previous FROM record WHERE name != 'dr-1' ORDER BY name").fetchall()
    store.write_target("dr-1", {"status": "succeeded"})
    after = sqlite3.connect(tmp_path / "state.db").execute(
        "SELECT kind, name, body, previous FROM record WHERE name != 'dr-1' ORDER BY name").fetchall()
    assert after == before


def test_an_unchanged_record_is_not_committed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write of what the row holds is skipped: no commit, and the previous generation stays the one before."""
    log = tmp_path / "failpoints.log"
    monkeypatch.setattr(failpoints, "_LOG", str(log))
    store = _store(tmp_path)
    store.write_target("dr-1", {"status": "running"})
    store.write_target("dr-1", {"status": "running"})
    assert log.read_text().splitlines() == ["state.before_commit", "state.committed"]
    previous = sqlite3.connect(tmp_path / "state.db").execute(
        "SELECT previous FROM record WHERE name = 'dr-1'").fetchone()[0]
    assert previous == canonical({"status": "pending"})  # the steps are in rows of their own


def test_an_edited_row_falls_back_to_its_previous_generation_and_says_so(tmp_path: Path) -> None:
    """A row whose body no longer matches its checksum is read from its previous generation, with the reason;
    when neither verifies, the database is refused with a StateError naming the row."""
    store = _store(tmp_path)
    store.write_target("dr-1", {"status": "running"})
    db = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    db.execute("UPDATE record SET body = '{\"status\": \"succeeded\"}' WHERE name = 'dr-1'")
    _, targets, problem = StateStore.open(tmp_path / "state.db").read()
    assert targets["dr-1"] == TARGETS["dr-1"]
    assert problem is not None and "target 'dr-1': checksum mismatch" in problem
    assert "the previous generation of target 'dr-1' was used" in problem
    db.execute("UPDATE record SET previous = '{}' WHERE name = 'dr-1'")
    with pytest.raises(StateError, match=r"no usable generation of target 'dr-1': .*checksum mismatch"):
        StateStore.open(tmp_path / "state.db").read()


def test_the_database_and_its_wal_are_owner_only(tmp_path: Path) -> None:
    """The database, its -wal and its -shm files are mode 0600, whatever the umask."""
    old = os.umask(0o022)
    try:
        store = _store(tmp_path)
        store.write_target("dr-1", {"status": "running"})
    finally:
        os.umask(old)
    modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()}
    assert modes == {"state.db": 0o600, "state.db-wal": 0o600, "state.db-shm": 0o600}


@pytest.mark.parametrize("what", ["garbage", "fifo", "directory", "foreign", "trigger", "format"])
def test_anything_but_a_drhost_state_database_is_refused_by_name(tmp_path: Path, what: str) -> None:
    """Garbage, a FIFO, a directory, another program's database, one with a trigger added, or another format:
    a StateError naming the file, never a hang or a traceback."""
    path = tmp_path / "state.db"
    if what == "garbage":
        path.write_bytes(b"not a database at all" * 100)
    elif what == "fifo":
        os.mkfifo(path)
    elif what == "directory":
        path.mkdir()
    elif what == "foreign":
        sqlite3.connect(path).execute("CREATE TABLE t (x)")
    else:
        StateStore.create(path, RUN, TARGETS).close()
        db = sqlite3.connect(path, isolation_level=None)
        if what == "trigger":
            db.execute("CREATE TRIGGER t AFTER UPDATE ON record BEGIN DELETE FROM record; END")
        else:
            db.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
        db.close()
    with pytest.raises(StateError, match=str(path)):
        StateStore.open(path)
    assert STORE_FORMAT == 3


_KILLED_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from drhost.state._store import StateStore

    store = StateStore.open(Path(sys.argv[1]))
    store.write_target("dr-1", {"status": "first"})
    store.write_target("dr-1", {"status": "second"})
""")


@pytest.mark.parametrize(("point", "expected"), [("state.before_commit@2", "first"),
                                                 ("state.committed@2", "second")])
def test_a_writer_killed_around_its_commit_leaves_the_last_committed_record(
        tmp_path: Path, point: str, expected: str) -> None:
    """SIGKILL before a commit leaves the record of the commit before it; after it, the new record."""
    _store(tmp_path).close()
    env = {**os.environ, failpoints.ENV: point}
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path / "state.db")], env=env,
                            capture_output=True, timeout=60)
    assert killed.returncode == -9
    _, targets, problem = StateStore.open(tmp_path / "state.db").read()
    assert targets["dr-1"] == {"status": expected, "steps": {}} and problem is None


def test_a_text_taken_earlier_never_overwrites_a_later_one(tmp_path: Path) -> None:
    """Commits that arrive out of the order their texts were taken in keep the later text: it holds the earlier
    change too, so the row ends as the newest state and never goes back."""
    store = _store(tmp_path)
    store.commit([(("target", "dr-1"), canonical({"status": "succeeded"}))], order=2)
    store.commit([(("target", "dr-1"), canonical({"status": "running"}))], order=1)
    _, targets, _ = StateStore.open(tmp_path / "state.db").read()
    assert targets["dr-1"] == {"status": "succeeded", "steps": {}}


def test_targets_changed_from_many_threads_are_all_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forty threads each changing their own target (and the run) many times: what a fresh open reads is
    exactly the state in memory, every row its newest text."""
    import threading

    from drhost.state import RunState

    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path))
    names = [f"t{i:02d}" for i in range(40)]
    state = RunState.create("run-threads", {"status": "running", "done": 0,
                                            "targets": {name: {"status": "pending", "n": 0, "steps": {}}
                                                                        for name in names}})

    def work(name: str) -> None:
        for n in range(1, 26):
            with state.mutate_target(name) as record:
                record["n"] = n  # type: ignore[typeddict-unknown-key]
            if n % 5 == 0:
                with state.mutate() as body:
                    body["done"] += 1

    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reread = RunState.open(state.run_dir).snapshot()
    assert reread == state.snapshot()
    assert reread["done"] == 200 and {record["n"] for record in reread["targets"].values()} == {25}


def _queue_behind_the_lock(store: StateStore, callers: int, commit: Callable[[int], None]) -> list[BaseException]:
    """``callers`` threads each calling ``commit(i)`` while the store's connection is held, released once all of
    them wait: the next transaction finds them all queued. Returns what the callers raised."""
    import threading
    import time

    raised: list[BaseException] = []

    def call(i: int) -> None:
        try:
            commit(i)
        except BaseException as exc:  # collected for the test to judge
            raised.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    with store._lock:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(store._queue) < callers:
            assert time.monotonic() < deadline, "callers never queued"
            time.sleep(0.001)
    for thread in threads:
        thread.join()
    return raised


def test_callers_that_wait_together_share_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits that queue while another holds the connection go in one transaction, yet each caller returns
    with its own row on disk, and the failpoints are passed once per caller as without grouping."""
    log = tmp_path / "failpoints.log"
    monkeypatch.setattr(failpoints, "_LOG", str(log))
    store = _store(tmp_path)
    groups: list[int] = []
    commit_group = store._commit_group

    def counted(group: list[Any]) -> None:
        groups.append(len(group))
        commit_group(group)

    monkeypatch.setattr(store, "_commit_group", counted)
    seen: dict[int, str] = {}

    def commit(i: int) -> None:
        store.commit([(("target", f"n{i:02d}"), canonical({"status": "done", "i": i}))])
        # Durable on return: a connection of its own reads it.
        reader = sqlite3.connect(tmp_path / "state.db")
        seen[i] = reader.execute("SELECT body FROM record WHERE name = ?", (f"n{i:02d}",)).fetchone()[0]
        reader.close()

    assert _queue_behind_the_lock(store, 12, commit) == []
    assert groups == [12]
    assert seen == {i: canonical({"status": "done", "i": i}) for i in range(12)}
    assert log.read_text().splitlines() == ["state.before_commit"] * 12 + ["state.committed"] * 12


def test_a_failed_shared_transaction_fails_every_caller_and_writes_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the shared transaction fails, every caller in it raises, none of their rows changed, and the same
    rows committed again afterwards are written (not skipped as already held)."""
    from drhost.state import _store as store_module

    def disk_gone(name: str) -> None:
        raise OSError("disk gone")

    store = _store(tmp_path)
    real = store_module.failpoint
    monkeypatch.setattr(store_module, "failpoint", disk_gone)
    rows = {i: [(("target", f"dr-{i}"), canonical({"status": f"try-{i}"}))] for i in (1, 2)}
    raised = _queue_behind_the_lock(store, 2, lambda i: store.commit(rows[i + 1]))
    assert [str(exc) for exc in raised] == ["disk gone", "disk gone"]
    _, targets, _ = StateStore.open(tmp_path / "state.db").read()
    assert targets == TARGETS
    monkeypatch.setattr(store_module, "failpoint", real)
    store.commit(rows[1] + rows[2])
    _, targets, _ = StateStore.open(tmp_path / "state.db").read()
    assert (targets["dr-1"], targets["dr-2"]) == ({"status": "try-1", "steps": {}}, {"status": "try-2", "steps": {}})


def _rows(path: Path) -> dict[tuple[str, str], tuple[str, str | None]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {(kind, name): (body, previous)
                for kind, name, body, previous in db.execute("SELECT kind, name, body, previous FROM record")}


def test_a_step_transition_writes_its_own_row_and_its_targets_only(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Fifty steps done, then one more changes: the target's row and that step's row are rewritten, the other
    fifty steps' rows (body and previous generation) are not, so a step costs the same at step 5 and at step 500."""
    from drhost.state import RunState

    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path))
    steps = {f"upgrade/p/s{i:02d}": {"status": "done", "seq": i} for i in range(50)}
    state = RunState.create("run-steps", {"status": "running",
                                          "targets": {"t1": {"status": "running", "seq": 50, "steps": steps}}})
    database = state.run_dir / "state.db"
    before = _rows(database)
    assert len([row for row in before if row[0] == "step"]) == 50
    with state.mutate_target("t1", steps=("upgrade/p/s07",)) as record:
        record["seq"] = 51
        record["steps"]["upgrade/p/s07"].update(status="started", seq=51)
    after = _rows(database)
    changed = {row for row in after if after[row] != before.get(row)}
    assert changed == {("target", "t1"), step_row("t1", "upgrade/p/s07")}
    assert json.loads(after[step_row("t1", "upgrade/p/s07")][0]) == {"status": "started", "seq": 51}
    assert "steps" not in json.loads(after[("target", "t1")][0])
    assert RunState.open(state.run_dir).snapshot() == state.snapshot()


def test_a_damaged_step_row_falls_back_to_its_previous_generation_naming_the_step(tmp_path: Path) -> None:
    """A step row whose newest generation fails its checksum is read from its previous one, and the reason
    names the step and its target; the target's other steps are as written."""
    store = _store(tmp_path)
    store.write_target("dr-1", {"status": "running", "steps": {"a": {"status": "started"}, "b": {"status": "done"}}})
    store.write_target("dr-1", {"status": "running", "steps": {"a": {"status": "done"}, "b": {"status": "done"}}})
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db", isolation_level=None)) as db:
        db.execute("UPDATE record SET body = '{\"status\":\"skipped\"}' WHERE kind = 'step' AND name = ?",
                   (step_row("dr-1", "a")[1],))
    _, targets, problem = StateStore.open(tmp_path / "state.db").read()
    assert targets["dr-1"]["steps"] == {"a": {"status": "started"}, "b": {"status": "done"}}
    assert problem is not None and "step 'a' of target 'dr-1'" in problem and "checksum mismatch" in problem


@pytest.mark.parametrize(("name", "message"), [
    ('["dr-9", "a"]', "step 'a' belongs to target 'dr-9', which the run does not have"),
    ("dr-1/a", "a step row is named 'dr-1/a', not [target, step]"),
    ('["dr-1"]', "not [target, step]"),
], ids=["unknown-target", "not-json", "not-a-pair"])
def test_a_step_row_that_names_no_step_of_the_run_is_refused_by_name(tmp_path: Path, name: str,
                                                                     message: str) -> None:
    """A checksummed step row whose name is not a [target, step] pair of the run: StateError naming the
    database and the row, never a KeyError or a step silently dropped."""
    _store(tmp_path).close()
    text = canonical({"status": "done"})
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db", isolation_level=None)) as db:
        db.execute("INSERT INTO record (kind, name, body, checksum) VALUES ('step', ?, ?, ?)",
                   (name, text, hashlib.sha256(text.encode()).hexdigest()))
    with pytest.raises(StateError) as caught:
        StateStore.open(tmp_path / "state.db").read()
    assert str(tmp_path / "state.db") in str(caught.value) and message in str(caught.value)
