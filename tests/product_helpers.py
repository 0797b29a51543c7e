"""Shared helpers for the drproduct tests (imported explicitly; conftest.py belongs to someone else)."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from drhost.demo import install
from drhost.packaging import build_package, read_package

TOOL_TIMEOUT = 60


def build_all(out_dir: Path) -> dict[str, Path]:
    return {v: build_package(v, out_dir) for v in ("1.0.0", "2.0.0")}


def tool(root: Path, name: str, *args: str, release: str | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a product tool the way a plugin does: the executable itself, list argv, no shell."""
    base = root / "releases" / release if release else root / "current"
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([str(base / "bin" / name), "--root", str(root), *args], capture_output=True,
                          text=True, timeout=TOOL_TIMEOUT, env=full_env, check=False)


def tool_json(root: Path, name: str, *args: str, release: str | None = None) -> Any:
    proc = tool(root, name, *args, release=release)
    assert proc.returncode == 0, f"{name} {args}: exit {proc.returncode}: {proc.stderr}"
    return json.loads(proc.stdout)


def add_release(root: Path, package: Path) -> None:
    """Unpack another release next to the installed one, as a plugin stages an upgrade."""
    version = read_package(package).version
    install._extract_payload(package, root / "releases" / version)


def switch_current(root: Path, version: str) -> None:
    install._switch_current(root, version)


def daemon_pids(root: Path) -> list[int]:
    """Every live drproductd of this root, found through /proc (independent of pid files)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and any(a.endswith(b"drproductd") for a in argv) and str(root).encode() in argv:
            found.append(int(entry.name))
    return found


def proc_gone(pid: int) -> bool:
    """True when /proc no longer shows pid as a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def kill_leftovers(root: Path) -> list[int]:
    left = daemon_pids(root)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(proc_gone(p) for p in left):
        time.sleep(0.05)
    return left


@contextmanager
def product_root(tmp_path: Path, package: Path, seed_jobs: int = 200) -> Iterator[Path]:
    """A freshly installed (not started) root; whatever daemon it gets is stopped at the end."""
    root = tmp_path / "R"
    # A copy of one golden install per worker (tmp_path's parent is the worker's base temp directory).
    install.install_from_golden(package, root, install.free_port(), golden_dir=tmp_path.parent / "golden",
                                seed_jobs=seed_jobs)
    try:
        yield root
    finally:
        if (root / "current").exists():
            tool(root, "drproductctl", "stop", "--timeout", "5")
        kill_leftovers(root)


def catalog(root: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(root / "data" / "catalog.db")
    conn.row_factory = sqlite3.Row
    return conn


def rows(root: Path, sql: str) -> list[dict[str, Any]]:
    conn = catalog(root)
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def repack(src: Path, dst: Path, *, edit_manifest: Callable[[dict[str, Any]], None] | None = None,
           replace: dict[str, bytes] | None = None, drop: tuple[str, ...] = (),
           extra: dict[str, bytes] | None = None) -> Path:
    """Copy a package, changing the manifest or members, to produce broken packages on purpose."""
    replace, extra = replace or {}, extra or {}
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dst, "w:gz") as tout:
        for member in tin:
            if member.name in drop:
                continue
            fh = tin.extractfile(member)
            data = fh.read() if fh else b""
            if member.name == "manifest.json" and edit_manifest:
                manifest = json.loads(data)
                edit_manifest(manifest)
                data = json.dumps(manifest).encode()
            data = replace.get(member.name, data)
            member.size = len(data)
            tout.addfile(member, io.BytesIO(data))
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tout.addfile(info, io.BytesIO(data))
    return dst
