"""drproduct-db: the SQLite catalog (schema = PRAGMA user_version) and its maintenance commands."""
from __future__ import annotations

import os
import sqlite3

from .common import Failure, Parser, Release, Root, UsageError, emit, fsync_dir, run_tool

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FAIL_ENV = "DRPRODUCT_FAIL_AFTER_STATEMENTS"
SCHEDULES = ("hourly", "daily", "weekly")


class InjectedFailure(Failure):
    """Raised on purpose (env DRPRODUCT_FAIL_AFTER_STATEMENTS) to prove migrations are atomic."""


def connect(path: str, must_exist: bool = True) -> sqlite3.Connection:
    if must_exist and not os.path.isfile(path):
        raise Failure(f"catalog {path} does not exist (run drproduct-db init)")
    # isolation_level=None: we issue BEGIN/COMMIT ourselves so a migration is one transaction.
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


def schema_of(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
    return [r[0] for r in rows]


def split_statements(sql: str) -> list[str]:
    """Statements of a migration file, one by one (executescript would commit behind our back)."""
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        if not buf and line.strip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        raise Failure(f"migration ends with an incomplete statement: {buf.strip()[:60]!r}")
    return out


class _Counter:
    def __init__(self) -> None:
        raw = os.environ.get(FAIL_ENV, "").strip()
        self.limit: int | None = int(raw) if raw.isdigit() else None
        self.done = 0

    def run(self, conn: sqlite3.Connection, sql: str, params: Any = ()) -> None:
        if self.limit is not None and self.done >= self.limit:
            raise InjectedFailure(f"injected failure after {self.done} statement(s) ({FAIL_ENV})")
        conn.execute(sql, params)
        self.done += 1


def _apply(conn: sqlite3.Connection, release: Release, current: int, target: int, seed: int = 0) -> list[str]:
    """Apply migrations current+1..target (seeding after schema 1 on init) inside ONE transaction."""
    available = dict(release.migrations())
    steps = list(range(current + 1, target + 1))
    missing = [n for n in steps if n not in available]
    if missing:
        raise Failure("release {} has no migration {}".format(release.version, ", ".join(map(str, missing))))
    counter = _Counter()
    applied = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for n in steps:
            with open(available[n], encoding="utf-8") as fh:
                for stmt in split_statements(fh.read()):
                    counter.run(conn, stmt)
            applied.append(os.path.basename(available[n]))
            if n == 1 and seed:
                # Seed at schema 1 so later migrations treat seeded jobs like any existing data.
                for i in range(1, seed + 1):
                    name = f"job-{i:04d}"
                    counter.run(conn, "INSERT INTO jobs (name, source_path, schedule) VALUES (?, ?, ?)",
                                (name, f"/srv/data/{name}", SCHEDULES[i % len(SCHEDULES)]))
        # PRAGMA user_version is transactional in SQLite: it commits or rolls back with the rest.
        counter.run(conn, f"PRAGMA user_version = {int(target)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return applied


def sha256_file(path: str) -> str:
    import hashlib  # only backups and restores checksum files

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def backup(src_path: str, out: str) -> dict[str, Any]:
    out = os.path.abspath(out)
    directory = os.path.dirname(out)
    os.makedirs(directory, exist_ok=True)
    # One fixed temp name per backup file, not mkstemp: a backup killed mid-copy (SIGKILL runs no cleanup) leaves
    # its partial copy under this name, and the next attempt removes it instead of adding a second stray file.
    tmp = os.path.join(directory, f".{os.path.basename(out)}.partial")
    for stale in (tmp, tmp + "-journal"):
        if os.path.lexists(stale):
            os.unlink(stale)
    try:
        src = connect(src_path)
        dst = sqlite3.connect(tmp)
        try:
            # The online backup API gives a consistent copy while the daemon keeps reading/writing.
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        _fsync_file(tmp)
        os.replace(tmp, out)
    except BaseException:
        for partial in (tmp, tmp + "-journal"):
            if os.path.lexists(partial):
                os.unlink(partial)
        raise
    digest = sha256_file(out)
    with open(out + ".sha256", "w", encoding="utf-8") as fh:
        fh.write(f"{digest}  {os.path.basename(out)}\n")
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(directory)
    return {"backup": out, "sha256": digest, "bytes": os.path.getsize(out)}


def restore(dst_path: str, src: str) -> dict[str, Any]:
    src = os.path.abspath(src)
    if not os.path.isfile(src):
        raise Failure(f"backup {src} does not exist")
    try:
        with open(src + ".sha256", encoding="utf-8") as fh:
            expected = fh.read().split()[0].lower()
    except (OSError, IndexError):
        raise Failure(f"checksum file {src}.sha256 missing or empty: refusing to restore") from None
    found = sha256_file(src)
    if found != expected:
        raise Failure(f"backup {src}: checksum mismatch, expected sha256 {expected}, found {found}: "
                      "refusing to restore")
    directory = os.path.dirname(dst_path)
    os.makedirs(directory, exist_ok=True)
    # A fixed temp name, as for backup: a restore killed mid-copy leaves one stray file that the next removes.
    tmp = os.path.join(directory, f".{os.path.basename(dst_path)}.restoring")
    for stale in (tmp, tmp + "-journal"):
        if os.path.lexists(stale):
            os.unlink(stale)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            for chunk in iter(lambda: inp.read(1 << 20), b""):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        conn = sqlite3.connect(tmp)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchone()[0]
            schema = schema_of(conn)
        except sqlite3.DatabaseError as exc:
            raise Failure(f"backup {src} is not a usable SQLite database ({exc})") from None
        finally:
            conn.close()
        if result != "ok":
            raise Failure(f"backup {src} fails integrity_check: {result}")
        # The restored catalog keeps the permissions of the one it replaces (created 0600 above).
        if os.path.exists(dst_path):
            os.chmod(tmp, os.stat(dst_path).st_mode & 0o7777)
        os.replace(tmp, dst_path)
    except BaseException:
        for partial in (tmp, tmp + "-journal"):
            if os.path.lexists(partial):
                os.unlink(partial)
        raise
    fsync_dir(directory)
    return {"restored": dst_path, "from": src, "sha256": found, "schema": schema}


def _main(argv: list[str], release_dir: str) -> int:
    parser = Parser(prog="drproduct-db")
    parser.add_argument("--root", required=True)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("version", "check", "count", "dump"):
        sub.add_parser(name)
    p_init = sub.add_parser("init")
    p_init.add_argument("--seed", type=int, default=0)
    p_backup = sub.add_parser("backup")
    p_backup.add_argument("--out", required=True)
    p_restore = sub.add_parser("restore")
    p_restore.add_argument("--from", dest="src", required=True)
    p_migrate = sub.add_parser("migrate")
    p_migrate.add_argument("--to", type=int, required=True)
    args = parser.parse_args(argv)
    root = Root(args.root)
    path = root.catalog_path()

    if args.cmd == "restore":
        emit(restore(path, args.src))
        return 0
    release = Release(release_dir)
    if args.cmd == "init":
        if args.seed < 0:
            raise UsageError(f"--seed: expected a count >= 0, found {args.seed}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        conn = connect(path, must_exist=False)
        if schema_of(conn) != 0 or tables(conn):
            raise Failure(f"catalog {path} already initialised (schema {schema_of(conn)})")
        applied = _apply(conn, release, 0, release.schema, seed=args.seed)
        emit({"schema": schema_of(conn), "applied": applied, "jobs": args.seed})
        return 0
    if args.cmd == "backup":
        emit(backup(path, args.out))
        return 0

    conn = connect(path)
    if args.cmd == "version":
        emit({"schema": schema_of(conn)})
    elif args.cmd == "check":
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        problems += [f"foreign key violation: {r[0]} row {r[1]} -> {r[2]}"
                     for r in conn.execute("PRAGMA foreign_key_check")]
        emit({"ok": not problems, "problems": problems, "schema": schema_of(conn)})
        return 1 if problems else 0
    elif args.cmd == "count":
        emit({t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables(conn)})
    elif args.cmd == "dump":
        emit({t: [dict(r) for r in conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid')] for t in tables(conn)})
    elif args.cmd == "migrate":
        current = schema_of(conn)
        if args.to == current:
            emit({"from": current, "to": current, "applied": []})
            return 0
        if args.to < current:
            raise Failure(f"catalog is at schema {current}; migrating down to {args.to} is not supported "
                          "(restore a backup)")
        if args.to > release.schema:
            raise Failure(f"release {release.version} ships migrations up to schema {release.schema}, "
                          f"asked for {args.to}")
        applied = _apply(conn, release, current, args.to)
        emit({"from": current, "to": schema_of(conn), "applied": applied})
    return 0


def main(argv: list[str], release_dir: str) -> int:
    return run_tool("drproduct-db", _main, argv, release_dir)
