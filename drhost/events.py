"""Events: frozen records of what happened, fanned out to the journal and reporters."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """One thing that happened in a run. ``event`` is a dotted name such as ``step.failed``."""

    event: str
    run_id: str
    target: str | None = None
    stage: str | None = None
    step: str | None = None
    plugin: str | None = None
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"ts": round(self.ts, 6), "event": self.event, "run_id": self.run_id}
        for key in ("target", "stage", "step", "plugin"):
            value = getattr(self, key)
            if value is not None:
                record[key] = value
        if self.message:
            record["message"] = self.message
        if self.data:
            record["data"] = dict(self.data)
        return record


Subscriber = Callable[[Event], None]


class EventBus:
    """Delivers every event to every subscriber, in subscription order, one event at a time."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def emit(self, event: Event) -> None:
        # One lock for all: the journal's order is the order reporters saw.
        with self._lock:
            for subscriber in self._subscribers:
                subscriber(event)
