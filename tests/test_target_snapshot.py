"""Target snapshots for plugin-test: exact about what a step can change, blind to what changes by itself."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drhost.demo import install
from drhost.packaging import build_package
from drhost.testing._snapshot import Snapshot, SnapshotDiff, take_snapshot
from product_helpers import kill_leftovers

pytestmark = pytest.mark.integration

CATALOG = "data/catalog.db"
JOBS_KEY = f"db:{CATALOG}:table:jobs"
SERVICE_KEY = "service:drproductd"


@pytest.fixture(scope="session")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_package("1.0.0", tmp_path_factory.mktemp("snapshot-packages"))


@pytest.fixture
def root(tmp_path: Path, package: Path) -> Iterator[Path]:
    """A real 1.0.0 install with 5 jobs and its daemon running; stopped (and swept) afterwards."""
    path = tmp_path / "R"
    install.install_fresh(package, path, install.free_port(), seed_jobs=5)
    install.start(path)
    try:
        yield path
    finally:
        with contextlib.suppress(install.InstallError):
            install.stop(path)
        kill_leftovers(path)


def _insert_job(root: Path) -> None:
    with contextlib.closing(sqlite3.connect(root / CATALOG)) as conn, conn:
        conn.execute("INSERT INTO jobs(name, source_path, schedule) VALUES ('extra', '/srv/extra', 'daily')")


def _pid(root: Path) -> int:
    return int((root / "run" / "drproductd.pid").read_text(encoding="utf-8"))


def test_untouched_running_target_has_no_diff(root: Path) -> None:
    """Two snapshots of a running target nobody touched are identical, although the daemon served requests between."""
    before = take_snapshot(root)
    install.health(root)
    after = take_snapshot(root)

    assert before.entries[SERVICE_KEY] == "running version 1.0.0 schema 1 status ok"
    assert before.entries[JOBS_KEY].startswith("5 rows sha256:")
    assert before.entries["link:current"] == "-> releases/1.0.0"
    assert not before.diff(after), before.diff(after).lines()
    assert before.diff(after).keys() == frozenset()


def _change_file(root: Path) -> None:
    with (root / "releases/1.0.0/migrations/001_initial.sql").open("a", encoding="utf-8") as fh:
        fh.write("-- edited\n")


def _add_file(root: Path) -> None:
    (root / "releases/2.0.0").mkdir()
    (root / "releases/2.0.0/x").write_bytes(b"twelve bytes")


def _remove_dir(root: Path) -> None:
    (root / "backup").rmdir()


def _retarget_link(root: Path) -> None:
    # Absolute spelling of the same release: the daemon keeps working, only the link's text differs.
    (root / "current").unlink()
    (root / "current").symlink_to(root / "releases/1.0.0")


def _chmod(root: Path) -> None:
    (root / "releases/1.0.0/bin/drproduct-license").chmod(0o700)


@pytest.mark.parametrize(("mutate", "added", "removed", "changed"), [
    (_change_file, set(), set(), {"file:releases/1.0.0/migrations/001_initial.sql"}),
    (_add_file, {"dir:releases/2.0.0", "file:releases/2.0.0/x"}, set(), set()),
    (_remove_dir, set(), {"dir:backup"}, set()),
    (_retarget_link, set(), set(), {"link:current"}),
    (_chmod, set(), set(), {"file:releases/1.0.0/bin/drproduct-license"}),
], ids=["changed-file", "added-file", "removed-dir", "changed-link", "mode"])
def test_file_level_change_shows_under_its_key(root: Path, mutate: Callable[[Path], None], added: set[str],
                                               removed: set[str], changed: set[str]) -> None:
    """Each kind of filesystem change shows up under exactly the key of the path it touched, nothing else."""
    before = take_snapshot(root)
    mutate(root)
    diff = before.diff(take_snapshot(root))

    assert set(diff.added) == added
    assert set(diff.removed) == removed
    assert {key for key, _, _ in diff.changed} == changed


def test_fingerprints_say_what_changed(root: Path) -> None:
    """A mode change and a new link target are visible in the fingerprints, not only in the keys."""
    before = take_snapshot(root)
    _chmod(root)
    _retarget_link(root)
    changed = {key: (old, new) for key, old, new in before.diff(take_snapshot(root)).changed}

    old, new = changed["file:releases/1.0.0/bin/drproduct-license"]
    assert old.endswith(" B mode 0755") and new.endswith(" B mode 0700")
    assert old.split()[0] == new.split()[0], "same content, same hash"
    assert changed["link:current"] == ("-> releases/1.0.0", f"-> {root / 'releases/1.0.0'}")


def test_inserted_row_changes_its_table(root: Path) -> None:
    """A row inserted into the catalog changes that table's key (row count and hash), and nothing else."""
    before = take_snapshot(root)
    _insert_job(root)
    diff = before.diff(take_snapshot(root))

    assert diff.keys() == {JOBS_KEY}
    (_, old, new), = diff.changed
    assert old.startswith("5 rows sha256:") and new.startswith("6 rows sha256:")


