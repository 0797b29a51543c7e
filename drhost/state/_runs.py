"""Run directories under the state dir: creation, lookup, locking and the run's state."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import RefusedError, StateError
from ._files import Journal, StateFile


def state_root() -> Path:
    """``$DRHOST_STATE_DIR``, else ``$XDG_STATE_HOME/drhost``, else ``~/.local/state/drhost``."""
    explicit = os.environ.get("DRHOST_STATE_DIR")
    if explicit:
        root = Path(explicit)
    else:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        root = Path(base) / "drhost"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def runs_dir() -> Path:
    path = state_root() / "runs"
    path.mkdir(exist_ok=True, mode=0o700)
    return path


def find_run(run_id: str | None) -> Path:
    """The run directory of ``run_id``, or the newest run when it is None."""
    base = runs_dir()
    if run_id:
        path = base / run_id
        if not (path / "state.json").exists() and not (path / "state.json.1").exists():
            raise StateError(f"no run {run_id!r} under {base}")
        return path
    runs = sorted(p for p in base.iterdir() if (p / "state.json").exists() or (p / "state.json.1").exists())
    if not runs:
        raise StateError(f"no runs under {base}")
    return runs[-1]


class RunLock:
    """An exclusive lock on a run directory, so that two controllers never drive one run."""

    def __init__(self, run_dir: Path) -> None:
        self._path = run_dir / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            raise RefusedError(f"run {self._path.parent.name} is in use by another drhost ({holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RunState:
    """The durable state of one run. Every change is on disk before the caller acts on it."""

    def __init__(self, run_dir: Path, body: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self._file = StateFile(run_dir / "state.json")
        self._body = body
        self._lock = threading.RLock()
        self.recovered_from: str | None = None

    @classmethod
    def create(cls, run_id: str, body: dict[str, Any]) -> RunState:
        run_dir = runs_dir() / run_id
        run_dir.mkdir(mode=0o700)
        state = cls(run_dir, {"run_id": run_id, **body})
        state.save()
        return state

    @classmethod
    def open(cls, run_dir: Path) -> RunState:
        body, problem = StateFile(run_dir / "state.json").read()
        state = cls(run_dir, body)
        state.recovered_from = problem
        return state

    @property
    def run_id(self) -> str:
        return str(self._body["run_id"])

    def journal(self) -> Journal:
        return Journal(self.run_dir / "events.jsonl")

    def save(self) -> None:
        with self._lock:
            self._file.write(self._body)

    @contextlib.contextmanager
    def mutate(self) -> Iterator[dict[str, Any]]:
        """Change the body and write it durably before returning to the caller."""
        with self._lock:
            yield self._body
            self._file.write(self._body)

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
