"""The status-check connection's manual reconnect (seed 4.6.1: 状态检查连接, 手动重连).

The status checks — the target's CPU, memory and disk IO while a step runs, the context of a timeout — use a
connection of their own. Once it is lost it is not reconnected by drhost: the run goes on (its steps have their
own connection), the loss is recorded in the target's state (``drhost status`` shows it) and said once, and the
connection comes back when the operator says so with ``drhost reconnect RUN [TARGET...]``. That command leaves a
request file in the run directory; the controller takes it up at its next status check.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import RefusedError
from ..events import EventName
from ..i18n import Translate
from ..state import RunState
from ..transport import TargetSession, TransportError

__all__ = ["REQUESTS_DIR", "StatusChecks", "ask_reconnect", "waiting_line"]

#: Where ``drhost reconnect`` leaves its requests, inside the run directory: one file per target.
REQUESTS_DIR = "reconnect"

_Emit = Callable[..., None]


def _identity(message: str) -> str:
    return message


def _request_file(run_dir: Path, target: str) -> Path:
    # Quoted: a target name is the operator's and must never name a path of its own.
    return run_dir / REQUESTS_DIR / urllib.parse.quote(target, safe="")


def ask_reconnect(run_dir: Path, target: str) -> Path:
    """Leave the operator's word for ``target`` (``drhost reconnect``); the request file's path."""
    folder = run_dir / REQUESTS_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    path = _request_file(run_dir, target)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"{time.time():.3f}\n")
    return path


def waiting_line(run_id: str, target: str, lost: object, t: Translate = _identity) -> str | None:
    """The operator's line for a target whose status-check connection waits for them (``lost``: the target
    record's ``status_check``), or None."""
    if not isinstance(lost, dict):
        return None
    at = time.strftime("%H:%M:%S", time.localtime(float(lost.get("lost_at", 0))))
    return t("status-check connection lost at {at} ({cause}); drhost waits for the operator to reconnect it: "
             "drhost reconnect {run_id} {target}").format(at=at, cause=lost.get("cause"), run_id=run_id,
                                                         target=target)


class StatusChecks:
    """Per target: notice a lost status-check connection, record it, and take up the operator's word."""

    def __init__(self, state: RunState, emit: _Emit) -> None:
        self._state = state
        self._emit = emit
        self._recorded: set[str] = set()

    def close(self) -> None:
        """The controller is done with the run: its connections are gone, so none waits for the operator any more
        (the next controller opens its own)."""
        if not self._recorded:
            return
        for target in self._recorded:
            with self._state.mutate_target(target) as record:
                record.pop("status_check", None)
        self._recorded.clear()

    def before_use(self, target: str, session: TargetSession) -> None:
        """Reconnect if the connection waits and the operator has asked for it since."""
        if session.waiting_for_operator() is None:
            return
        request = _request_file(self._state.run_dir, target)
        if not request.exists():
            return
        with contextlib.suppress(FileNotFoundError):
            request.unlink()
        try:
            session.reconnect_now()
        except (TransportError, RefusedError) as exc:
            self._say(target, "network.manual_reconnect",
                      f"the operator's reconnect of the status-check connection failed: {exc}; drhost still waits: "
                      f"drhost reconnect {self._state.run_id} {target}", cause=str(exc))
            return
        with self._state.mutate_target(target) as record:
            record.pop("status_check", None)
        self._recorded.discard(target)

    def after_use(self, target: str, session: TargetSession) -> None:
        """Record and say, once per loss, that the connection waits for the operator."""
        cause = session.waiting_for_operator()
        if cause is None:
            return
        with self._state.mutate_target(target) as record:
            if isinstance(record.get("status_check"), dict):
                return  # said already for this loss
            record["status_check"] = {"lost_at": time.time(), "cause": cause}
        self._recorded.add(target)
        self._say(target, "network.manual_reconnect",
                  f"status-check connection lost ({cause}); it reconnects only on the operator's word: drhost "
                  f"reconnect {self._state.run_id} {target} (the upgrade goes on; the target's resources are not "
                  f"sampled until then)", cause=cause)

    def _say(self, target: str, event: EventName, message: str, **data: Any) -> None:
        self._emit(event, target=target, message=message, connection="status_check", **data)