def test_vacuum_is_not_a_change(root: Path) -> None:
    """VACUUM rewrites the database file's bytes but not its data, so the snapshot sees no difference."""
    # Free pages first, so VACUUM really has a different layout to write.
    with contextlib.closing(sqlite3.connect(root / CATALOG)) as conn, conn:
        conn.execute("CREATE TABLE scratch(x)")
        conn.executemany("INSERT INTO scratch VALUES (?)", [("y" * 500,) for _ in range(200)])
    with contextlib.closing(sqlite3.connect(root / CATALOG)) as conn, conn:
        conn.execute("DROP TABLE scratch")
    before = take_snapshot(root)
    raw_before = hashlib.sha256((root / CATALOG).read_bytes()).hexdigest()
    with contextlib.closing(sqlite3.connect(root / CATALOG, isolation_level=None)) as conn:
        conn.execute("VACUUM")

    assert hashlib.sha256((root / CATALOG).read_bytes()).hexdigest() != raw_before
    assert not before.diff(take_snapshot(root))


def test_sqlite_detected_by_header_anywhere(root: Path) -> None:
    """A copy of the catalog under any name is compared logically; a file with the header but no database is not."""
    (root / "backup/run-1").mkdir()
    shutil.copy(root / CATALOG, root / "backup/run-1/catalog.bak")
    (root / "staging/fake.db").write_bytes(b"SQLite format 3\0" + b"\xff" * 200)
    snap = take_snapshot(root)

    assert snap.entries["db:backup/run-1/catalog.bak:table:jobs"] == snap.entries[JOBS_KEY]
    assert snap.entries["db:backup/run-1/catalog.bak:user_version"] == "1"
    assert snap.entries["file:backup/run-1/catalog.bak"] == "sqlite mode 0644"
    assert snap.entries["file:staging/fake.db"].startswith("sha256:")
    assert snap.entries["file:staging/fake.db"].endswith(" 216 B mode 0644")
    assert "db:staging/fake.db:error" in snap.entries
    assert not any(key.startswith("db:staging/fake.db:table:") for key in snap.entries)


def test_service_stop_changes_and_restart_restores(root: Path) -> None:
    """Stopping the daemon changes the service key; a restart (new pid, longer log) gives the same snapshot back."""
    before = take_snapshot(root)
    old_pid = _pid(root)
    log_size = (root / "log/drproductd.log").stat().st_size
    install.stop(root)
    stopped = before.diff(take_snapshot(root))
    install.start(root)
    restarted = before.diff(take_snapshot(root))

    assert (SERVICE_KEY, before.entries[SERVICE_KEY], "stopped") in stopped.changed
    assert stopped.keys() == {SERVICE_KEY, "file:run/drproductd.pid"}
    assert _pid(root) != old_pid
    assert (root / "log/drproductd.log").stat().st_size > log_size
    assert not restarted, restarted.lines()


def test_process_left_running_in_root_is_seen(root: Path) -> None:
    """A command left running in R (by cwd or by naming a path in R) is a process key; one in R-old is not."""
    sibling = root.with_name(root.name + "-old")
    sibling.mkdir()
    pause = "import time; time.sleep(300)"
    named = [sys.executable, "-c", pause, str(root / CATALOG)]
    before = take_snapshot(root)
    procs = [subprocess.Popen(["sleep", "300"], cwd=root), subprocess.Popen(named, cwd="/"),
             subprocess.Popen([sys.executable, "-c", pause, str(sibling)], cwd=sibling)]
    try:
        during = take_snapshot(root)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    after = take_snapshot(root)

    diff = before.diff(during)
    assert diff.keys() == {"process:sleep 300", "process:" + " ".join(named)[:200]}
    assert during.entries["process:sleep 300"] == "running"
    assert not before.diff(after)


