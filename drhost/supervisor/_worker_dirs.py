"""The private working directories workers start in, and the removal of those a killed controller left.

A worker (and podman's conmon, which drops an ``oom`` file in its cwd after a memory kill) never starts in
the operator's directory. Each directory carries its controller's pid in its name, so that a later controller
can tell a directory of a live controller from one whose controller was killed before it could clean up.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile

import psutil

_PREFIX = "drhost-worker-"
_OWNED = re.compile(rf"^{_PREFIX}(\d+)-[A-Za-z0-9_]+$")


def make_worker_dir() -> str:
    """A new private (0700) directory for one worker, named after this controller's pid."""
    return tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")


def remove_stale_worker_dirs(root: str | None = None) -> list[str]:
    """Remove the worker directories of controllers that are gone; the names removed.

    Only directories this user owns, that are not symlinks, and whose controller pid is no longer alive: a
    live controller's workers keep their directories, and another user's names in a shared /tmp are never touched.
    """
    root = root if root is not None else tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    me = os.getuid()
    for name in names:
        match = _OWNED.match(name)
        if match is None or int(match.group(1)) == os.getpid() or psutil.pid_exists(int(match.group(1))):
            continue
        path = os.path.join(root, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != me:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            removed.append(name)
    return removed
