"""What a drproduct target looks like right now, so plugin-test can compare it before and after a step.

Exact where a step can do harm (file bytes, modes, symlink targets, catalog rows, the service, stray
processes) and blind to what changes on its own (logs, pid numbers, bytecode caches, SQLite page layout).
"""

from __future__ import annotations

import configparser
import hashlib
import http.client
import json
import os
import re
import sqlite3
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

SQLITE_MAGIC = b"SQLite format 3\x00"
SERVICE_KEY = "service:drproductd"
HEALTH_TIMEOUT_S = 2.0
# Long enough to wait out one daemon write, short enough that a wedged lock does not stall a test.
DB_BUSY_TIMEOUT_S = 1.0
PROCESS_KEY_CHARS = 200
HASH_CHARS = 12

_SIDECAR_SUFFIXES = ("-wal", "-shm", "-journal")
_DB_SUFFIXES = (":user_version", ":schema", ":error")


@dataclass(frozen=True)
class SnapshotDiff:
    """Keys that appeared, disappeared or changed fingerprint between two snapshots."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[tuple[str, str, str], ...]
    #: Fingerprint of every added key (as found later) and removed key (as found earlier), for messages.
    fingerprints: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False, kw_only=True)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def keys(self) -> frozenset[str]:
        return frozenset((*self.added, *self.removed, *(key for key, _, _ in self.changed)))

    def lines(self, limit: int = 8) -> list[str]:
        """One readable line per difference, at most ``limit`` of them and then how many were left out."""
        out = [_added_line(key, self.fingerprints.get(key, "")) for key in self.added]
        out += [f"changed {describe_key(key)}: {before} -> {after}" for key, before, after in self.changed]
        out += [f"removed {describe_key(key)}" for key in self.removed]
        if len(out) > limit:
            return [*out[:max(limit, 0)], f"… and {len(out) - max(limit, 0)} more"]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "added": [{"key": key, "after": self.fingerprints.get(key)} for key in self.added],
            "removed": [{"key": key, "before": self.fingerprints.get(key)} for key in self.removed],
            "changed": [{"key": key, "before": before, "after": after} for key, before, after in self.changed],
        }


@dataclass(frozen=True)
class Snapshot:
    """The state of the target under ``root``: key (what) -> short human-readable fingerprint (how it is)."""

    root: str
    entries: Mapping[str, str]

    def diff(self, later: Snapshot, *, only: Iterable[str] | None = None) -> SnapshotDiff:
        """How ``later`` differs from this snapshot; with ``only``, just those keys are compared."""
        before, after = self.entries, later.entries
        wanted = set(before) | set(after)
        if only is not None:
            # A str is an Iterable[str] of characters: almost surely one key meant as a list of one.
            wanted &= {only} if isinstance(only, str) else set(only)
        added = tuple(sorted(k for k in wanted if k in after and k not in before))
        removed = tuple(sorted(k for k in wanted if k in before and k not in after))
        changed = tuple((k, before[k], after[k]) for k in sorted(wanted)
                        if k in before and k in after and before[k] != after[k])
        fingerprints = {**{k: before[k] for k in removed}, **{k: after[k] for k in added}}
        return SnapshotDiff(added, removed, changed, fingerprints=fingerprints)


def take_snapshot(root: Path | str) -> Snapshot:
    """Files, SQLite catalogs, the drproductd service and processes running in ``root`` (missing root: no files)."""
    base = Path(root).absolute()
    entries: dict[str, str] = {}
    service_pid, entries[SERVICE_KEY] = _service(base)
    entries.update(_processes(base, service_pid))
    if base.is_dir():
        entries.update(_files(base))
    return Snapshot(root=str(base), entries=dict(sorted(entries.items())))


# ---- files -------------------------------------------------------------------------------------


def _walk(base: Path, rel: str = "") -> Iterator[tuple[str, os.DirEntry[str]]]:
    try:
        with os.scandir(base / rel if rel else base) as it:
            children = sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return  # removed while we walked: absent is the truth by the time we finish
    for entry in children:
        child = f"{rel}/{entry.name}" if rel else entry.name
        if _is_noise(child, entry):
            continue
        yield child, entry
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(base, child)


def _is_noise(rel: str, entry: os.DirEntry[str]) -> bool:
    name = entry.name
    if rel == ".drhost":
        return True  # drhost's own work dir: a run writes there while it is being checked
    if name == "__pycache__" and entry.is_dir(follow_symlinks=False):
        return True
    # Sidecars of SQLite come and go with connections; the database's logical content is compared instead.
    return name.endswith(".pyc") or name.endswith(_SIDECAR_SUFFIXES)


def _content_ignored(rel: str) -> bool:
    """Files whose content changes while nothing happens: the daemon's logs and pid numbers."""
    return rel.startswith("log/") or (rel.startswith("run/") and rel.count("/") == 1 and rel.endswith(".pid"))


