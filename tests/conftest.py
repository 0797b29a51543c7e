"""Shared fixtures: an isolated state dir, the drhost CLI as a real subprocess, target inspection."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CLI_TIMEOUT_S = 240


def _pids_under(path: Path) -> list[int]:
    """Processes whose command line mentions ``path`` (the demo's daemons live there)."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private DRHOST_STATE_DIR; afterwards no process may be left running from it."""
    path = tmp_path / "state"
    path.mkdir()
    monkeypatch.setenv("DRHOST_STATE_DIR", str(path))
    monkeypatch.setenv("DRHOST_INSTANT_RETRIES", "1")
    yield path
    for pid in _pids_under(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def leftover_processes() -> Callable[[Path], list[int]]:
    return _pids_under


@pytest.fixture
def drhost(state_dir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real ``drhost`` command (``python -m drhost``) with the test's state dir."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT_S,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "DRHOST_STATE_DIR": str(state_dir), "DRHOST_INSTANT_RETRIES": "1", **(env or {})}
        return subprocess.run([sys.executable, "-m", "drhost", *args], capture_output=True, text=True,
                              timeout=timeout, env=full_env, input=input, stdin=None if input else subprocess.DEVNULL)

    return run


def run_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The final JSON object a ``--json`` run printed on stdout."""
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"no JSON on stdout ({exc}); exit {proc.returncode}; stderr:\n{proc.stderr[-3000:]}") from None
    return data


class TargetProbe:
    """Reads a target's real state (files, SQLite, daemon), never drhost's own records."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def current_version(self) -> str:
        return (self.root / "current" / "VERSION").read_text().strip()

    def port(self) -> int:
        import configparser

        parser = configparser.ConfigParser()
        parser.read(self.root / "etc" / "drproduct.ini")
        return parser.getint("service", "port")

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port()}/health", timeout=5) as response:
                data: dict[str, Any] = json.load(response)
                return data
        except urllib.error.HTTPError as exc:
            degraded: dict[str, Any] = json.load(exc)
            return degraded
        except OSError:
            return None

    def schema(self) -> int:
        with sqlite3.connect(self.root / "data" / "catalog.db") as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    def jobs(self) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.root / "data" / "catalog.db") as db:
            return db.execute("SELECT id, name, source_path, schedule FROM jobs ORDER BY id").fetchall()

    def tables(self) -> set[str]:
        with sqlite3.connect(self.root / "data" / "catalog.db") as db:
            return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def demo_roots(state_dir: Path) -> list[Path]:
    """Install roots of every demo created under ``state_dir``."""
    return sorted((state_dir / "demo").glob("*/*/opt/drproduct"))


@pytest.fixture
def probes() -> Callable[[Path], list[TargetProbe]]:
    return lambda state_dir: [TargetProbe(root) for root in demo_roots(state_dir)]
