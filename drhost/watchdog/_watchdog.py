"""The watchdog: one clock per running operation, and the cadenced events it owes the operator.

Every operation drhost runs on a target under a deadline is watched alike — a step, its cleanup
and rollback, the plugin-wide hooks, verification, version probes, context collection and locks.
An operation's budget is its configured timeout, unchanged. The watchdog does not stop
steps itself: the runner that executes the step holds the same deadline and owns the
means to stop it (abort a thread, kill a worker, kill a remote process group). What
the watchdog adds is everything around that deadline — progress, remaining time,
resource status, the 85 %/95 % warnings, and a resource sample taken *at* the
deadline, while whatever hung is still there to be measured.

One thread serves every watch of a run and sleeps until the next thing falls due, so
a warning lands on its moment rather than on the next poll.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..events import WatchdogEventName
from ._messages import Environment

__all__ = ["Emit", "Progress", "StepWatch", "Watchdog", "WatchdogSettings"]

#: (event name, data) — the executor binds target, stage, step and plugin.
Emit = Callable[[WatchdogEventName, dict[str, Any]], None]
#: Returns the target's resource usage now (takes about half a second).
Sampler = Callable[[], Environment]
#: The step's expected remaining time, from history and progress; None when unknown.
Estimate = Callable[[float, float | None], float | None]


@dataclass(frozen=True)
class WatchdogSettings:
    """The ``[watchdog]`` section: cadences in seconds and warning thresholds as fractions."""

    progress_every_s: float = 10.0
    remaining_every_s: float = 30.0
    resources_every_s: float = 60.0
    warn_at: float = 0.85
    urgent_at: float = 0.95

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WatchdogSettings:
        section = config.get("watchdog", {})
        return cls(**{key: float(section[key]) for key in cls.__dataclass_fields__ if key in section})


@dataclass(frozen=True)
class Progress:
    """The step's last own report: ``done`` of ``total`` ``unit``."""

    done: float
    total: float
    unit: str = ""

    @property
    def fraction(self) -> float | None:
        if self.total <= 0:
            return None
        return min(1.0, max(0.0, self.done / self.total))


