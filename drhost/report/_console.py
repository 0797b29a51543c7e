"""Console output: plain lines for logs and pipes, a live view on a terminal."""

from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

from ..events import Event
from ..transport._sftp_upload import rate_and_eta

#: Events worth a line of their own in plain mode (progress and logs are too chatty).
_PLAIN = {
    "run.started", "run.finished", "run.stopping", "state.recovered", "plugin.version_changed",
    "target.started", "target.succeeded", "target.up_to_date", "target.aborted", "target.interrupted",
    "stage.started", "stage.completed", "stage.failed", "stage.retry", "stage.cleanup_started",
    "stage.cleanup_finished", "stage.verify_failed", "step.started", "step.completed", "step.failed",
    "step.skipped", "step.interrupted", "step.cleanup", "plugin.skipped", "plugin.error_recorded", "decision",
    "rollback.started", "rollback.step", "rollback.plugin", "rollback.stage", "rollback.verified", "rollback.failed",
}
_NOTABLE = {"step.failed", "plugin.skipped", "plugin.error_recorded", "stage.failed", "decision", "stage.retry",
            "rollback.started", "rollback.failed", "rollback.verified", "target.up_to_date", "run.stopping",
            "step.interrupted", "state.recovered", "stage.verify_failed", "target.aborted",
            "stage.cleanup_started", "stage.cleanup_finished"}


def describe(event: Event) -> str:
    """One human line for an event."""
    d = event.data
    where = f"[{event.stage}] {event.step}" if event.step else (f"[{event.stage}]" if event.stage else "")
    who = f" ({event.plugin})" if event.plugin and event.step else (f" {event.plugin}" if event.plugin else "")
    name = event.event
    if name == "step.started":
        attempt = f"attempt {d.get('attempt')}/{d.get('attempts')}"
        text = f"{where}{who} started ({attempt}, timeout {d.get('timeout_s'):g} s)"
    elif name == "step.completed":
        text = f"{where}{who} done in {d.get('duration_s', 0):.1f} s"
    elif name == "step.failed":
        retry = d.get("retrying_in_s")
        tail = f"; retrying in {retry:g} s" if retry is not None else ""
        text = f"attempt {d.get('attempt')}/{d.get('attempts')} of {where}{who} {d.get('ended')}: {event.message}{tail}"
    elif name == "run.started":
        text = f"run {event.run_id} {d.get('mode')}: {len(d.get('targets', []))} target(s), {d.get('steps')} " \
               f"steps each, package {d.get('package')}"
    elif name == "run.finished":
        targets = ", ".join(f"{n}={t['status']}@{t.get('version')}" for n, t in d.get("targets", {}).items())
        text = f"run {event.run_id} {d.get('status')}: {targets}"
    elif name in ("plugin.skipped", "plugin.error_recorded"):
        text = f"{where}{who}: {event.message}"
    elif name == "stage.failed":
        text = f"[{event.stage}] failed: {event.message}"
    elif name == "decision":
        text = f"{where} decision: {d.get('decision')} — {event.message}"
    elif name == "rollback.stage":
        text = f"{where} rolled back: {d.get('status')}" + (f" ({'; '.join(d.get('errors', []))})"
                                                           if d.get("errors") else "")
    elif name in ("rollback.step", "rollback.plugin", "step.cleanup"):
        what = "cleanup" if name == "step.cleanup" else "rollback"
        text = f"{where}{who} {what}: {d.get('ended')}" + (f" — {event.message}" if event.message else "")
    else:
        text = " ".join(part for part in (name, where + who, event.message) if part)
    prefix = f"{event.target}: " if event.target else ""
    return prefix + text


def progress_text(event: Event) -> str:
    """`` 45%`` — and for bytes, the amount, MB/s and the time left (`` 45% 28.8/64.0 MiB 41 MB/s ETA 1s``)."""
    done = float(event.data.get("done") or 0)
    total = float(event.data.get("total") or 0)
    if not total:
        return ""
    text = f" {100 * done / total:.0f}%"
    if event.data.get("unit") == "bytes":
        rate, eta = rate_and_eta(int(done), int(total), float(event.data.get("elapsed_s") or 0))
        eta_text = "?" if eta == float("inf") else f"{eta:.0f}s"
        text += f" {done / 2**20:.1f}/{total / 2**20:.1f} MiB {rate:.0f} MB/s ETA {eta_text}"
    return text


class PlainReporter:
    """One line per significant event, timestamped; safe for logs and CI."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if event.event not in _PLAIN:
            return
        stamp = time.strftime("%H:%M:%S", time.localtime(event.ts))
        with self._lock:
            self._stream.write(f"{stamp} {describe(event)}\n")
            self._stream.flush()


class LiveReporter:
    """A live block on a terminal: a line per target (stage, step, plugin, elapsed, progress)."""

    def __init__(self, total_steps: int, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._total = max(1, total_steps)
        self._lines: dict[str, str] = {}
        self._done: dict[str, int] = {}
        self._step_started: dict[str, float] = {}
        self._drawn = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._finished = threading.Event()
        self._ticker: threading.Thread | None = None
        self._paused = False

    def _clear(self) -> None:
        if self._drawn:
            self._stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 20)).columns
        for name in sorted(self._lines):
            done = self._done.get(name, 0)
            bar_len = 20
            filled = int(bar_len * min(done, self._total) / self._total)
            since = self._step_started.get(name)
            step_elapsed = f" {time.time() - since:5.1f}s" if since else ""
            line = (f"{name:<14} [{'#' * filled}{'.' * (bar_len - filled)}] {done:>3}/{self._total}{step_elapsed} "
                    f"{self._lines[name]}")
            self._stream.write(line[: width - 1] + "\n")
        self._stream.write(f"elapsed {time.monotonic() - self._started:6.1f} s\n")
        self._drawn = len(self._lines) + 1
        self._stream.flush()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop drawing (for a question on the terminal); redraw afterwards."""
        with self._lock:
            self._clear()
            self._paused = True
        try:
            yield
        finally:
            with self._lock:
                self._paused = False
                self._draw()

    def _tick(self) -> None:
        # Redraw every second so elapsed time moves while a step is quiet.
        while not self._finished.wait(1.0):
            with self._lock:
                if self._drawn and not self._paused:
                    self._clear()
                    self._draw()

    def __call__(self, event: Event) -> None:
        if event.event == "run.started" and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="live-view", daemon=True)
            self._ticker.start()
        if event.event == "run.finished":
            self._finished.set()
        with self._lock:
            if self._paused:
                return
            self._clear()
            if event.event in _NOTABLE or event.event == "run.finished":
                self._stream.write(describe(event) + "\n")
            target = event.target
            if target:
                if event.event == "step.started":
                    self._step_started[target] = event.ts
                    self._lines[target] = f"[{event.stage}] {event.step} ({event.plugin})"
                elif event.event in ("step.completed", "step.skipped"):
                    self._done[target] = self._done.get(target, 0) + 1
                elif event.event == "step.progress":
                    self._lines[target] = f"[{event.stage}] {event.step} ({event.plugin}){progress_text(event)}"
                elif event.event.startswith(("target.", "rollback.")):
                    self._step_started.pop(target, None)
                    self._lines[target] = event.event.split(".", 1)[1].replace("_", " ")
            if event.event != "run.finished":
                self._draw()
            self._stream.flush()
