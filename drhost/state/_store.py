"""The run state as one SQLite database in WAL mode: the run's own part, one row per target and one per step.

Why SQLite and not a file per target (docs/benchmarks.md, "Run state stores"): a change of one target costs
0.22 ms of controller CPU against 0.50 ms for a checksummed file of its own, flat in the fleet's size; a
commit is atomic across rows, so a run-level and a target-level change can never be half on disk; and a
reader (``drhost status`` during a run) sees a consistent snapshot without taking the run's lock.

Kept from the checkpoint files (drhost/state/_files.py): every row carries the SHA-256 of its body and its
previous generation, so a row edited by hand or damaged on disk is detected, and the previous generation is
used when the newest does not verify. ``synchronous=FULL``: a commit is on the disk before it returns.

A generation counts only when it verifies and passes the caller's check (the keys drhost relies on), as
``state.json`` generations did: a row whose newest generation is well formed but incomplete is read from the
previous one, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Phrase, StateError, joined, message_phrase, phrase
from ..failpoints import failpoint
from ._files import fsync_dir, open_regular

#: Raises StateError for a row that verifies but is unusable: (database path, row name, body).
RowCheck = Callable[[Path, str, Any], None]

#: The format of the database's rows (format 1 was the single ``state.json`` file). Format 2 kept a target's
#: steps inside its row, so every step's transition re-encoded and rewrote all of them (0.45 ms of controller
#: CPU a step at 50 steps, growing with each); format 3 gives each step a row of its own.
STORE_FORMAT = 3
#: The formats :meth:`StateStore.open` reads; a controller moves an older one to STORE_FORMAT before writing.
READABLE_FORMATS = (2, 3)
#: A row's key: its kind ("run", "target" or "step") and its name.
Row = tuple[str, str]
#: The row of the run's own part (config, package, plan, status, rollout, ...); a target's row is its name.
RUN_ROW: Row = ("run", "")


def target_row(name: str) -> Row:
    return ("target", name)


def step_row(target: str, key: str) -> Row:
    """The row of one step of one target: its name is the JSON pair (canonical), which no target or step name can
    fake."""
    return ("step", canonical([target, key]))


def record_rows(name: str, record: Any, only: Collection[str] | None = None) -> list[tuple[Row, Any]]:
    """A target's record as rows: the record without its steps, and each step in a row of its own (``only``: just
    the steps with these keys). A record or steps of another shape, which only a damaged state has, stay whole
    in the target's row for its check."""
    steps = record.get("steps", {}) if isinstance(record, Mapping) else None
    if not isinstance(steps, Mapping):
        return [(target_row(name), record)]
    keys = steps if only is None else [key for key in only if key in steps]
    return [(target_row(name), {key: value for key, value in record.items() if key != "steps"}),
            *((step_row(name, key), steps[key]) for key in keys)]

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE record (kind TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, checksum TEXT NOT NULL, "
    "previous TEXT, previous_checksum TEXT, PRIMARY KEY (kind, name))",
)


