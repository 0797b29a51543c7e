"""The run state as one SQLite database in WAL mode: the run's own part and one row per target.

Why SQLite and not a file per target (docs/benchmarks.md, "Run state stores"): a change of one target costs
0.22 ms of controller CPU against 0.50 ms for a checksummed file of its own, flat in the fleet's size; a
commit is atomic across rows, so a run-level and a target-level change can never be half on disk; and a
reader (``drhost status`` during a run) sees a consistent snapshot without taking the run's lock.

Kept from the checkpoint files (drhost/state/_files.py): every row carries the SHA-256 of its body and its
previous generation, so a row edited by hand or damaged on disk is detected, and the previous generation is
used when the newest does not verify. ``synchronous=FULL``: a commit is on the disk before it returns.

Not wired into :class:`~drhost.state.RunState` yet (issue 18): the run state is still ``state.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import StateError, joined, phrase
from ..failpoints import failpoint
from ._files import open_regular

#: The format of the database's rows (format 1 was the single ``state.json`` file).
STORE_FORMAT = 2
#: The row of the run's own part (config, package, plan, status, rollout, ...); a target's row is its name.
RUN_ROW = ("run", "")

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE record (kind TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, checksum TEXT NOT NULL, "
    "previous TEXT, previous_checksum TEXT, PRIMARY KEY (kind, name))",
)


def canonical(body: Mapping[str, Any]) -> str:
    """The one text of ``body`` the checksum covers: sorted keys, no spaces, UTF-8 as it is."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class StateStore:
    """One run's state database. Thread-safe: one connection, used under one lock."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection
        self._lock = threading.Lock()
        #: What each row last held, as written or read: a write of the same text is skipped (it would only turn
        #: the previous generation into a copy of the newest).
        self._written: dict[tuple[str, str], str] = {}

    # -- creating and opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, run: Mapping[str, Any], targets: Mapping[str, Mapping[str, Any]]) -> StateStore:
        """A new database at ``path`` (which must not exist) holding ``run`` and ``targets``, committed."""
        # Created here, owner-only, before SQLite opens it: its -wal and -shm files take the database's mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        os.chmod(path, 0o600)
        store = cls(path, cls._connect(path))
        with store._lock:
            db = store._db
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("INSERT INTO meta VALUES ('format', ?)", (str(STORE_FORMAT),))
            rows = [(RUN_ROW, run), *((("target", name), record) for name, record in targets.items())]
            for (kind, name), body in rows:
                text = canonical(body)
                db.execute("INSERT INTO record (kind, name, body, checksum) VALUES (?, ?, ?, ?)",
                           (kind, name, text, _checksum(text)))
                store._written[(kind, name)] = text
            db.execute("COMMIT")
        return store

    @classmethod
    def open(cls, path: Path) -> StateStore:
        """The database at ``path``; StateError naming it when it is not a drhost state database."""
        # Never let SQLite open a FIFO (it would hang) or a device put where the state belongs.
        os.close(open_regular(path))
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
        if version is None or version[0] != str(STORE_FORMAT):
            connection.close()
            raise StateError.worded("{path}: expected a drhost state database of format {format}", path=path,
                                    format=STORE_FORMAT)
        return cls(path, connection)

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
            self._db.close()

    # -- reading --------------------------------------------------------------------------------------------
    def read(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]], str | None]:
        """The run's part, the targets' records and, when a row's newest generation did not verify and its
        previous one was used, why (else None). StateError when a row has no generation that verifies."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT kind, name, body, checksum, previous, previous_checksum FROM record").fetchall()
            except sqlite3.DatabaseError as exc:
                raise StateError.worded("{path}: cannot be read ({why})", path=self.path, why=str(exc)) from None
        run: dict[str, Any] | None = None
        targets: dict[str, dict[str, Any]] = {}
        problems: list[str] = []
        for kind, name, text, checksum, previous, previous_checksum in rows:
            where = phrase("the run") if kind == "run" else phrase("target {name}", name=repr(name))
            body = self._verified(text, checksum)
            if body is None:
                body = self._verified(previous, previous_checksum)
                if body is None:
                    raise StateError.worded("{path}: {where}: no generation verifies (checksum mismatch); the "
                                            "database was modified or damaged. drhost will not guess the run's "
                                            "state.", path=self.path, where=where)
                problems.append(phrase("{path}: {where}: the newest generation does not verify, the previous "
                                       "one was used", path=self.path, where=where))
            self._written[(kind, name)] = canonical(body)
            if kind == "run":
                run = body
            elif kind == "target":
                targets[name] = body
        if run is None:
            raise StateError.worded("{path}: the run's own row is missing", path=self.path)
        return run, targets, (joined(problems) if problems else None)

    @staticmethod
    def _verified(text: object, checksum: object) -> dict[str, Any] | None:
        if not isinstance(text, str) or not isinstance(checksum, str) or _checksum(text) != checksum:
            return None
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):
            return None
        return body if isinstance(body, dict) else None

    # -- writing --------------------------------------------------------------------------------------------
    def write_run(self, body: Mapping[str, Any]) -> None:
        """Commit the run's own part (unless it is what the row already holds)."""
        self._write(RUN_ROW, body)

    def write_target(self, name: str, record: Mapping[str, Any]) -> None:
        """Commit one target's record (unless it is what its row already holds); a new target gets a row."""
        self._write(("target", name), record)

    def _write(self, row: tuple[str, str], body: Mapping[str, Any]) -> None:
        text = canonical(body)
        with self._lock:
            if self._written.get(row) == text:
                return
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                # The newest generation becomes the previous one in the same statement that writes the new.
                changed = db.execute("UPDATE record SET previous = body, previous_checksum = checksum, body = ?, "
                                     "checksum = ? WHERE kind = ? AND name = ?",
                                     (text, _checksum(text), *row)).rowcount
                if not changed:
                    db.execute("INSERT INTO record (kind, name, body, checksum) VALUES (?, ?, ?, ?)",
                               (*row, text, _checksum(text)))
                failpoint("state.before_commit")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._written[row] = text
        failpoint("state.committed")
