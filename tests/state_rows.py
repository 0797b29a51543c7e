"""A run's state as the tests see it on disk: the rows of ``state.db``, read and edited with plain sqlite3.

Read without drhost's code on purpose: what these helpers find is what any tool reading the documented layout
(docs/operator-guide.md, the run directory) finds. The edits are deliberate ones, with valid checksums, made
to show what drhost does with a state that verifies but says something it should not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STATE_DB = "state.db"


def _canonical(body: Any) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def database(run_dir: Path) -> Iterator[sqlite3.Connection]:
    """The run's database, opened by a connection of its own (closed after)."""
    db = sqlite3.connect(run_dir / STATE_DB, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def read_state(run_dir: Path) -> dict[str, Any]:
    """The run's state as one body (the run's row, with ``targets`` from the target rows and each target's
    ``steps`` from its step rows, named by the JSON pair [target, step]), newest generations."""
    with database(run_dir) as db:
        rows = db.execute("SELECT kind, name, body FROM record").fetchall()
    body: dict[str, Any] = {"targets": {}}
    steps = []
    for kind, name, text in rows:
        if kind == "run":
            body.update(json.loads(text))
        elif kind == "step":
            steps.append((*json.loads(name), json.loads(text)))
        else:
            body["targets"][name] = {"steps": {}, **json.loads(text)}
    for target, key, entry in steps:
        body["targets"][target]["steps"][key] = entry
    return body


def edit_state(run_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Both generations of every row replaced by ``change`` applied to the state, with valid checksums:
    no good generation is left to fall back to."""
    body = read_state(run_dir)
    change(body)
    targets = body.pop("targets", {})
    with database(run_dir) as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM record")
        rows = [("run", "", body)]
        for target, record in targets.items():
            if not isinstance(record, dict) or not isinstance(record.get("steps", {}), dict):
                rows.append(("target", target, record))  # a broken record, kept whole where drhost will find it
                continue
            rows.append(("target", target, {key: value for key, value in record.items() if key != "steps"}))
            rows.extend(("step", _canonical([target, key]), entry) for key, entry in record.get("steps", {}).items())
        for kind, name, row in rows:
            text = _canonical(row)
            db.execute("INSERT INTO record VALUES (?, ?, ?, ?, ?, ?)", (kind, name, text, _sha256(text), text,
                                                                        _sha256(text)))
        db.execute("COMMIT")


def set_generations(run_dir: Path, kind: str, name: str, newest: Any, previous: Any = None, *,
                    checksummed: bool = True) -> None:
    """One row's generations set to ``newest`` and ``previous`` (text as it is, anything else as JSON; None
    leaves the previous generation as it is); ``checksummed`` gives them valid checksums, else mismatching ones."""
    def encoded(value: Any) -> tuple[Any, str]:
        text = value if isinstance(value, (str, bytes)) else _canonical(value)
        digest = _sha256(text if isinstance(text, str) else text.decode("latin-1"))
        return text, digest if checksummed else "0" * 64

    with database(run_dir) as db:
        db.execute("UPDATE record SET body = ?, checksum = ? WHERE kind = ? AND name = ?", (*encoded(newest), kind,
                                                                                           name))
        if previous is not None:
            db.execute("UPDATE record SET previous = ?, previous_checksum = ? WHERE kind = ? AND name = ?",
                       (*encoded(previous), kind, name))


def generations(run_dir: Path, kind: str, name: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The newest and the previous generation of one row."""
    with database(run_dir) as db:
        newest, previous = db.execute("SELECT body, previous FROM record WHERE kind = ? AND name = ?",
                                      (kind, name)).fetchone()
    return json.loads(newest), (json.loads(previous) if previous is not None else None)
