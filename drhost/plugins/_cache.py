"""The description cache: what a plugin declared, kept so that ``plugins list`` need not import it again.

Content-addressed: the key covers everything a description depends on (the plugin's files, its
entry point and distribution, where it is installed, the hook API and supervisor code, Python, and
the sandbox it was described in), so an entry is never stale — a change makes a new key. Only
successful descriptions are kept: a broken plugin is described again every time (it may have been
fixed, or have failed for a passing reason). An entry that cannot be read or parsed is ignored
and overwritten; the cache never makes discovery fail. A description read from the cache is
validated again exactly like one fresh from a worker.

Where: ``$DRHOST_CACHE_DIR``, else ``$XDG_CACHE_HOME/drhost``, else ``~/.cache/drhost``; the
directory is 0700 and each entry 0600, written atomically. A directory owned by another user, or
writable by others, is not used (anyone who can write it could hand drhost a description).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..state import cache_root
from ..supervisor import ISOLATION_KINDS

_FORMAT = 1
#: Where a description can have been made: a sandbox of a kind that runs workers.
_WORKER_KINDS = frozenset(name for name, kind in ISOLATION_KINDS.items() if kind.in_worker)
_LOG = logging.getLogger("drhost.plugins.cache")


def cache_key(parts: Mapping[str, Any]) -> str:
    """sha256 of the parts, as canonical JSON (sorted keys): equal inputs, equal key."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class CachedDescription:
    description: Mapping[str, Any]
    described_in: str


def _private_dir(path: Path) -> bool:
    """Make ``path`` (and its parent cache root) a 0700 directory of ours; False when it cannot be trusted."""
    try:
        # On a fresh account even ~/.cache may be missing: that is no reason to distrust the cache.
        path.parent.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    for directory in (path.parent, path):
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            info = directory.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                return False
            if stat.S_IMODE(info.st_mode) != 0o700:
                os.chmod(directory, 0o700)
        except OSError:
            return False
    return True


class DescriptionCache:
    """Descriptions by key under ``root/descriptions``; every failure is a miss, never an error."""

    def __init__(self, root: Path | None = None, *, enabled: bool = True) -> None:
        self.directory = (root or cache_root()) / "descriptions"
        self.enabled = enabled
        self._checked: bool | None = None
        self._lock = threading.Lock()

    def _usable(self) -> bool:
        with self._lock:
            if self._checked is None:
                self._checked = self.enabled and _private_dir(self.directory)
                if self.enabled and not self._checked:
                    _LOG.warning("description cache %s is not used: not a private directory of this user",
                                 self.directory)
            return self._checked

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str, plugin: str) -> CachedDescription | None:
        if not self._usable():
            return None
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
            if (data.get("format") != _FORMAT or data.get("key") != key or data.get("plugin") != plugin
                    or not isinstance(data.get("description"), dict)
                    or data.get("described_in") not in _WORKER_KINDS):
                return None
            return CachedDescription(description=data["description"], described_in=str(data["described_in"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as exc:
            # Corrupt or unreadable: a miss; the fresh description overwrites it.
            _LOG.info("description cache entry %s ignored: %s", self._path(key).name, exc)
            return None

    def put(self, key: str, plugin: str, description: Mapping[str, Any], described_in: str) -> None:
        if not self._usable():
            return
        body = {"format": _FORMAT, "key": key, "plugin": plugin, "described_in": described_in,
                "description": dict(description)}
        try:
            write_private(self._path(key), (json.dumps(body, sort_keys=True) + "\n").encode())
        except (OSError, TypeError, ValueError) as exc:
            _LOG.info("description cache entry for %s not written: %s", plugin, exc)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 (a temp file in the same directory, then rename).

    Not ``drhost.state.atomic_write``: that one is a failpoint of the run's checkpoints, and a cache or
    lock write must not shift the count of a crash drill.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
