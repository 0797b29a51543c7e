"""Is a target's install root there, before anything on the target is created under it?"""

from __future__ import annotations

from typing import Final

from ..transport import TargetSession, TransportError

#: The status a target whose root is missing gets: untouched, and resumable once the root is back.
MISSING_ROOT_STATUS: Final = "aborted"


def missing_root(session: TargetSession, target: str, root: str) -> str | None:
    """Why ``root`` is not a directory on the target, or None when it is (or cannot be checked now).

    The target lock, command logs and remote jobs all live under ``{root}/.drhost`` and are made with
    ``mkdir -p``: asked first, a mistyped or unmounted root would be created by drhost. A plain look-up
    (``lstat`` of ``root/.``, which follows a symlinked root and fails for a file) changes nothing."""
    try:
        if session.exists(root.rstrip("/") + "/."):
            return None
    except TransportError:
        return None  # the lock that comes next reports the unreachable target
    return (f"[precheck] install root {root} does not exist on {target} (or is not a directory); nothing was "
            f"created there. Fix [target:{target}] root, or mount the filesystem, then drhost resume RUN")
