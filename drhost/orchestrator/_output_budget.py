"""A call's output budget: how much of a plugin's ``ctx.log`` / ``ctx.progress`` reaches the run directory.

A plugin that floods its Context must not grow ``events.jsonl`` and ``debug.log`` without bound. Per call,
log lines are kept up to a count and a byte total (each line cut to a maximum length), and progress reports
are written at most once per interval; the rest is counted and recorded once, when the call ends. Only
what is written to disk is limited: the watchdog still sees every progress report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..context import NotifyMethod


@dataclass(frozen=True)
class OutputLimits:
    """The ``[run]`` keys ``plugin_log_lines``, ``plugin_log_bytes``, ``plugin_log_line_chars`` and
    ``plugin_progress_interval_s``."""

    log_lines: int = 2000
    log_bytes: int = 1024 * 1024
    line_chars: int = 4000
    progress_interval_s: float = 0.5

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> OutputLimits:
        run: Mapping[str, Any] = config.get("run") or {}
        default = cls()
        return cls(log_lines=int(run.get("plugin_log_lines", default.log_lines)),
                   log_bytes=int(run.get("plugin_log_bytes", default.log_bytes)),
                   line_chars=int(run.get("plugin_log_line_chars", default.line_chars)),
                   progress_interval_s=float(run.get("plugin_progress_interval_s", default.progress_interval_s)))

    def to_json(self) -> dict[str, Any]:
        return {"log_lines": self.log_lines, "log_bytes": self.log_bytes, "line_chars": self.line_chars,
                "progress_interval_s": self.progress_interval_s}


@dataclass(frozen=True)
class Dropped:
    """What a call's budget kept off disk. ``log_bytes`` is the plugin's text not written (UTF-8): dropped
    lines and the cut-off tails of kept ones; ``truncated`` is how many kept lines were cut."""

    log_lines: int = 0
    log_bytes: int = 0
    progress: int = 0
    truncated: int = 0

    def __bool__(self) -> bool:
        return bool(self.log_lines or self.log_bytes or self.progress or self.truncated)


@dataclass(frozen=True)
class HeldProgress:
    """A progress report and when it was made (the clock's time), so a late write keeps its own moment."""

    args: Mapping[str, Any]
    at: float


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


class OutputBudget:
    """The decisions for one call; thread-safe (a thread plugin may log from several threads).

    Log lines are kept while both the line count and the byte total allow; the first line that does not fit
    spends the budget, so what is written is always the call's first lines, never a sample. Progress: a
    report is written when ``progress_interval_s`` has passed since the last written one, otherwise held
    (replacing any held before); :meth:`due` hands the held one out once its interval has passed and
    :meth:`close` at the call's end, so the last value is never lost. After :meth:`close` everything is
    dropped: a hung thread that keeps logging after its call ended writes nothing.
    """

    def __init__(self, limits: OutputLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._lines = 0
        self._bytes = 0
        self._spent = False
        self._dropped_lines = 0
        self._dropped_bytes = 0
        self._truncated = 0
        self._dropped_progress = 0
        self._last_written: float | None = None
        self._held: HeldProgress | None = None
        self._closed = False

    # -- log lines ----------------------------------------------------------------------------------
    def admit_log(self, message: str) -> str | None:
        """The line to write (cut to ``line_chars``), or None when it is dropped."""
        size = _utf8_len(message)
        with self._lock:
            if self._closed or self._spent:
                self._dropped_lines += 1
                self._dropped_bytes += size
                return None
            text, tail = message, 0
            if len(message) > self.limits.line_chars:
                head = message[:self.limits.line_chars]
                tail = size - _utf8_len(head)
                text = f"{head} [... {len(message) - len(head)} more characters]"
            kept = _utf8_len(text)
            if self._lines + 1 > self.limits.log_lines or self._bytes + kept > self.limits.log_bytes:
                self._spent = True
                self._dropped_lines += 1
                self._dropped_bytes += size
                return None
            self._lines += 1
            self._bytes += kept
            if text is not message:
                self._truncated += 1
                self._dropped_bytes += tail
            return text

    # -- progress -----------------------------------------------------------------------------------
    def admit_progress(self, args: Mapping[str, Any]) -> HeldProgress | None:
        """The report to write now, or None: it is held (or, after :meth:`close`, dropped)."""
        now = self._clock()
        report = HeldProgress(args, now)
        with self._lock:
            if self._closed:
                self._dropped_progress += 1
                return None
            if self._last_written is None or now - self._last_written >= self.limits.progress_interval_s:
                if self._held is not None:  # superseded by a newer value written now
                    self._dropped_progress += 1
                    self._held = None
                self._last_written = now
                return report
            if self._held is not None:
                self._dropped_progress += 1
            self._held = report
            return None

    def wait_s(self) -> float | None:
        """Seconds until the held report may be written; None when none is held."""
        with self._lock:
            if self._held is None or self._last_written is None:
                return None
            return max(0.0, self._last_written + self.limits.progress_interval_s - self._clock())

    def due(self) -> HeldProgress | None:
        """The held report, once its interval has passed (it then counts as written)."""
        now = self._clock()
        with self._lock:
            held = self._held
            if held is None or self._closed:
                return None
            if self._last_written is not None and now - self._last_written < self.limits.progress_interval_s:
                return None
            self._held, self._last_written = None, now
            return held

    # -- the end of the call --------------------------------------------------------------------------
    def close(self) -> HeldProgress | None:
        """End the call: the held report (to write now, whatever the interval), if any."""
        with self._lock:
            self._closed = True
            held, self._held = self._held, None
            return held

    def dropped(self) -> Dropped:
        with self._lock:
            return Dropped(log_lines=self._dropped_lines, log_bytes=self._dropped_bytes,
                           progress=self._dropped_progress, truncated=self._truncated)


class CallOutput:
    """The ``notify`` of one call (``HostContext``'s): every progress report goes to ``watch`` (the
    watchdog keeps only the latest, in memory); only what the budget admits is written.

    ``HostContext.log`` finds the budget as :attr:`output_budget` and asks it before writing a line to
    debug.log, then passes the admitted line on here for the journal: both files get the same lines.
    A held progress report is written by a timer once its interval has passed, and by :meth:`close`.
    """

    def __init__(self, budget: OutputBudget, *, watch: Callable[[Mapping[str, Any]], None],
                 write_progress: Callable[[HeldProgress], None],
                 write_log: Callable[[Mapping[str, Any]], None]) -> None:
        self.output_budget = budget
        self._watch = watch
        self._write_progress = write_progress
        self._write_log = write_log
        # Writes happen under this lock, so a timer's late write never lands after a newer report's.
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def __call__(self, method: NotifyMethod, args: Mapping[str, Any]) -> None:
        if method != "progress":
            self._write_log(args)
            return
        self._watch(args)
        with self._lock:
            report = self.output_budget.admit_progress(args)
            if report is not None:
                self._write_progress(report)
            else:
                self._arm()

    def _arm(self) -> None:
        wait = self.output_budget.wait_s()
        if wait is None or self._timer is not None:
            return
        self._timer = threading.Timer(wait, self._flush)
        self._timer.daemon = True
        self._timer.start()

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            report = self.output_budget.due()
            if report is not None:
                self._write_progress(report)
            else:
                self._arm()  # woke a moment early: the clocks of Timer and the budget differ slightly

    def close(self) -> Dropped:
        """The call ended: write the last held report; later output is dropped. Returns what was dropped."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            report = self.output_budget.close()
            if report is not None:
                self._write_progress(report)
        return self.output_budget.dropped()


__all__ = ["CallOutput", "Dropped", "HeldProgress", "OutputBudget", "OutputLimits"]