def _files(base: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    for rel, entry in _walk(base):
        try:
            st = entry.stat(follow_symlinks=False)
            mode = f"mode {stat.S_IMODE(st.st_mode):04o}"
            if stat.S_ISLNK(st.st_mode):
                entries[f"link:{rel}"] = f"-> {os.readlink(entry.path)}"
            elif stat.S_ISDIR(st.st_mode):
                entries[f"dir:{rel}"] = mode
            elif not stat.S_ISREG(st.st_mode):
                entries[f"other:{rel}"] = f"{_kind(st.st_mode)} {mode}"
            elif _content_ignored(rel):
                entries[f"file:{rel}"] = "present"
            else:
                entries.update(_regular(entry.path, rel, st, mode))
        except FileNotFoundError:
            continue  # vanished between listing and looking: it is not there any more
    return entries


def _kind(st_mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "char device"),
                       (stat.S_ISBLK, "block device")):
        if test(st_mode):
            return name
    return "unknown type"


def _regular(path: str, rel: str, st: os.stat_result, mode: str) -> dict[str, str]:
    digest = hashlib.sha256()
    head = b""
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                if not head:
                    head = chunk[:len(SQLITE_MAGIC)]
                digest.update(chunk)
    except FileNotFoundError:
        raise  # vanished: the caller leaves it out, as if listed a moment later
    except OSError as exc:
        return {f"file:{rel}": f"unreadable ({exc.strerror}) {st.st_size} B {mode}"}
    fingerprint = f"sha256:{digest.hexdigest()[:HASH_CHARS]} {st.st_size} B {mode}"
    if head != SQLITE_MAGIC:
        return {f"file:{rel}": fingerprint}
    try:
        logical = _database(path)
    except sqlite3.Error as exc:
        return {f"file:{rel}": fingerprint, f"db:{rel}:error": _one_line(str(exc))}
    # The bytes of a database change with page layout (VACUUM, freelist) alone; its existence and mode do not.
    return {f"file:{rel}": f"sqlite {mode}", **{f"db:{rel}:{k}": v for k, v in logical.items()}}


def _database(path: str) -> dict[str, str]:
    # mode=ro, not immutable: the daemon may write while we read, and immutable would trust stale pages.
    conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=DB_BUSY_TIMEOUT_S,
                           isolation_level=None)
    try:
        # One read transaction, so every table is seen as of the same commit.
        conn.execute("BEGIN")
        found = {"user_version": str(conn.execute("PRAGMA user_version").fetchone()[0])}
        objects = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        schema = sorted(str(sql) for _, _, sql in objects if sql is not None)
        found["schema"] = "sha256:" + hashlib.sha256("\n".join(schema).encode()).hexdigest()[:HASH_CHARS]
        for kind, name, _ in sorted(objects, key=lambda o: str(o[1])):
            if kind == "table":
                found[f"table:{name}"] = _table(conn, str(name))
        conn.execute("COMMIT")
        return found
    finally:
        conn.close()


def _table(conn: sqlite3.Connection, name: str) -> str:
    quoted = '"' + name.replace('"', '""') + '"'
    try:
        try:
            cursor = conn.execute(f"SELECT * FROM {quoted} ORDER BY rowid")
        except sqlite3.OperationalError:
            # WITHOUT ROWID (and virtual) tables have no rowid; every column together is a total order.
            width = len(conn.execute(f"SELECT * FROM {quoted} LIMIT 0").description)
            cursor = conn.execute(f"SELECT * FROM {quoted} ORDER BY {', '.join(str(i + 1) for i in range(width))}")
        digest = hashlib.sha256()
        count = 0
        for row in cursor:
            # repr tells 1 from 1.0 from '1' from b'1', which a plain str() would merge.
            digest.update(repr(tuple(row)).encode() + b"\n")
            count += 1
    except sqlite3.Error as exc:
        return f"unreadable: {_one_line(str(exc))}"
    return f"{count} rows sha256:{digest.hexdigest()[:HASH_CHARS]}"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


