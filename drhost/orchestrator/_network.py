"""What the network did, as events: the transport's observations land on the target's row, with its step.

A target's session is shared by all its calls, so the session itself cannot know which step a reconnect
belongs to; the executor tells this book which call runs on which target, and each network event is
stamped with the call that was running when it happened (the latest one, when calls overlap).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from drhost_hookspecs import OperationName, Stage

from ..events import NETWORK_EVENTS, EventName, NetworkEventName

__all__ = ["NETWORK_EVENTS", "NetworkEvents"]


class _Emit(Protocol):
    def __call__(self, event: EventName, *, target: str | None = None, stage: Stage | None = None,
                 step: str | None = None, plugin: str | None = None, message: str = "", **data: Any) -> None: ...


@dataclass(frozen=True)
class _Call:
    stage: Stage | None
    step: str | None
    plugin: str
    op: OperationName


class NetworkEvents:
    """Per target, the calls in flight; :meth:`listener` gives a session its ``on_network`` callback."""

    def __init__(self, emit: _Emit) -> None:
        self._emit = emit
        self._lock = threading.Lock()
        self._calls: dict[str, dict[int, _Call]] = {}

    def started(self, target: str, key: object, *, stage: Stage | None, step: str | None, plugin: str,
                op: OperationName) -> None:
        with self._lock:
            self._calls.setdefault(target, {})[id(key)] = _Call(stage, step, plugin, op)

    def ended(self, target: str, key: object) -> None:
        with self._lock:
            self._calls.get(target, {}).pop(id(key), None)

    def listener(self, target: str) -> Callable[[NetworkEventName, str, dict[str, Any]], None]:
        def on_network(event: NetworkEventName, message: str, data: dict[str, Any]) -> None:
            with self._lock:
                calls = list(self._calls.get(target, {}).values())
            call = calls[-1] if calls else None
            if call is None:
                self._emit(event, target=target, message=message, **data)
                return
            self._emit(event, target=target, stage=call.stage, step=call.step, plugin=call.plugin, message=message,
                       op=call.op, **data)

        return on_network