def test_noise_is_ignored_but_new_log_file_counts(root: Path) -> None:
    """drhost's work dir, bytecode caches, SQLite sidecars and log content are ignored; a new log file is not."""
    before = take_snapshot(root)
    (root / ".drhost/runs").mkdir(parents=True)
    (root / ".drhost/runs/state.json").write_text("{}", encoding="utf-8")
    cache = root / "releases/1.0.0/lib/drproduct/__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "common.cpython-311.pyc").write_bytes(b"\0" * 16)
    (root / "releases/1.0.0/bin/stray.pyc").write_bytes(b"\0" * 16)
    for sidecar in ("old.db-wal", "old.db-shm", "old.db-journal"):
        (root / "backup" / sidecar).write_bytes(b"x")
    with (root / "log/drproductd.log").open("a", encoding="utf-8") as fh:
        fh.write("a line the daemon might have written\n")
    (root / "log/extra.log").write_text("new\n", encoding="utf-8")
    diff = before.diff(take_snapshot(root))

    assert diff.keys() == {"file:log/extra.log"}
    assert diff.fingerprints["file:log/extra.log"] == "present"


def test_only_restricts_the_comparison(root: Path) -> None:
    """With only=, differences outside the given keys are not reported."""
    before = take_snapshot(root)
    _insert_job(root)
    _remove_dir(root)
    after = take_snapshot(root)

    assert before.diff(after).keys() == {JOBS_KEY, "dir:backup"}
    assert before.diff(after, only=[JOBS_KEY]).keys() == {JOBS_KEY}
    assert before.diff(after, only={"dir:backup", "dir:nowhere"}).keys() == {"dir:backup"}
    assert not before.diff(after, only=[])


def test_lines_are_readable_and_cut(root: Path) -> None:
    """lines() says added/changed/removed with kind, path and size or fingerprints, and cuts with "and N more"."""
    before = take_snapshot(root)
    (root / "staging/pkg").mkdir()
    for i in range(10):
        (root / f"staging/pkg/f{i}").write_bytes(b"x" * 12)
    _insert_job(root)
    _remove_dir(root)
    after = take_snapshot(root)
    diff = before.diff(after)
    lines = diff.lines(limit=100)

    assert "added file staging/pkg/f0 (12 B)" in lines
    assert "added dir staging/pkg" in lines
    assert "removed dir backup" in lines
    assert (f"changed db {CATALOG} table jobs: {before.entries[JOBS_KEY]} -> {after.entries[JOBS_KEY]}"
            in lines)
    assert len(lines) == 13
    cut = diff.lines(limit=4)
    assert cut == [*lines[:4], "… and 9 more"]
    assert diff.lines() == [*lines[:8], "… and 5 more"]


def test_to_json_has_every_difference(root: Path) -> None:
    """to_json() is plain JSON with the fingerprints of added, removed and changed keys."""
    before = take_snapshot(root)
    _insert_job(root)
    _remove_dir(root)
    (root / "staging/x").write_bytes(b"abc")
    data = json.loads(json.dumps(before.diff(take_snapshot(root)).to_json()))

    assert [entry["key"] for entry in data["added"]] == ["file:staging/x"]
    assert data["added"][0]["after"].split()[1:] == ["3", "B", "mode", "0644"]
    assert data["removed"] == [{"key": "dir:backup", "before": "mode 0755"}]
    assert [entry["key"] for entry in data["changed"]] == [JOBS_KEY]


def test_snapshot_is_plain_data(tmp_path: Path) -> None:
    """Snapshots and diffs compare by value, so a saved snapshot can be compared with a fresh one."""
    first = Snapshot(root=str(tmp_path), entries={"file:a": "present", "dir:b": "mode 0755"})
    second = Snapshot(root=str(tmp_path), entries={"file:a": "present", "dir:c": "mode 0755"})

    assert first.diff(second) == SnapshotDiff(added=("dir:c",), removed=("dir:b",), changed=())
    assert take_snapshot(tmp_path / "missing").entries == {SERVICE_KEY: "stopped"}
    assert os.path.isabs(take_snapshot(Path("relative-root")).root)


def test_snapshot_taker_is_not_a_leftover(root: Path) -> None:
    """The process taking the snapshot (and its parents) is not reported, even when it runs inside R."""
    code = ("import json, sys; from drhost.testing._snapshot import take_snapshot; "
            "print(json.dumps(dict(take_snapshot(sys.argv[1]).entries)))")
    proc = subprocess.run([sys.executable, "-c", code, str(root)], cwd=root, capture_output=True, text=True,
                          timeout=30, check=True)
    entries = json.loads(proc.stdout)

    assert entries == dict(take_snapshot(root).entries)
    assert not any(key.startswith("process:") for key in entries)