def canonical(body: Mapping[str, Any] | list[Any]) -> str:
    """The one text of ``body`` the checksum covers: sorted keys, no spaces, UTF-8 as it is."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class _Queued:
    """One :meth:`StateStore.commit` call waiting for a transaction."""

    rows: Sequence[tuple[Row, str]]
    order: int | None
    done: bool = False
    error: BaseException | None = None


class StateStore:
    """One run's state database. Thread-safe: one connection, used under one lock.

    :meth:`close` lets the connection go (a reader holds none once it has read; a controller lets it go when
    its run ends, which folds the WAL into the database); a later write connects again.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection, format: int = STORE_FORMAT) -> None:
        self.path = path
        #: The format of the rows as found (READABLE_FORMATS); a controller writes only STORE_FORMAT.
        self.format = format
        self._db: sqlite3.Connection | None = connection
        self._lock = threading.Lock()
        #: What each row last held, as written or read: a write of the same text is skipped (it would only turn
        #: the previous generation into a copy of the newest).
        self._written: dict[Row, str] = {}
        #: The ``order`` of what each row last committed (see :meth:`commit`).
        self._order: dict[Row, int] = {}
        #: Callers of :meth:`commit` whose rows are not committed yet, for the next transaction to take along.
        self._queue: list[_Queued] = []
        self._queue_lock = threading.Lock()

    # -- creating and opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, run: Mapping[str, Any], targets: Mapping[str, Mapping[str, Any]]) -> StateStore:
        """A new database at ``path`` (which must not exist) holding ``run`` and ``targets``, committed.

        Built under a temporary name and renamed into place once complete: a controller killed while creating
        it leaves no half-made database where a run's state belongs.
        """
        building = path.with_name(path.name + ".new")
        for leftover in (building, *(building.with_name(building.name + end) for end in ("-wal", "-shm"))):
            leftover.unlink(missing_ok=True)  # of a controller killed while building it
        # Created here, owner-only, before SQLite opens it: its -wal and -shm files take the database's mode.
        os.close(os.open(building, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        os.chmod(building, 0o600)
        db = cls._connect(building)
        try:
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("INSERT INTO meta VALUES ('format', ?)", (str(STORE_FORMAT),))
            rows = [(RUN_ROW, run), *(row for name, record in targets.items() for row in record_rows(name, record))]
            for (kind, name), body in rows:
                text = canonical(body)
                db.execute("INSERT INTO record (kind, name, body, checksum) VALUES (?, ?, ?, ?)",
                           (kind, name, text, _checksum(text)))
            db.execute("COMMIT")
        finally:
            # The last connection's close folds the WAL into the database file, so the rename moves all of it.
            db.close()
        os.rename(building, path)
        fsync_dir(path.parent)
        store = cls(path, cls._connect(path), STORE_FORMAT)
        store._written = {(kind, name): canonical(body) for (kind, name), body in rows}
        return store

    @classmethod
    def open(cls, path: Path) -> StateStore:
        """The database at ``path``; StateError naming it when it is not a drhost state database."""
        # Never let SQLite open a FIFO (it would hang) or a device put where the state belongs.
        try:
            os.close(open_regular(path))
        except FileNotFoundError:
            raise StateError.worded("{path}: missing", path=path) from None
        try:
            connection = cls._connect(path)
            tables = {row[0]: row[1] for row in connection.execute(
                "SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'trigger', 'view')")}
            version = connection.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() \
                if "meta" in tables else None
        except sqlite3.DatabaseError as exc:
            raise StateError.worded("{path}: not a drhost state database ({why})", path=path, why=str(exc)) from None
        # Exactly the tables drhost made: no trigger or view of someone else's runs when drhost writes.
        if sorted(tables) != ["meta", "record"] or [tables["meta"], tables["record"]] != list(_SCHEMA):
            connection.close()
            raise StateError.worded("{path}: not a drhost state database (its tables are not drhost's)", path=path)
        readable = {str(number): number for number in READABLE_FORMATS}
        if version is None or version[0] not in readable:
            connection.close()
            raise StateError.worded("{path}: expected a drhost state database of format {format}", path=path,
                                    format=" or ".join(map(str, READABLE_FORMATS)))
        return cls(path, connection, readable[version[0]])

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        # isolation_level None: transactions are begun and committed here, explicitly, one per change.
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        connection.execute("PRAGMA trusted_schema = OFF")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        return connection

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._connect(self.path)
        return self._db

    # -- reading --------------------------------------------------------------------------------------------
    def read(self, check_run: RowCheck | None = None, check_target: RowCheck | None = None,
             check_step: RowCheck | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]], str | None]:
        """The run's part, the targets' records (each with its steps, from their rows) and, when a row's newest
        generation was unusable and its previous one was used, why (else None). A generation is usable when it
        verifies against its checksum and passes the check for its kind of row. StateError when a row has no
        usable generation."""
        with self._lock:
            try:
                rows = self._connection().execute(
                    "SELECT kind, name, body, checksum, previous, previous_checksum FROM record").fetchall()
            except sqlite3.DatabaseError as exc:
                raise StateError.worded("{path}: cannot be read ({why})", path=self.path, why=str(exc)) from None
        run: dict[str, Any] | None = None
        targets: dict[str, dict[str, Any]] = {}
        steps: list[tuple[str, str, dict[str, Any]]] = []
        problems: list[str] = []
        for kind, name, text, checksum, previous, previous_checksum in rows:
            step: tuple[str, str] | None = None
            if kind == "run":
                where = phrase("the run")
                check = check_run
            elif kind == "step":
                step = self._step_name(name)
                where = phrase("step {step} of target {name}", step=repr(step[1]), name=repr(step[0]))
                check = check_step
            else:
                where = phrase("target {name}", name=repr(name))
                check = check_target
            body, newest_problem = self._usable(text, checksum, where, name, check)
            if newest_problem is not None:
                if previous is None:
                    raise StateError.worded("{why}. drhost will not guess the run's state.", why=newest_problem)
                body, previous_problem = self._usable(previous, previous_checksum, where, name, check)
                if previous_problem is not None:
                    raise StateError.worded("no usable generation of {where}: {newest}; its previous generation: "
                                            "{previous}. drhost will not guess the run's state.", where=where,
                                            newest=newest_problem, previous=previous_problem)
                problems.append(phrase("{why}; the previous generation of {where} was used", why=newest_problem,
                                       where=where))
            self._written[(kind, name)] = canonical(body)
            if kind == "run":
                run = body
            elif step is not None:
                steps.append((*step, body))
            elif kind == "target":
                targets[name] = body
        if run is None:
            raise StateError.worded("{path}: the run's own row is missing", path=self.path)
        for record in targets.values():
            # Format 2 kept the steps in the target's row; format 3 keeps them in rows of their own (which win).
            # Steps that are no object are left for the caller's check to name.
            record.setdefault("steps", {})
        for target, key, body in steps:
            held = targets[target]["steps"] if target in targets else None
            if not isinstance(held, dict):
                raise StateError.worded("{path}: step {step} belongs to target {name}, which the run does not have",
                                        path=self.path, step=repr(key), name=repr(target))
            held[key] = body
        return run, targets, (joined(problems) if problems else None)

    def _step_name(self, name: object) -> tuple[str, str]:
        """The target and the step a step row's name (see :func:`step_row`) stands for."""
        try:
            pair = json.loads(name) if isinstance(name, str) else None
        except ValueError:
            pair = None
        target, key = pair if isinstance(pair, list) and len(pair) == 2 else (None, None)
        if not isinstance(target, str) or not isinstance(key, str):
            raise StateError.worded("{path}: a step row is named {name}, not [target, step]: the database was "
                                    "modified or damaged", path=self.path, name=repr(name))
        return target, key

    def _usable(self, text: object, checksum: object, where: Phrase, name: str, check: RowCheck | None
                ) -> tuple[Any, str | None]:
        """The body of one generation of a row, or why it cannot be used."""
        if not isinstance(text, str) or not isinstance(checksum, str) or _checksum(text) != checksum:
            return None, phrase("{path}: {where}: checksum mismatch; the database was modified or damaged",
                                path=self.path, where=where)
        try:
            body = json.loads(text)
        except ValueError as exc:
            return None, phrase("{path}: {where}: not valid JSON ({why})", path=self.path, where=where, why=exc)
        except RecursionError:
            return None, phrase("{path}: {where}: JSON nested too deeply to be a drhost record", path=self.path,
                                where=where)
        if check is not None:
            try:
                check(self.path, name, body)
            except StateError as exc:
                return None, message_phrase(exc)
        if not isinstance(body, dict):
            return None, phrase("{path}: {where}: expected an object", path=self.path, where=where)
        return body, None

    # -- writing --------------------------------------------------------------------------------------------
    def write_run(self, body: Mapping[str, Any]) -> None:
        """Commit the run's own part (unless it is what the row already holds)."""
        self.commit([(RUN_ROW, canonical(body))])

    def write_target(self, name: str, record: Mapping[str, Any]) -> None:
        """Commit one target's record and each of its steps (rows holding that already are left alone); a new
        target or step gets a row."""
        self.commit([(row, canonical(body)) for row, body in record_rows(name, record)])

    def commit(self, rows: Sequence[tuple[Row, str]], order: int | None = None) -> None:
        """Commit rows given as their canonical text (rows whose text is what they hold are left alone); return
        once they are durable.

        ``order``: when the texts were taken (increasing). A caller that encodes under its own lock and
        commits after letting it go (so that no reader waits for an fsync) passes it: a row already committed
        from a later text keeps it, since that text holds this change too.

        Group commit: callers that arrive while a transaction is being made durable queue up, and the next one
        to hold the connection commits all of their rows in one transaction, so fifty targets finishing steps
        at once cost a few fsyncs, not fifty. Every caller still returns only after its own rows are committed;
        the failpoints are passed once per caller, so a crash test's counted kill lands the same way.
        """
        mine = _Queued(rows, order)
        with self._queue_lock:
            self._queue.append(mine)
        with self._lock:
            if not mine.done:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._commit_group(group)
        if mine.error is not None:
            raise mine.error

    def _commit_group(self, group: list[_Queued]) -> None:
        """One transaction for the queued callers' rows (call with ``_lock`` held); marks each done."""
        final: dict[Row, str] = {}
        orders: dict[Row, int] = {}
        members = 0
        for queued in group:
            changed = False
            for row, text in queued.rows:
                if (final.get(row, self._written.get(row)) != text
                        and (queued.order is None or queued.order > orders.get(row, self._order.get(row, -1)))):
                    changed = True
                    final[row] = text
                    if queued.order is not None:
                        orders[row] = queued.order
            members += changed
        try:
            if final:
                db = self._connection()
                db.execute("BEGIN IMMEDIATE")
                try:
                    for row, text in final.items():
                        # The newest generation becomes the previous one in the statement that writes the new.
                        updated = db.execute("UPDATE record SET previous = body, previous_checksum = checksum, "
                                             "body = ?, checksum = ? WHERE kind = ? AND name = ?",
                                             (text, _checksum(text), *row)).rowcount
                        if not updated:
                            db.execute("INSERT INTO record (kind, name, body, checksum) VALUES (?, ?, ?, ?)",
                                       (*row, text, _checksum(text)))
                    for _ in range(members):
                        failpoint("state.before_commit")
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                self._written.update(final)
                self._order.update(orders)
                for _ in range(members):
                    failpoint("state.committed")
        except BaseException as exc:
            for queued in group:
                queued.error = exc
            raise
        finally:
            for queued in group:
                queued.done = True