# ---- service -----------------------------------------------------------------------------------


def _service(base: Path) -> tuple[int | None, str]:
    """(pid of the live daemon, its fingerprint); the pid stays out of the fingerprint, a restart is no change."""
    pid = _read_pid(_pid_file(base))
    if pid is None or not _alive(pid) or "drproductd" not in " ".join(_cmdline(pid)):
        return None, "stopped"
    body = _health(base)
    if body is None:
        return pid, "running (not answering)"
    return pid, (f"running version {body.get('version', '?')} schema {body.get('schema', '?')}"
                 f" status {body.get('status', '?')}")


def _pid_file(base: Path) -> Path:
    try:
        registration = json.loads((base / "etc" / "services" / "drproductd.json").read_text(encoding="utf-8"))
        named = registration["pid_file"]
    except (OSError, ValueError, TypeError, KeyError):
        return base / "run" / "drproductd.pid"
    return base / named if isinstance(named, str) and named else base / "run" / "drproductd.pid"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _health(base: Path) -> dict[str, Any] | None:
    parser = configparser.ConfigParser()
    try:
        parser.read(base / "etc" / "drproduct.ini", encoding="utf-8")
        port = parser.getint("service", "port")
    except (configparser.Error, ValueError, OSError):
        return None
    # http.client, not urllib: urllib would send a loopback request to an http_proxy from the environment.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HEALTH_TIMEOUT_S)
    try:
        conn.request("GET", "/health")
        body = json.loads(conn.getresponse().read().decode("utf-8"))  # a 503 (degraded) is JSON too
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()
    return body if isinstance(body, dict) else None


# ---- processes ---------------------------------------------------------------------------------


def processes_inside(base: Path | str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process that runs in or names the root, the caller and its parents
    excepted: what a step may have left behind."""
    spellings = {str(base), os.path.realpath(base)}
    # The root's path not followed by more of a file name: /x/R matches /x/R/bin and '/x/R', not /x/R2.
    mention = re.compile("|".join(re.escape(s) + r"(?![\w.-])" for s in sorted(spellings)))
    skip = _ancestry(os.getpid())
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip or not _alive(int(entry.name)):
            continue
        argv = _cmdline(int(entry.name))
        if not argv:
            continue  # kernel threads, or gone already
        command = " ".join(argv)
        if mention.search(command) or _inside(_cwd(int(entry.name)), spellings):
            found.append((int(entry.name), command))
    return found


def _processes(base: Path, service_pid: int | None) -> dict[str, str]:
    counts: dict[str, int] = {}
    for pid, command in processes_inside(base):
        if pid != service_pid:
            key = f"process:{command[:PROCESS_KEY_CHARS]}"
            counts[key] = counts.get(key, 0) + 1
    return {key: "running" if n == 1 else f"running x{n}" for key, n in counts.items()}


def _ancestry(pid: int) -> set[int]:
    """pid and every parent up to init: the process taking the snapshot is not something a step left."""
    seen: set[int] = set()
    while pid > 0 and pid not in seen:
        seen.add(pid)
        pid = _ppid(pid)
    return seen


def _stat_fields(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            # The command name in parentheses may contain spaces and ')'; fields follow the last ')'.
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _ppid(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else 0


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")
    except OSError:
        return ""


def _inside(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots if path)


# ---- messages ----------------------------------------------------------------------------------


def describe_key(key: str) -> str:
    """``db:data/catalog.db:table:jobs`` -> ``db data/catalog.db table jobs``."""
    kind, _, rest = key.partition(":")
    if kind == "db":
        if ":table:" in rest:
            path, _, table = rest.partition(":table:")
            return f"db {path} table {table}"
        for suffix in _DB_SUFFIXES:
            if rest.endswith(suffix):
                return f"db {rest[:-len(suffix)]} {suffix[1:]}"
    return f"{kind} {rest}" if rest else key


def _added_line(key: str, fingerprint: str) -> str:
    line = f"added {describe_key(key)}"
    if key.startswith("file:") and fingerprint.startswith("sha256:"):
        return f"{line} ({' '.join(fingerprint.split()[1:3])})"
    if key.startswith("link:"):
        return f"{line} {fingerprint}"
    if not fingerprint or key.startswith("dir:") or fingerprint in ("present", "running"):
        return line
    return f"{line} ({fingerprint})"


__all__ = ["Snapshot", "SnapshotDiff", "describe_key", "processes_inside", "take_snapshot"]
