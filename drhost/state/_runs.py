"""Run directories under the state dir: creation, lookup, locking and the run's state."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import DrhostError, ExitCode, RefusedError, StateError, phrase, quote
from ._files import Journal, StateFile, fsync_dir
from ._model import TargetRecord
from ._store import RUN_ROW, STORE_FORMAT, StateStore, canonical, record_rows

#: The run's state: a SQLite database (drhost/state/_store.py). Runs written before it have ``state.json``
#: (format 1), read as they are and moved into a database by the first controller that writes them.
STATE_DB = "state.db"
LEGACY_STATE = "state.json"

#: The longest run id accepted; new_run_id() makes 22 characters, so this only stops abuse.
RUN_ID_MAX = 64
# What new_run_id() makes (``20261205-182313-a1b2c3``) and what any earlier drhost made, which were all
# letters, digits, ``-``, ``_`` and ``.``; a leading letter or digit rules out ``.``, ``..`` and options.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class BadRunId(DrhostError):
    """A run id on the command line that cannot name a run directory (a path, a control character, ...)."""

    exit_code = ExitCode.USAGE


class StateDirError(StateError):
    """The state directory itself is unusable: an operator setting (``DRHOST_STATE_DIR``) to fix."""

    exit_code = ExitCode.USAGE


def check_run_id(run_id: str) -> str:
    """``run_id`` if it can name a run directory; BadRunId saying what is wrong with it otherwise."""
    problem = None
    if len(run_id) > RUN_ID_MAX:
        problem = f"at most {RUN_ID_MAX} characters"
    elif "/" in run_id or "\\" in run_id or ".." in run_id:
        problem = "a name, not a path (no '/', no '..')"
    elif not _RUN_ID.fullmatch(run_id):
        problem = "letters, digits, '-', '_' and '.', starting with a letter or digit"
    if problem is not None:
        raise BadRunId.worded("run id {run}: expected {problem} (like 20261205-182313-a1b2c3)", run=quote(run_id),
                              problem=problem)
    return run_id


def _private_dir(path: Path, what: str, parents: bool = False) -> Path:
    try:
        path.mkdir(parents=parents, exist_ok=True, mode=0o700)
    except FileExistsError:
        pass  # a file, or a link to one, of that name: said below
    except OSError as exc:
        raise StateDirError.worded("{path}: {what} cannot be created ({why})", path=path, what=what,
                                   why=exc.strerror or exc) from None
    if not path.is_dir():
        raise StateDirError.worded("{path}: expected {what} to be a directory, found {found}", path=path, what=what,
                                   found=phrase("a broken link") if path.is_symlink() and not path.exists()
                                   else phrase("a file"))
    return path


def state_root() -> Path:
    """``$DRHOST_STATE_DIR``, else ``$XDG_STATE_HOME/drhost``, else ``~/.local/state/drhost``."""
    explicit = os.environ.get("DRHOST_STATE_DIR")
    if explicit:
        return _private_dir(Path(explicit), "the state directory (DRHOST_STATE_DIR)", parents=True)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return _private_dir(Path(base) / "drhost", "the state directory", parents=True)


CACHE_ENV = "DRHOST_CACHE_DIR"


def cache_root() -> Path:
    """``$DRHOST_CACHE_DIR``, else ``$XDG_CACHE_HOME/drhost``, else ``~/.cache/drhost``: what drhost learnt about
    this machine and its plugins, kept across runs and state directories (each user of it checks the
    directory before trusting it). Not created here."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "drhost"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def runs_dir() -> Path:
    return _private_dir(state_root() / "runs", "the runs directory")


def _has_state(path: Path) -> bool:
    return any((path / name).exists() for name in (STATE_DB, LEGACY_STATE, LEGACY_STATE + ".1"))


