"""Loopback ports for the demo's daemons that no other process on this machine is handed at the same time.

The OS picks a free port for ``bind(("127.0.0.1", 0))``, but the port is free again as soon as the probe socket
closes, and a second caller (another demo, another pytest-xdist worker) can be handed the same one before the
first daemon binds it. The product daemon would then refuse to start and a second sshd would fail while the
first answers in its place. A claim file per port, created exclusively, closes that window for every caller on
this machine; a claim older than ``CLAIM_TTL_S`` is stale (its daemon has bound the port or given up).
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from pathlib import Path

__all__ = ["free_port"]

CLAIM_TTL_S = 600.0
_ATTEMPTS = 64


def _claims_dir() -> Path:
    directory = Path(tempfile.gettempdir()) / f"drhost-port-claims-{os.geteuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


def _claim(path: Path) -> bool:
    """Create ``path`` exclusively; a stale claim is taken over once."""
    for _ in range(2):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return True
        except FileExistsError:
            try:
                stale = time.time() - path.stat().st_mtime > CLAIM_TTL_S
            except FileNotFoundError:
                continue
            if not stale:
                return False
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return False


def free_port() -> int:
    """A loopback port free right now and handed to no other caller on this machine in the last 10 minutes."""
    directory = _claims_dir()
    for _ in range(_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if _claim(directory / str(port)):
            return port
    raise OSError(f"no unclaimed loopback port after {_ATTEMPTS} tries (claims in {directory})")
