"""Durable files: atomic replace with fsync, checksummed state, an append-only journal."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StateError, joined, message_phrase, phrase
from ..events import Event, current_event_name

STATE_FORMAT = 1


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", name)
    # "", "." and ".." would name the directory itself or its parent, not a file in it.
    return "context" if cleaned.strip(".") == "" else cleaned


def write_private_json(directory: Path, name: str, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as ``directory/<name>.json`` (name sanitised), atomically and readable by the owner only.

    For the evidence a run keeps beside its state: timeout contexts, an inconsistent target's findings.
    """
    if not directory.is_dir():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{_safe_name(name)}.json"
    body = json.dumps(dict(data), indent=2, sort_keys=True, default=str, ensure_ascii=False) + "\n"
    atomic_write(path, body.encode("utf-8"), 0o600)
    # atomic_write creates the file with 0600 minus the umask; a stricter umask must not leave it unreadable.
    os.chmod(path, 0o600)
    return path


def _checksum(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(canonical).hexdigest()


def encode_state(body: dict[str, Any]) -> bytes:
    # The body is serialised once, in the canonical form the checksum covers, and the document is put together
    # around it: the state is written after every change, and for a fleet it is the controller's hottest path
    # (serialising twice, indented, tripled its cost).
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    checksum = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f'{{"body":{canonical},"checksum":"{checksum}","format":{STATE_FORMAT}}}\n'.encode()


def _what_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _unopenable(path: Path, exc: OSError) -> str:
    # A socket cannot even be opened: say what it is rather than the bare ENXIO.
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = stat.S_IFREG
    if not stat.S_ISREG(mode):
        return f"{path}: expected a regular file, found {_what_kind(mode)}"
    return f"{path}: cannot be opened ({exc.strerror or exc})"


def open_regular(path: Path) -> int:
    """A read-only descriptor of ``path``, which must be a regular file; StateError naming it otherwise
    (FileNotFoundError as it is). Opened with O_NONBLOCK and checked with fstat before anything reads it: a
    FIFO put where a state file belongs must never hang drhost."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StateError(_unopenable(path, exc)) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise StateError.worded("{path}: expected a regular file, found {kind}", path=path, kind=_what_kind(mode))
    return fd


def read_regular(path: Path) -> bytes:
    """The bytes of ``path``, which must be a regular file; StateError naming it otherwise.

    Opened with O_NONBLOCK and checked with fstat before any read: a FIFO put where a state file belongs must
    never hang drhost, and a directory or a device must give a message, not a traceback.
    """
    fd = open_regular(path)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise StateError.worded("{path}: cannot be read ({why})", path=path, why=exc.strerror or exc) from None
    finally:
        os.close(fd)


def decode_state(path: Path, data: bytes) -> dict[str, Any]:
    """Parse and verify a state document; raise StateError saying what is wrong."""
    try:
        document = json.loads(data)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, and an integer of absurd length
        raise StateError.worded("{path}: not valid JSON ({why}); the file is truncated or corrupt", path=path,
                                why=exc) from None
    except RecursionError:
        raise StateError.worded("{path}: JSON nested too deeply to be a drhost state document", path=path) from None
    if not isinstance(document, dict) or document.get("format") != STATE_FORMAT or "body" not in document:
        raise StateError.worded("{path}: expected a drhost state document of format {format}", path=path,
                                format=STATE_FORMAT)
    body = document["body"]
    try:
        checksum = _checksum(body)
    except (RecursionError, ValueError):
        raise StateError.worded("{path}: body cannot be checksummed; the file is not a drhost state document",
                                path=path) from None
    if checksum != document.get("checksum"):
        raise StateError.worded("{path}: checksum mismatch; the file was modified or partly written", path=path)
    if not isinstance(body, dict):
        raise StateError.worded("{path}: expected an object as body", path=path)
    return body


class StateFile:
    """``state.json`` plus its previous generation ``state.json.1``: the run state of format 1, which drhost
    before the state database wrote; read to resume such a run (drhost/state/_runs.py moves it into a
    database on the run's first write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.previous = path.with_name(path.name + ".1")

    def write(self, body: dict[str, Any]) -> None:
        if self.path.exists():
            # Keep the last good generation: a torn write of the new one falls back to it.
            os.replace(self.path, self.previous)
        atomic_write(self.path, encode_state(body))

    def read(self, check: Callable[[Path, dict[str, Any]], None] | None = None
             ) -> tuple[dict[str, Any], str | None]:
        """Return the body and, when the newest generation was unusable, why it was skipped.

        ``check`` raises StateError for a body that is well formed but unusable (keys missing, say); such a
        generation is skipped like a corrupt one, so that the previous generation is used if it is good.
        """
        problems: list[str] = []
        for candidate in (self.path, self.previous):
            try:
                body = decode_state(candidate, read_regular(candidate))
                if check is not None:
                    check(candidate, body)
                return body, ("; ".join(problems) or None)
            except FileNotFoundError:
                problems.append(phrase("{path}: missing", path=str(candidate)))
            except StateError as exc:
                problems.append(message_phrase(exc))
        raise StateError.worded("no usable state: {problems}. drhost will not guess the run's state.",
                                problems=joined(problems))


class Journal:
    """``events.jsonl``: one JSON object a line, appended and flushed as events happen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = event.json_line
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


@dataclass
class JournalSkips:
    """What a journal reader passed over, so that a report can say its events are incomplete."""

    lines: int = 0
    torn_tail: bool = False

    def describe(self, path: Path) -> str | None:
        """``events.jsonl: 3 malformed lines skipped`` or None when nothing was skipped."""
        parts = [f"{self.lines} malformed line{'s' if self.lines != 1 else ''} skipped"] if self.lines else []
        if self.torn_tail:
            parts.append("a torn last line ignored")
        return f"{path}: {', '.join(parts)}" if parts else None


def _open_journal(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StateError(_unopenable(path, exc).replace(": expected a", ": expected the journal to be a", 1)
                         ) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise StateError.worded("{path}: expected the journal to be a regular file, found {kind}", path=path,
                                kind=_what_kind(mode))
    return fd


def iter_journal(path: Path, skips: JournalSkips | None = None) -> Iterator[dict[str, Any]]:
    """The complete events of a journal, one at a time (a journal may be far larger than memory).

    A torn last line (crash mid-append) is ignored, and so is a line that is not a JSON object (malformed,
    too deeply nested, an array, a number): each is counted in ``skips``; invalid UTF-8 is replaced. A
    journal that is not a regular file (a directory, a FIFO) raises StateError before anything is read,
    and never blocks.
    """
    skips = skips if skips is not None else JournalSkips()
    with os.fdopen(_open_journal(path), "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                skips.torn_tail = True
                break
            try:
                # Replaced, not skipped: one bad byte in a plugin's message must not lose the whole event.
                event = json.loads(raw.decode("utf-8", errors="replace"))
            except (ValueError, RecursionError):
                skips.lines += 1
                continue
            if isinstance(event, dict):
                if isinstance(event.get("event"), str):
                    # A journal written by an earlier version: its readers see today's names.
                    event["event"] = current_event_name(event["event"])
                yield event
            else:
                skips.lines += 1


def read_journal(path: Path, skips: JournalSkips | None = None) -> list[dict[str, Any]]:
    """Every complete event of a journal, in a list; see :func:`iter_journal`."""
    return list(iter_journal(path, skips))
