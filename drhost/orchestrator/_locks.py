"""The run's hold on its targets: the lock on each target, kept fresh while the run drives it.

A target is locked before the run touches it and stays locked while it is anywhere between the old
and the new version — interrupted, aborted or with a failed rollback included — so that no other run
can start on a half-changed target. The lock is released when the target is whole again: succeeded,
up to date, or rolled back.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import Any

from ..transport import TargetSession, TransportError
from ._statuses import TargetStatus
from ._target_lock import LockOwner, TargetLock, TargetLocked

__all__ = ["WHOLE", "TargetLocks"]

#: Target statuses in which the target is whole again and its lock is given back.
WHOLE: tuple[TargetStatus, ...] = ("succeeded", "up_to_date", "rolled_back")


class TargetLocks:
    """Acquire, refresh and release the run's target locks."""

    def __init__(self, *, run_id: str, config: Mapping[str, Any], break_lock: bool) -> None:
        self._run_id = run_id
        self._stale_after_s = float(config["run"]["lock_stale_after_s"])
        self._break_lock = break_lock
        self._held: dict[str, TargetLock] = {}
        self._lost: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def acquire(self, target: str, session: TargetSession, root: str) -> tuple[LockOwner | None, str | None]:
        """Take ``target``'s lock: (the owner this replaced, None) or (None, why it could not be taken)."""
        lock = TargetLock(session, target=target, root=root, run_id=self._run_id,
                          stale_after_s=self._stale_after_s)
        try:
            previous = lock.acquire(break_lock=self._break_lock)
        except TargetLocked as exc:
            return None, str(exc)
        except TransportError as exc:
            return None, f"cannot reach {target} to lock it: {exc}"
        with self._lock:
            self._held[target] = lock
            if self._refresher is None:
                self._refresher = threading.Thread(target=self._refresh_all, name="target-locks", daemon=True)
                self._refresher.start()
        return previous, None

    def release(self, target: str) -> None:
        with self._lock:
            lock = self._held.pop(target, None)
        # Unreachable now: the lock stays and reads as stale later; never fail a finished target over it.
        if lock is not None:
            with contextlib.suppress(TransportError, TargetLocked):
                lock.release()

    def lost(self, target: str) -> str | None:
        """Why this run no longer holds ``target`` (someone broke its lock), or None."""
        with self._lock:
            return self._lost.get(target)

    def close(self) -> None:
        """Stop refreshing; the locks of targets that are not whole stay on them, owned by no live driver."""
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(5)
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for lock in held:
            lock.forget()

    def _refresh_all(self) -> None:
        # A quarter of the stale age: three refreshes may fail (a dropped link) before the lock looks stale.
        every = max(1.0, self._stale_after_s / 4)
        while not self._stop.wait(every):
            with self._lock:
                held = list(self._held.items())
            for target, lock in held:
                try:
                    lock.refresh()
                except TargetLocked as exc:
                    with self._lock:
                        self._held.pop(target, None)
                        self._lost[target] = str(exc)
                except TransportError:
                    continue  # unreachable for now; the next round tries again
