"""Events: frozen records of what happened, fanned out to the journal and reporters; the catalogue of their names.

Every name the code emits is declared once, in :data:`EventName`; the emit functions take an ``EventName``, so
mypy rejects a name that is not in the catalogue. Names are dotted, ``subject.what``. Journals outlive the code
that wrote them: :data:`RENAMED` maps the names earlier versions wrote to today's, and journal readers apply it
(:func:`current_event_name`).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from .errors import Phrase, phrase_json

__all__ = [
    "EVENT_NAMES",
    "NETWORK_EVENTS",
    "RENAMED",
    "RETIRED",
    "WATCHDOG_EVENTS",
    "Event",
    "EventBus",
    "EventName",
    "NetworkEventName",
    "Subscriber",
    "WatchdogEventName",
    "current_event_name",
]

#: The watchdog's events, about any watched operation (a step, its cleanup, a hook, a probe, the target lock);
#: docs/schemas/watchdog-events.schema.json describes their data.
WatchdogEventName = Literal["watchdog.progress", "watchdog.remaining", "watchdog.resources", "watchdog.warning",
                            "watchdog.timeout"]
#: What an SSH session saw of the network (``on_network``).
NetworkEventName = Literal["network.peer_dead", "network.connection_lost", "network.reconnected",
                           "network.upload_lost", "network.upload_resumed", "network.manual_reconnect"]

EventName = Literal[
    WatchdogEventName,
    NetworkEventName,
    "run.started", "run.stopping", "run.finished", "state.recovered",
    "cgroups.removed", "containers.removed", "worker.launched", "context.refused",
    "rollout.approved", "rollout.waiting_approval", "rollout.paused", "rollout.batch_started",
    "rollout.batch_finished", "rollout.stopped",
    "target.started", "target.up_to_date", "target.succeeded", "target.aborted", "target.interrupted",
    "target.inconsistent", "target.reachable", "target.unreachable", "target.refused", "target.locked",
    "target.rollback_queued", "target.lock_broken", "target.lock_lost",
    "target.leftovers_stopped", "target.leftovers_unknown", "target.still_changing", "target.thread_returned",
    "stage.started", "stage.completed", "stage.failed", "stage.retry", "stage.decision", "stage.restart_resumed",
    "stage.cleanup_started", "stage.cleanup_finished", "stage.verify_failed",
    "step.started", "step.progress", "step.completed", "step.failed", "step.skipped", "step.interrupted",
    "step.cleanup", "step.command_stopped",
    "plugin.log", "plugin.skipped", "plugin.error_recorded", "plugin.host_memory", "plugin.output_dropped",
    "plugin.version_changed",
    "rollback.started", "rollback.stage", "rollback.step", "rollback.plugin", "rollback.verified",
    "rollback.recovery",
]

EVENT_NAMES: Final[frozenset[str]] = frozenset(get_args(EventName))
WATCHDOG_EVENTS: Final[tuple[WatchdogEventName, ...]] = get_args(WatchdogEventName)
NETWORK_EVENTS: Final[tuple[NetworkEventName, ...]] = get_args(NetworkEventName)

#: Names earlier versions wrote (journals keep them), and today's name of each.
RENAMED: Final[Mapping[str, EventName]] = {
    "step_progress": "watchdog.progress",
    "step_remaining": "watchdog.remaining",
    "step_resources": "watchdog.resources",
    "timeout_warning": "watchdog.warning",
    "step_timeout": "watchdog.timeout",
    "decision": "stage.decision",
}


#: Names earlier versions wrote that nothing emits any more and that have no new name; readers still show them.
#: ``rollback.failed``: a rollback that did not verify, now ``target.inconsistent`` with its manual procedure.
RETIRED: Final[frozenset[str]] = frozenset({"rollback.failed"})


def current_event_name(name: str) -> str:
    """Today's name of an event a journal recorded as ``name``; a name not renamed is returned as it is."""
    return RENAMED.get(name, name)


@dataclass(frozen=True)
class Event:
    """One thing that happened in a run. ``event`` is a dotted name such as ``step.failed``.

    ``event`` is a plain string: an event read back from a journal may carry a name this version does not know.
    """

    event: str
    run_id: str
    target: str | None = None
    stage: str | None = None
    step: str | None = None
    plugin: str | None = None
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    @functools.cached_property
    def json_line(self) -> str:
        """:meth:`to_json` as one compact line, made once for the journal and the debug log alike."""
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"))

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"ts": round(self.ts, 6), "event": self.event, "run_id": self.run_id}
        for key in ("target", "stage", "step", "plugin"):
            value = getattr(self, key)
            if value is not None:
                record[key] = value
        if self.message:
            record["message"] = self.message
            if isinstance(self.message, Phrase):
                # The English stays the record; its template lets a reader say it in the operator's language.
                record["wording"] = phrase_json(self.message)
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
