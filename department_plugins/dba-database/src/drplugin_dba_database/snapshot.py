"""What the catalog holds, in a form small enough for ``ctx.state``: per table its
row count, its columns and a digest of every row over those columns.

A digest over the columns seen before the migration proves every old row is still
there, unchanged, while the migration may add columns and tables.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from drhost_hookspecs import Context

from . import _target as t

Snapshot = dict[str, dict[str, Any]]


def digest(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row.get(c) for c in columns], separators=(",", ":"), default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def of_dump(dump: Mapping[str, Sequence[Mapping[str, Any]]]) -> Snapshot:
    snapshot: Snapshot = {}
    for table, rows in dump.items():
        columns = sorted({column for row in rows for column in row})
        snapshot[table] = {"count": len(rows), "columns": columns, "digest": digest(rows, columns)}
    return snapshot


def take(ctx: Context) -> Snapshot:
    return of_dump(t.db_json(ctx, "dump"))


def differences(before: Snapshot, dump: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Tables of ``before`` whose rows are missing or changed in ``dump`` (new columns ignored)."""
    problems = []
    for table, seen in before.items():
        rows = dump.get(table)
        if rows is None:
            problems.append(f"table {table} is gone")
            continue
        if len(rows) != seen["count"]:
            problems.append(f"table {table}: {len(rows)} rows, {seen['count']} before")
        # A table empty before has no columns to compare on: the count says it all.
        elif seen["columns"] and digest(rows, seen["columns"]) != seen["digest"]:
            problems.append(f"table {table}: rows changed")
    return problems