@dataclass(eq=False)  # identity, not value: watches live in a set
class StepWatch:
    """The clock of one running step. Created by :meth:`Watchdog.watch`, released when the call ends."""

    timeout_s: float
    started: float
    emit: Emit
    sample: Sampler
    estimate: Estimate
    settings: WatchdogSettings
    #: Also sample the controller (steps whose time goes into plugin code on the controller).
    sample_controller: Sampler | None = None
    #: What the ETA also foresees beyond this attempt (``retries_left``, ``retries_s``, ``restart_s``):
    #: added to every progress and remaining event, so the line says what the estimate includes.
    eta_extra: Mapping[str, Any] = field(default_factory=dict)
    progress: Progress | None = None
    #: The usage measured at the deadline (set by the watchdog thread; read after the call).
    at_deadline: Environment | None = None
    controller_at_deadline: Environment | None = None
    _due: dict[str, float] = field(default_factory=dict)
    _sampling: threading.Lock = field(default_factory=threading.Lock)
    _deadline_sampled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        s = self.settings
        self._due = {"progress": self.started + s.progress_every_s,
                     "remaining": self.started + s.remaining_every_s,
                     "resources": self.started + s.resources_every_s,
                     "deadline": self.deadline}
        # A threshold of 1 or more disables that warning; 0.85 of 20 s is 17 s after the start.
        if s.warn_at < 1:
            self._due["warn"] = self.started + s.warn_at * self.timeout_s
        if s.urgent_at < 1:
            self._due["urgent"] = self.started + s.urgent_at * self.timeout_s

    @property
    def deadline(self) -> float:
        return self.started + self.timeout_s

    def elapsed(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.started

    def expired(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.deadline

    def report_progress(self, done: float, total: float, unit: str = "") -> None:
        self.progress = Progress(done, total, unit)

    def remaining(self, now: float) -> float | None:
        """Expected time left for the step (ETA), from history refined by its progress."""
        return self.estimate(self.elapsed(now), self.progress.fraction if self.progress else None)

    def next_due(self) -> float | None:
        return min(self._due.values(), default=None)

    def environment_at_deadline(self, wait_s: float = 6.0) -> tuple[Environment, Environment | None]:
        """After a timeout: the target's (and controller's) usage measured at the deadline.

        The sample starts on the deadline tick, while the hung work still runs; if the
        call came back before that tick, wait for it, and measure now as a last resort.
        """
        if not self._deadline_sampled.wait(wait_s):
            self.at_deadline = self.sample()
            if self.sample_controller is not None:
                self.controller_at_deadline = self.sample_controller()
        return self.at_deadline or Environment(), self.controller_at_deadline

    # -- what falls due -----------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Emit whatever is due at ``now``; called by the watchdog thread."""
        for what, when in sorted(self._due.items(), key=lambda item: item[1]):
            if when > now:
                continue
            handler = getattr(self, f"_on_{what}")
            handler(now)

    def _reschedule(self, what: str, every: float) -> None:
        # Cadences keep their phase (10, 20, 30 s after the start) however late a tick ran.
        nxt = self._due[what] + every
        if nxt < self.deadline and every > 0:
            self._due[what] = nxt
        else:
            del self._due[what]

    def _common(self, now: float) -> dict[str, Any]:
        elapsed = self.elapsed(now)
        return {"elapsed_s": round(elapsed, 3), "timeout_s": self.timeout_s,
                "budget_percent": round(100 * elapsed / self.timeout_s, 1),
                "budget_left_s": round(max(0.0, self.deadline - now), 3)}

    def _on_progress(self, now: float) -> None:
        data = self._common(now)
        remaining = self.remaining(now)
        data["remaining_s"] = None if remaining is None else round(remaining, 1)
        data.update(self.eta_extra)
        progress = self.progress
        if progress is not None and progress.fraction is not None:
            data.update(percent=round(100 * progress.fraction, 1), done=progress.done, total=progress.total,
                        unit=progress.unit)
        self.emit("watchdog.progress", data)
        self._reschedule("progress", self.settings.progress_every_s)

    def _on_remaining(self, now: float) -> None:
        data = self._common(now)
        remaining = self.remaining(now)
        data["remaining_s"] = None if remaining is None else round(remaining, 1)
        data.update(self.eta_extra)
        self.emit("watchdog.remaining", data)
        self._reschedule("remaining", self.settings.remaining_every_s)

    def _on_resources(self, now: float) -> None:
        self._reschedule("resources", self.settings.resources_every_s)
        started_at = self.elapsed(now)

        def measure() -> None:
            with self._sampling:
                data: dict[str, Any] = {"elapsed_s": round(started_at, 3), "timeout_s": self.timeout_s,
                                        "environment": self.sample().as_dict()}
                if self.sample_controller is not None:
                    data["controller"] = self.sample_controller().as_dict()
            self.emit("watchdog.resources", data)

        # Sampling takes about half a second: never on the watchdog thread, which owes others their moments.
        if not self._sampling.locked():
            threading.Thread(target=measure, name="watchdog-sample", daemon=True).start()

    def _warning(self, now: float, what: str, percent: int) -> None:
        del self._due[what]
        data = self._common(now)
        data.update(percent=percent, remaining_s=data["budget_left_s"], urgent=what == "urgent")
        self.emit("watchdog.warning", data)

    def _on_warn(self, now: float) -> None:
        self._warning(now, "warn", round(100 * self.settings.warn_at))

    def _on_urgent(self, now: float) -> None:
        self._warning(now, "urgent", round(100 * self.settings.urgent_at))

    def _on_deadline(self, now: float) -> None:
        self._due.clear()

        def measure() -> None:
            try:
                self.at_deadline = self.sample()
                if self.sample_controller is not None:
                    self.controller_at_deadline = self.sample_controller()
            finally:
                self._deadline_sampled.set()

        threading.Thread(target=measure, name="watchdog-deadline-sample", daemon=True).start()


class Watchdog:
    """Serves every :class:`StepWatch` of a run from one thread."""

    def __init__(self, settings: WatchdogSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._watches: set[StepWatch] = set()
        self._changed = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        #: When the serving thread wakes next by itself (None: only when told). A watch falling due later needs
        #: no wake-up, and a released one none at all: two wake-ups a step, each a pass over every watch, cost
        #: 0.14 ms of controller CPU a step at 50 targets.
        self._wakes_at: float | None = None

    def watch(self, *, timeout_s: float, emit: Emit, sample: Sampler, estimate: Estimate,
              sample_controller: Sampler | None = None, started: float | None = None,
              eta_extra: Mapping[str, Any] | None = None) -> StepWatch:
        watch = StepWatch(timeout_s=timeout_s, started=self._clock() if started is None else started, emit=emit,
                          sample=sample, estimate=estimate, settings=self.settings,
                          sample_controller=sample_controller, eta_extra=dict(eta_extra or {}))
        due = watch.next_due()
        with self._changed:
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="watchdog", daemon=True)
                self._thread.start()
            if due is not None and (self._wakes_at is None or due < self._wakes_at):
                self._changed.notify()
        return watch

    def release(self, watch: StepWatch) -> None:
        # No wake-up: at worst the thread wakes once for a watch that is gone, and finds nothing due.
        with self._changed:
            self._watches.discard(watch)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._watches.clear()
            self._changed.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _serve(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                watches = list(self._watches)
                dues = [due for due in (w.next_due() for w in watches) if due is not None]
                now = self._clock()
                wait = None if not dues else max(0.0, min(dues) - now)
                if wait is None or wait > 0:
                    self._wakes_at = None if wait is None else now + wait
                    self._changed.wait(wait)
                    self._wakes_at = None
                    continue
            now = self._clock()
            for watch in watches:
                with self._changed:
                    if watch not in self._watches:
                        continue
                # Emitting takes the event bus lock; never hold ours meanwhile.
                watch.tick(now)