def find_run(run_id: str | None) -> Path:
    """The run directory of ``run_id``, or the newest run when it is None.

    Every command that takes a run id comes here, so the id is validated here, before it becomes a path.
    """
    if run_id is not None:
        check_run_id(run_id)
    base = runs_dir()
    if run_id:
        path = base / run_id
        if not _has_state(path):
            if path.is_dir():
                # The first checkpoint is written before any target is touched (orchestrator.create_run).
                raise StateError.worded("run {run} has no checkpoint: its controller stopped before writing the "
                                        "first one, before anything on a target was touched; nothing to resume, "
                                        "start the upgrade again", run=quote(run_id))
            raise StateError.worded("no run {run} under {path}", run=quote(run_id), path=base)
        return path
    # Only names a run id can have: a stray directory must not pass for the newest run.
    runs = sorted(p for p in base.iterdir() if _RUN_ID.fullmatch(p.name) and _has_state(p))
    if not runs:
        raise StateError.worded("no runs under {path}", path=base)
    return runs[-1]


class RunLock:
    """An exclusive lock on a run directory, so that two controllers never drive one run."""

    def __init__(self, run_dir: Path) -> None:
        self._path = run_dir / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            # O_NONBLOCK: a FIFO put where the lock belongs must not hang the open.
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            kind = "a directory" if self._path.is_dir() else "unusable"
            raise StateError.worded("{path}: the run's lock file is {kind} ({why}); remove it if no drhost is "
                                    "running run {run}", path=self._path, kind=kind, why=exc.strerror or exc,
                                    run=self._path.parent.name) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StateError.worded("{path}: the run's lock file is not a regular file; remove it if no drhost is "
                                    "running run {run}", path=self._path, run=self._path.parent.name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = "".join(c if c.isprintable() else "?" for c in os.read(fd, 200).decode(errors="replace").strip())
            os.close(fd)
            raise RefusedError.worded("run {run} is in use by another drhost ({holder})", run=self._path.parent.name,
                                      holder=holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def run_in_use(run_dir: Path) -> str | None:
    """Who drives the run right now (the holder of its lock, as it wrote itself), or None when no drhost does."""
    try:
        fd = os.open(run_dir / "lock", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held = os.read(fd, 200).decode(errors="replace").strip()
            return "".join(c if c.isprintable() else "?" for c in held) or "a drhost"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunState:
    """The durable state of one run. Every change is on disk before the caller acts on it.

    Stored as one row for the run's own part and one row per target (:class:`StateStore`): a change of one
    target writes that target's row, so a step's transition costs the same in a fleet of ten or of a thousand.
    """

    def __init__(self, run_dir: Path, body: dict[str, Any], store: StateStore | None) -> None:
        self.run_dir = run_dir
        self._body = body
        #: None while the run is still the ``state.json`` of an earlier drhost (until its first write).
        self._store = store
        self._lock = threading.RLock()
        #: Counts the texts taken under the lock, so that the store keeps the newest of a row (see commit()).
        self._taken = 0
        self.recovered_from: str | None = None

    @classmethod
    def create(cls, run_id: str, body: dict[str, Any]) -> RunState:
        run_dir = runs_dir() / run_id
        run_dir.mkdir(mode=0o700)
        body = {"run_id": run_id, **body}
        store = StateStore.create(run_dir / STATE_DB, _run_part(body), body["targets"])
        return cls(run_dir, body, store)

    @classmethod
    def open(cls, run_dir: Path, *, complete: bool = False) -> RunState:
        """The state of the run in ``run_dir``, from the newest usable generation of each record; StateError
        otherwise.

        A generation that verifies but lacks what drhost relies on counts as unusable, like a corrupt one;
        ``complete`` asks for everything driving or showing the run relies on (see :func:`check_body`).
        A state naming another run than its directory is refused: a copied or renamed run directory would
        let two controllers drive one run, each believing it holds the run's only lock.
        """
        path = run_dir / STATE_DB
        store: StateStore | None = None
        legacy = any((run_dir / name).exists() for name in (LEGACY_STATE, LEGACY_STATE + ".1"))
        if path.exists() or path.is_symlink() or not legacy:
            store = StateStore.open(path)
            try:
                run, targets, problem = store.read(lambda p, _, b: check_run_part(p, b, complete), check_target,
                                                   check_step)
            finally:
                # A reader holds no connection (and leaves no -wal behind); a controller's first write connects.
                store.close()
            body = {**run, "targets": targets}
        else:
            path = run_dir / LEGACY_STATE
            body, problem = StateFile(path).read(lambda p, b: check_body(p, b, complete))
        if body["run_id"] != run_dir.name:
            raise StateError.worded("{path}: the state is of run {run}, but its directory is {directory}: a copied "
                                    "or renamed run directory is refused; use the run's own directory",
                                    path=path, run=quote(body["run_id"]), directory=quote(run_dir.name))
        state = cls(run_dir, body, store)
        state.recovered_from = problem
        return state

    @property
    def path(self) -> Path:
        """The file the run's state is in (named in messages about it)."""
        return self.run_dir / (STATE_DB if self._store is not None else LEGACY_STATE)

    @property
    def run_id(self) -> str:
        return str(self._body["run_id"])

    def journal(self) -> Journal:
        return Journal(self.run_dir / "events.jsonl")

    def close(self) -> None:
        """Let go of the database connection (a controller's, at the end of its run: this folds the WAL into the
        database); a later change connects again."""
        with self._lock:
            if self._store is not None:
                self._store.close()

    def _storage(self) -> StateStore:
        """The run's database, made anew on the first write of a run of an earlier drhost: from its
        ``state.json`` (format 1), or from its database of format 2 (a target's steps inside its row).

        Only a controller writes, and a controller holds the run's lock: a reader (``drhost status``) never
        migrates. The database is complete before it appears (StateStore.create renames it over the old one);
        the old files are renamed aside after, so a kill in between leaves both, and the database is the one read.
        """
        if self._store is not None and self._store.format != STORE_FORMAT:
            self._store.close()
            self._store = None
        if self._store is None:
            self._store = StateStore.create(self.run_dir / STATE_DB, _run_part(self._body), self._body["targets"])
            for name in (LEGACY_STATE, LEGACY_STATE + ".1"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.run_dir / name, self.run_dir / (name + ".migrated"))
            fsync_dir(self.run_dir)
        return self._store

    @contextlib.contextmanager
    def mutate(self) -> Iterator[dict[str, Any]]:
        """Change the run's own part of the body (status, rollout, controller, …) and write it durably before
        returning to the caller; a target's record changes through :meth:`mutate_target`."""
        with self._lock:
            yield self._body
            text = canonical(_run_part(self._body))
            store, order = self._taken_for()
        store.commit([(RUN_ROW, text)], order)

    @contextlib.contextmanager
    def mutate_target(self, name: str, *, steps: Collection[str] | None = None) -> Iterator[TargetRecord]:
        """Change one target's record and write that record durably before returning to the caller.

        ``steps``: the keys of the only step entries the change may touch (``()``: none). The record's own
        row is encoded and written each time, each named step's row too; None (the default) encodes every
        step, which costs a long run's target O(steps), so the per-step paths name theirs. A step entry is never
        removed from a record (its row would stay).
        """
        with self._lock:
            record = self._body["targets"][name]
            yield record
            rows = [(row, canonical(body)) for row, body in record_rows(name, record, steps)]
            store, order = self._taken_for()
        # Committed outside the lock: other targets' threads read and change the body meanwhile instead of
        # waiting for this commit's fsync.
        store.commit(rows, order)

    def _taken_for(self) -> tuple[StateStore, int]:
        """The store and the order of a text just taken (call with the lock held)."""
        self._taken += 1
        return self._storage(), self._taken

    def target_names(self) -> list[str]:
        """The run's targets, sorted."""
        with self._lock:
            return sorted(self._body["targets"])

    @contextlib.contextmanager
    def reading_target(self, name: str) -> Iterator[TargetRecord]:
        """Look at one target's record without changing it (nothing is written)."""
        with self._lock:
            yield self._body["targets"][name]

    @contextlib.contextmanager
    def reading(self) -> Iterator[dict[str, Any]]:
        """Look at the body without changing it (nothing is written)."""
        with self._lock:
            yield self._body

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._body)

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return copy.deepcopy(self._body.get(key, default))


def _run_part(body: Mapping[str, Any]) -> dict[str, Any]:
    """The run's own row: everything but the targets, which have a row each."""
    return {key: value for key, value in body.items() if key != "targets"}


#: What a key of a run's state must hold (said in the operator's language when it does not).
_A_RUN_ID, _A_STATUS, _A_VERSION = phrase("a run id"), phrase("a status"), phrase("a version")
_AN_OBJECT, _A_LIST = phrase("an object"), phrase("a list")


def _expect(path: Path, where: str, value: Any, kind: type | tuple[type, ...], name: str) -> None:
    if not isinstance(value, kind) or isinstance(value, bool):
        found = phrase("nothing") if value is None else type(value).__name__
        raise StateError.worded("{path}: {where}: expected {expected}, found {found}", path=path, where=where,
                                expected=name, found=found)


def check_body(path: Path, body: Mapping[str, Any], complete: bool = True) -> None:
    """StateError naming the first key a run state lacks, among those drhost indexes without looking.

    ``complete``: also what driving or showing the run needs (config, package, plan); without it, only what
    any reader needs (run id, status, targets), and the others only when present.
    """
    check_run_part(path, body, complete)
    _expect(path, "targets", body.get("targets"), dict, _AN_OBJECT)
    for name, record in body["targets"].items():
        check_target(path, name, record)


def check_run_part(path: Path, body: Any, complete: bool = True) -> None:
    """:func:`check_body` for the run's own part (all but the targets)."""
    _expect(path, "run", body, dict, _AN_OBJECT)
    _expect(path, "run_id", body.get("run_id"), str, _A_RUN_ID)
    _expect(path, "status", body.get("status"), str, _A_STATUS)
    for key in ("config", "package", "plan"):
        if complete or key in body:
            _expect(path, key, body.get(key), dict, _AN_OBJECT)
    if complete or "run" in body.get("config", {}):
        _expect(path, "config.run", body["config"].get("run"), dict, _AN_OBJECT)
    if complete or "version" in body.get("package", {}):
        _expect(path, "package.version", body["package"].get("version"), str, _A_VERSION)
    for key in ("steps", "plugins"):
        if complete or key in body.get("plan", {}):
            _expect(path, f"plan.{key}", body["plan"].get(key), list, _A_LIST)
    rollout = body.get("rollout")
    if rollout is not None:
        _expect(path, "rollout", rollout, dict, _AN_OBJECT)
        _expect(path, "rollout.batches", rollout.get("batches"), list, _A_LIST)
        for index, batch in enumerate(rollout["batches"]):
            _expect(path, f"rollout.batches[{index}]", batch, dict, _AN_OBJECT)
            _expect(path, f"rollout.batches[{index}].targets", batch.get("targets"), list, _A_LIST)


def check_target(path: Path, name: str, record: Any) -> None:
    """:func:`check_body` for one target's record."""
    _expect(path, f"targets.{name}", record, dict, _AN_OBJECT)
    _expect(path, f"targets.{name}.status", record.get("status"), str, _A_STATUS)
    if "steps" in record:
        _expect(path, f"targets.{name}.steps", record["steps"], dict, _AN_OBJECT)
    if "errors" in record:
        _expect(path, f"targets.{name}.errors", record["errors"], list, _A_LIST)


def check_step(path: Path, name: str, entry: Any) -> None:
    """:func:`check_body` for one step's row (``name``: the row's, the JSON pair [target, step] the store has
    already taken apart once)."""
    target, key = json.loads(name)
    _expect(path, f"targets.{target}.steps.{key}", entry, dict, _AN_OBJECT)
    _expect(path, f"targets.{target}.steps.{key}.status", entry.get("status"), str, _A_STATUS)
