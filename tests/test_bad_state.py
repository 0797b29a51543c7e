"""Bad run state never crashes drhost, never misleads, never touches a target: run ids, state files,
journals, locks, and what a resume re-checks before it goes on."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import demo_roots, pids_under, tree_digest
from drhost.cli import main
from drhost.errors import StateError, quote
from drhost.plan import recorded_plan
from drhost.state import JournalSkips, RunState, iter_journal
from drhost.state._files import encode_state
from drhost.state._store import StateStore
from state_rows import edit_state, read_state, set_generations

pytestmark = [pytest.mark.podman, pytest.mark.integration]

Capsys = pytest.CaptureFixture[str]


class Interrupted:
    """A real run, killed mid-upgrade: its state dir, run id and target root."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        (self.run_dir,) = (state_dir / "runs").iterdir()
        self.run_id = self.run_dir.name
        (self.root,) = demo_roots(state_dir)

    def runs(self) -> list[str]:
        return sorted(p.name for p in (self.state_dir / "runs").iterdir())


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Interrupted]:
    state_dir = tmp_path_factory.mktemp("bad-state") / "state"
    state_dir.mkdir()
    env = {**os.environ, "DRHOST_STATE_DIR": str(state_dir), "DRHOST_INSTANT_RETRIES": "1",
           "DRHOST_FAILPOINT": "step.started:upgrade/dr-core/install_program_files"}
    killed = subprocess.run([sys.executable, "-m", "drhost", "upgrade", "--demo", "--demo-targets", "1", "--json"],
                            capture_output=True, text=True, env=env, timeout=240, stdin=subprocess.DEVNULL)
    assert killed.returncode == -9, killed.stderr[-2000:]
    try:
        yield Interrupted(state_dir)
    finally:
        for pid in pids_under(state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def run(interrupted: Interrupted, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Interrupted]:
    """The interrupted run, restored after the test (which may corrupt it), with its target's digest checked
    unchanged by every test."""
    monkeypatch.setenv("DRHOST_STATE_DIR", str(interrupted.state_dir))
    monkeypatch.setenv("DRHOST_INSTANT_RETRIES", "1")
    saved = tmp_path / "saved-run"
    shutil.copytree(interrupted.run_dir, saved, symlinks=True)
    runs_before = interrupted.runs()
    before = tree_digest(interrupted.root)
    yield interrupted
    assert tree_digest(interrupted.root) == before, "the target was touched"
    assert interrupted.runs() == runs_before, "a run directory was created or removed"
    shutil.rmtree(interrupted.run_dir)
    shutil.copytree(saved, interrupted.run_dir, symlinks=True)


def call(capsys: Capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    return code, out, err


def database_files(run_dir: Path) -> list[Path]:
    """The state database and its write-ahead log and shared-memory index (all three replaced together)."""
    return [run_dir / name for name in ("state.db", "state.db-wal", "state.db-shm")]


def replace_database(run_dir: Path, data: bytes) -> None:
    """The state database replaced by ``data``, its WAL and index gone: nothing of the old one left."""
    for path in database_files(run_dir):
        path.unlink(missing_ok=True)
    (run_dir / "state.db").write_bytes(data)


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# -- run ids: validated in every command before they become a path ------------------------------------------

BAD_RUN_IDS = ["../etc", "a/b", "..", "/tmp", "x" * 65, "\x1b[2Jgone", "run\nid", "-", ".hidden", "a..b",
               "run id", "ruñ", "a\x00b"]


@pytest.mark.parametrize("command", ["status", "resume", "rollback", "report"])
@pytest.mark.parametrize("run_id", BAD_RUN_IDS, ids=range(len(BAD_RUN_IDS)))
def test_bad_run_id_is_refused_by_every_command(run: Interrupted, capsys: Capsys, command: str, run_id: str) -> None:
    """A run id that is a path, too long, or has control characters is refused (exit 2), escaped in the message."""
    code, _, err = call(capsys, command, "--", run_id) if run_id.startswith("-") else call(capsys, command, run_id)
    assert code == 2, err
    assert "run id" in err and quote(run_id)[1:-1][:40] in err
    assert "\x1b" not in err and "\x00" not in err


# -- the state database ----------------------------------------------------------------------------------------

def test_a_damaged_newest_generation_falls_back_to_the_previous(run: Interrupted, capsys: Capsys) -> None:
    """The run's newest record fails its checksum: status reads the previous generation and says why."""
    set_generations(run.run_dir, "run", "", b'{"status": "\xff\xfe"}', checksummed=False)
    code, out, _ = call(capsys, "status", run.run_id)
    assert code == 0
    assert f"{run.run_dir / 'state.db'}: the run: checksum mismatch" in out
    assert "the previous generation of the run was used" in out


@pytest.mark.parametrize(("kind", "name", "text", "checksummed", "problem"), [
    ("run", "", b"\xff\xfe\x00garbage", False, "the run: checksum mismatch"),
    ("run", "", deep(100_000).decode(), True, "the run: JSON nested too deeply"),
    ("run", "", '{"run_id": "x", "chec', True, "the run: not valid JSON"),
    ("run", "", "[1, 2, 3]", True, "run: expected an object, found list"),
    ("run", "", "1" + "0" * 5000, True, "the run: not valid JSON"),
    ("target", "dr-demo-1", "", True, "target 'dr-demo-1': not valid JSON"),
    ("target", "dr-demo-1", '{"status": 1}', False, "target 'dr-demo-1': checksum mismatch"),
], ids=["garbage", "deeply-nested", "truncated", "array", "huge-integer", "empty-target", "edited-target"])
def test_no_usable_generation_is_refused_by_name(run: Interrupted, capsys: Capsys, kind: str, name: str,
                                                 text: str | bytes, checksummed: bool, problem: str) -> None:
    """Both generations of a record unusable: exit 7 naming the database, the record and what is wrong, for
    status and resume alike."""
    set_generations(run.run_dir, kind, name, text, text, checksummed=checksummed)
    for command in ("status", "resume"):
        code, _, err = call(capsys, command, run.run_id)
        assert code == 7, err
        assert f"{run.run_dir / 'state.db'}: {problem}" in err and "will not guess" in err


@pytest.mark.parametrize(("data", "problem"), [
    (b"\xff\xfe\x00garbage" * 200, "not a drhost state database (file is not a database)"),
    (b"", "not a drhost state database (its tables are not drhost's)"),
    (b"SQLite format 3\x00" + b"\x00" * 84, "not a drhost state database"),
], ids=["garbage", "empty", "header-only"])
def test_a_database_that_is_not_drhosts_is_refused_by_name(run: Interrupted, capsys: Capsys, data: bytes,
                                                          problem: str) -> None:
    """state.db replaced by bytes that are no drhost state database: exit 7 naming it, for status and resume."""
    replace_database(run.run_dir, data)
    for command in ("status", "resume"):
        code, _, err = call(capsys, command, run.run_id)
        assert code == 7, err
        assert f"{run.run_dir / 'state.db'}: {problem}" in err


@pytest.mark.parametrize("kind", ["directory", "fifo", "socket"])
def test_state_database_that_is_not_a_regular_file_is_refused_without_hanging(
        run: Interrupted, capsys: Capsys, kind: str) -> None:
    """A state.db that is a directory, a FIFO or a socket: exit 7 naming it, and reading never blocks."""
    import socket

    for path in database_files(run.run_dir):
        path.unlink(missing_ok=True)
    path = run.run_dir / "state.db"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
    started = time.monotonic()
    code, _, err = call(capsys, "resume", run.run_id)
    assert time.monotonic() - started < 30
    assert code == 7, err
    assert f"{path}: expected a regular file, found a" in err
    shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.mark.parametrize(("change", "key"), [
    (lambda b: b.pop("run_id"), "run_id"),
    (lambda b: b.update(status=None), "status"),
    (lambda b: b.update(plan=[]), "plan"),
    (lambda b: b["package"].pop("version"), "package.version"),
    (lambda b: b["config"].pop("run"), "config.run"),
    (lambda b: b["targets"].update({"dr-demo-1": "running"}), "targets.dr-demo-1"),
    (lambda b: b["targets"]["dr-demo-1"].pop("status"), "targets.dr-demo-1.status"),
    (lambda b: b["targets"]["dr-demo-1"].update(steps=[]), "targets.dr-demo-1.steps"),
    (lambda b: b["rollout"].update(batches={"0": 1}), "rollout.batches"),
], ids=["run_id", "status", "plan", "package-version", "config-run", "target-record", "target-status",
        "target-steps", "batches"])
def test_valid_but_incomplete_state_is_refused_naming_the_key(
        run: Interrupted, capsys: Capsys, change: Callable[[dict[str, Any]], None], key: str) -> None:
    """A checksummed state lacking what drhost indexes: exit 7 naming the database and the key, no KeyError."""
    edit_state(run.run_dir, change)
    for command in ("status", "resume", "rollback"):
        code, _, err = call(capsys, command, run.run_id)
        assert code == 7, err
        assert f"{run.run_dir / 'state.db'}: {key}: expected" in err


def test_incomplete_newest_generation_falls_back_to_a_complete_previous(run: Interrupted, capsys: Capsys) -> None:
    """Only the newest generation of the target's record incomplete: status reads the previous one, says why."""
    record = read_state(run.run_dir)["targets"]["dr-demo-1"]
    del record["status"]
    set_generations(run.run_dir, "target", "dr-demo-1", record)
    code, out, _ = call(capsys, "status", run.run_id)
    assert code == 0
    assert "dr-demo-1" in out and f"{run.run_dir / 'state.db'}: targets.dr-demo-1.status: expected a status" in out
    assert "the previous generation of target 'dr-demo-1' was used" in out


def test_state_of_another_run_than_its_directory_is_refused(run: Interrupted, capsys: Capsys) -> None:
    """A run directory copied under another name: refused (exit 7), naming both run ids."""
    other = "20000101-000000-abcdef"
    copy = run.run_dir.parent / other
    shutil.copytree(run.run_dir, copy)
    try:
        code, _, err = call(capsys, "resume", other)
        assert code == 7, err
        assert f"the state is of run '{run.run_id}', but its directory is '{other}'" in err
    finally:
        shutil.rmtree(copy)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_run_lock_that_is_not_a_file_is_refused(run: Interrupted, capsys: Capsys, kind: str) -> None:
    """The run's lock is a directory or a FIFO: resume exits 7 naming the lock file."""
    lock = run.run_dir / "lock"
    lock.unlink(missing_ok=True)
    lock.mkdir() if kind == "directory" else os.mkfifo(lock)
    code, _, err = call(capsys, "resume", run.run_id)
    assert code == 7, err
    assert f"{lock}: the run's lock file is" in err
    lock.rmdir() if kind == "directory" else lock.unlink()


def test_state_directory_that_is_a_file_is_a_usage_error(
        run: Interrupted, capsys: Capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DRHOST_STATE_DIR naming a file: exit 2 naming it."""
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_text("x")
    monkeypatch.setenv("DRHOST_STATE_DIR", str(not_a_dir))
    code, _, err = call(capsys, "status", run.run_id)
    assert code == 2, err
    assert str(not_a_dir) in err and "directory" in err


def test_runs_directory_that_is_a_file_is_a_usage_error(
        run: Interrupted, capsys: Capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state dir whose runs/ is a file: exit 2 naming it."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "runs").write_text("x")
    monkeypatch.setenv("DRHOST_STATE_DIR", str(state))
    code, _, err = call(capsys, "status", run.run_id)
    assert code == 2, err
    assert f"{state / 'runs'}: expected the runs directory to be a directory, found a file" in err


def test_plan_that_cannot_be_read_is_refused(run: Interrupted, capsys: Capsys) -> None:
    """A checksummed plan whose steps are not steps: exit 7 naming the plan, not a KeyError."""
    edit_state(run.run_dir, lambda b: b["plan"].update(steps=[{"stage": "nowhere"}]))
    code, _, err = call(capsys, "status", run.run_id)
    assert code == 7, err
    assert f"{run.run_dir / 'state.db'}: plan: not a drhost plan" in err


# -- journals ----------------------------------------------------------------------------------------------------

def test_journal_with_malformed_lines_is_read_and_the_skips_counted(tmp_path: Path) -> None:
    """Non-object, malformed, deeply nested lines are skipped and counted; invalid UTF-8 is replaced, not fatal."""
    journal = tmp_path / "events.jsonl"
    journal.write_bytes(b'{"event": "a"}\n[1]\n42\nnot json\n' + deep(50_000) + b'\n{"event": "b\xff"}\n{"event": "c"')
    skips = JournalSkips()
    events = list(iter_journal(journal, skips))
    assert [e["event"] for e in events] == ["a", "b\ufffd"]
    assert skips.lines == 4 and skips.torn_tail
    assert skips.describe(journal) == f"{journal}: 4 malformed lines skipped, a torn last line ignored"


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_journal_that_is_not_a_file_is_refused_without_hanging(run: Interrupted, capsys: Capsys, kind: str,
                                                                 tmp_path: Path) -> None:
    """A journal that is a directory or a FIFO: report exits 7 naming it, and never blocks."""
    journal = run.run_dir / "events.jsonl"
    journal.unlink()
    journal.mkdir() if kind == "directory" else os.mkfifo(journal)
    started = time.monotonic()
    code, _, err = call(capsys, "report", run.run_id, "--out", str(tmp_path / "report.html"))
    assert time.monotonic() - started < 30
    assert code == 7, err
    assert f"{journal}: expected the journal to be a regular file" in err


def test_report_says_its_events_are_incomplete_when_journal_lines_were_skipped(
        run: Interrupted, capsys: Capsys, tmp_path: Path) -> None:
    """Malformed journal lines do not stop the report, and the page says how many events it could not read."""
    journal = run.run_dir / "events.jsonl"
    with journal.open("ab") as handle:
        handle.write(b"[1]\nnot json\n")
    out = tmp_path / "report.html"
    code, _, err = call(capsys, "report", run.run_id, "--out", str(out))
    assert code == 0, err
    assert f"{journal}: 2 malformed lines skipped" in out.read_text()


# -- resume re-checks what it relies on ----------------------------------------------------------------------

@pytest.fixture
def own_package(run: Interrupted, tmp_path: Path) -> Path:
    """A copy of the run's package that the test may change, recorded in the run's state."""
    package = tmp_path / "drproduct-2.0.0.tar.gz"
    shutil.copyfile(read_state(run.run_dir)["package"]["local_path"], package)
    edit_state(run.run_dir, lambda b: b["package"].update(local_path=str(package)))
    return package


def test_resume_refuses_a_missing_package(run: Interrupted, capsys: Capsys, own_package: Path) -> None:
    """The verified package is gone: resume exits 7 naming it and saying it is missing."""
    own_package.unlink()
    code, _, err = call(capsys, "resume", run.run_id)
    assert code == 7, err
    assert f"package {own_package}: missing" in err


def test_resume_refuses_a_package_of_another_size(run: Interrupted, capsys: Capsys, own_package: Path) -> None:
    """The package grew since it was verified: resume exits 7 naming both sizes."""
    size = own_package.stat().st_size
    with own_package.open("ab") as handle:
        handle.write(b"x")
    code, _, err = call(capsys, "resume", run.run_id)
    assert code == 7, err
    assert f"package {own_package}: changed since it was verified: size {size + 1} bytes, was {size}" in err


def test_resume_refuses_a_package_with_other_bytes(run: Interrupted, capsys: Capsys, own_package: Path) -> None:
    """Same size, other bytes: resume exits 7 naming the digest it found and the one verified."""
    recorded = read_state(run.run_dir)["package"]["sha256"]
    data = bytearray(own_package.read_bytes())
    data[-1] ^= 0xFF
    own_package.write_bytes(bytes(data))
    code, _, err = call(capsys, "resume", run.run_id)
    assert code == 7, err
    assert f"package {own_package}: changed since it was verified: sha256" in err and f"was {recorded}" in err


@pytest.mark.parametrize(("change", "named"), [
    (lambda b: b["config"]["run"].update(forks="many"), "[config] run.forks"),
    (lambda b: b["config"]["run"].update(no_such_key=1), "no_such_key"),
], ids=["wrong-type", "unknown-key"])
def test_resume_refuses_a_stored_config_that_no_longer_validates(
        run: Interrupted, capsys: Capsys, change: Callable[[dict[str, Any]], None], named: str) -> None:
    """The run's stored config fails today's schema: resume and rollback exit 7 naming state.db and the key."""
    edit_state(run.run_dir, change)
    for command in ("resume", "rollback"):
        code, _, err = call(capsys, command, run.run_id)
        assert code == 7, err
        assert "stored config no longer validates" in err
        assert f"{run.run_dir / 'state.db'}: " in err and named in err


def test_resume_refuses_while_the_runs_controller_is_alive(run: Interrupted, capsys: Capsys) -> None:
    """The state names a live controller on this host (a copy resumed beside it): exit 7, and nothing of it
    is killed."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        started = psutil.Process(sleeper.pid).create_time()
        edit_state(run.run_dir, lambda b: b.update(controller={"host": os.uname().nodename, "pid": sleeper.pid,
                                                            "started": started}))
        code, _, err = call(capsys, "resume", run.run_id)
        assert code == 7, err
        assert f"run {run.run_id} is being driven by drhost pid {sleeper.pid} on this host" in err
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_real_subprocess_prints_one_line_and_no_traceback(run: Interrupted, tmp_path: Path) -> None:
    """Through the real command, a corrupt state is one error line on stderr, exit 7."""
    set_generations(run.run_dir, "run", "", deep(200_000).decode(), deep(200_000).decode())
    proc = subprocess.run([sys.executable, "-m", "drhost", "resume", run.run_id], capture_output=True, text=True,
                          timeout=120, env={**os.environ}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 7
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("drhost: error:") == 1 and "nested too deeply" in proc.stderr


# -- random input: only StateError ever escapes ------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30)
KEYS = st.sampled_from(["run_id", "status", "config", "package", "plan", "targets", "rollout", "created"])
BODIES = st.dictionaries(KEYS, JSON, max_size=8)


def open_every_way(run_dir: Path) -> None:
    """RunState.open, complete or not, and the plan read from it: a StateError or a state, nothing else."""
    for complete in (False, True):
        try:
            state = RunState.open(run_dir, complete=complete)
        except StateError as exc:
            assert str(exc)
            continue
        with contextlib.suppress(StateError):
            recorded_plan(state)
        state.close()


@contextlib.contextmanager
def run_directory() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "20261205-000000-abcdef"
        run_dir.mkdir()
        yield run_dir


def read_format1_dir(newest: bytes, previous: bytes | None) -> None:
    with run_directory() as run_dir:
        (run_dir / "state.json").write_bytes(newest)
        if previous is not None:
            (run_dir / "state.json.1").write_bytes(previous)
        open_every_way(run_dir)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.none() | st.binary(max_size=200))
def test_random_bytes_never_escape_as_anything_but_state_error(newest: bytes, previous: bytes | None) -> None:
    """Random bytes as the state database, or as both generations of a format-1 state.json: RunState.open
    raises StateError or succeeds, nothing else."""
    read_format1_dir(newest, previous)
    with run_directory() as run_dir:
        (run_dir / "state.db").write_bytes(newest)
        open_every_way(run_dir)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES, st.sampled_from(["20261205-000000-abcdef", "other"]))
def test_random_checksummed_structures_never_escape_as_anything_but_state_error(
        body: dict[str, Any], run_id: str) -> None:
    """Random structures in a valid, checksummed format-1 envelope: RunState.open and plan() raise only
    StateError."""
    body.setdefault("run_id", run_id)
    read_format1_dir(encode_state(body), None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES, st.dictionaries(st.text(max_size=10), JSON, max_size=4),
       st.sampled_from(["20261205-000000-abcdef", "other"]))
def test_random_checksummed_records_never_escape_as_anything_but_state_error(
        run: dict[str, Any], targets: dict[str, Any], run_id: str) -> None:
    """Random run and target records, checksummed, in a drhost state database: RunState.open and plan()
    raise only StateError."""
    run.setdefault("run_id", run_id)
    run.pop("targets", None)
    with run_directory() as run_dir:
        StateStore.create(run_dir / "state.db", run, targets).close()
        open_every_way(run_dir)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=60) | JSON.map(lambda v: json.dumps(v).encode()), max_size=12))
def test_random_journal_lines_are_read_or_counted_as_skipped(lines: list[bytes]) -> None:
    """Random journal lines: iter_journal yields objects only, counts the rest, and raises nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        journal = Path(tmp) / "events.jsonl"
        journal.write_bytes(b"\n".join(lines))
        skips = JournalSkips()
        events = list(iter_journal(journal, skips))
        assert all(isinstance(e, dict) for e in events)
        assert len(events) + skips.lines + int(skips.torn_tail) <= max(len(b"\n".join(lines).split(b"\n")), 1)
