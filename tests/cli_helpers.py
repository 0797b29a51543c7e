"""Helpers for the host's tests: CLI output, processes left behind, and a probe of a target's real state."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CLI_TIMEOUT_S = 240


def pids_under(path: Path) -> list[int]:
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

    def daemon_namespace_pid(self) -> int | None:
        """The daemon's pid when it runs in another network namespace than ours (a host behind a bastion)."""
        try:
            pid = int((self.root / "run" / "drproductd.pid").read_text().split()[0])
            theirs = os.readlink(f"/proc/{pid}/ns/net")
        except (OSError, ValueError, IndexError):
            return None
        return pid if theirs != os.readlink("/proc/self/ns/net") else None

    def health(self) -> dict[str, Any] | None:
        pid = self.daemon_namespace_pid()
        if pid is not None:
            # Its loopback is its namespace's: ask from there, with the same request.
            ask = ("import json,sys,urllib.request,urllib.error\n"
                   "try:\n r=urllib.request.urlopen(sys.argv[1],timeout=5)\nexcept urllib.error.HTTPError as e:\n r=e\n"
                   "except OSError:\n sys.exit(3)\nsys.stdout.write(r.read().decode())")
            done = subprocess.run(["nsenter", "--target", str(pid), "--net", "--", sys.executable, "-I", "-S", "-c",
                                   ask, f"http://127.0.0.1:{self.port()}/health"], capture_output=True, text=True,
                                  timeout=30)
            return None if done.returncode != 0 else dict(json.loads(done.stdout))
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


def whole_version(root: Path, seed_jobs: list[tuple[Any, ...]]) -> str:
    """``2.0.0`` or ``1.0.0`` when every part of the target agrees on it, else what is mixed.

    Read from the target itself: the release ``current`` points at, the running daemon's answer, the
    catalog's schema and tables, every seed job, and the licence series.
    """
    probe = TargetProbe(root)
    found: dict[str, Any] = {}
    try:
        found["current"] = probe.current_version
    except OSError as exc:
        found["current"] = f"unreadable: {exc}"
    health = probe.health()
    found["daemon"] = None if health is None else (health.get("status"), health.get("version"))
    found["schema"] = probe.schema()
    found["replicas_table"] = "replicas" in probe.tables()
    found["jobs_intact"] = probe.jobs() == seed_jobs
    expected = {
        "2.0.0": {"current": "2.0.0", "daemon": ("ok", "2.0.0"), "schema": 2, "replicas_table": True,
                  "jobs_intact": True},
        "1.0.0": {"current": "1.0.0", "daemon": ("ok", "1.0.0"), "schema": 1, "replicas_table": False,
                  "jobs_intact": True},
    }
    for version, whole in expected.items():
        if found == whole:
            return version
    return f"mixed: {found}"


def tree_digest(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under ``root`` (and ``root`` itself) with its type, mode and content hash: equal digests
    before and after a command mean the command changed nothing on that target."""
    import hashlib
    import stat

    found: dict[str, tuple[str, int, str]] = {}
    for path in [root, *sorted(root.rglob("*"))] if root.exists() else []:
        info = path.lstat()
        kind = "dir" if stat.S_ISDIR(info.st_mode) else "link" if stat.S_ISLNK(info.st_mode) else "file"
        body = (str(path.readlink()) if kind == "link" else
                hashlib.sha256(path.read_bytes()).hexdigest() if kind == "file" else "")
        found[str(path.relative_to(root))] = (kind, stat.S_IMODE(info.st_mode), body)
    return found
