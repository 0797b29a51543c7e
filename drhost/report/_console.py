"""Console output: plain lines for logs and pipes, a live view on a terminal."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from ..errors import said_in
from ..events import NETWORK_EVENTS, WATCHDOG_EVENTS, Event, current_event_name
from ..i18n import N_, Translate, english
from ..status import data_word, status_label, status_word
from ..transport import rate_and_eta
from ..watchdog import render_watchdog_event, translator
from ._fleet import FleetBoard

#: Events worth a line of their own in plain mode (progress and logs are too chatty).
_PLAIN = {
    "run.started", "run.finished", "run.stopping", "state.recovered", "plugin.version_changed",
    "target.started", "target.succeeded", "target.up_to_date", "target.aborted", "target.interrupted",
    "stage.started", "stage.completed", "stage.failed", "stage.retry", "stage.cleanup_started",
    "stage.cleanup_finished", "stage.verify_failed", "step.started", "step.completed", "step.failed",
    "step.skipped", "step.interrupted", "step.cleanup", "plugin.skipped", "plugin.error_recorded", "stage.decision",
    "rollback.started", "rollback.step", "rollback.plugin", "rollback.stage", "rollback.verified", "rollback.failed",
    "rollback.recovery", "target.inconsistent", "target.locked", "target.refused", "target.unreachable",
    "target.lock_broken", "target.lock_lost", "stage.restart_resumed", "target.reachable", "target.rollback_queued",
    *WATCHDOG_EVENTS, "rollout.batch_started", "rollout.batch_finished", "rollout.stopped",
    "rollout.waiting_approval", "rollout.paused", "rollout.approved", "plugin.host_memory",
    "target.still_changing", "target.thread_returned", *NETWORK_EVENTS, "step.command_stopped",
}
_NOTABLE = {"step.failed", "plugin.skipped", "plugin.error_recorded", "stage.failed", "stage.decision", "stage.retry",
            "rollback.started", "rollback.failed", "rollback.verified", "target.up_to_date", "run.stopping",
            "step.interrupted", "state.recovered", "stage.verify_failed", "target.aborted",
            "stage.cleanup_started", "stage.cleanup_finished", "rollback.recovery", "target.inconsistent",
            "target.locked", "target.refused", "target.unreachable", "target.lock_broken", "target.lock_lost",
            "target.reachable", "target.rollback_queued", *WATCHDOG_EVENTS, "rollout.batch_started",
            "rollout.batch_finished",
            "rollout.stopped", "rollout.waiting_approval", "rollout.paused", "rollout.approved",
            "plugin.host_memory", "target.still_changing", "target.thread_returned", *NETWORK_EVENTS,
            "step.command_stopped"}


#: The events a line names by the event's own name: in English the name itself, translated in other languages.
_EVENT_LABELS = {
    "run.stopping": N_("run.stopping"),
    "state.recovered": N_("state.recovered"),
    "plugin.version_changed": N_("plugin.version_changed"),
    "target.started": N_("target.started"),
    "target.succeeded": N_("target.succeeded"),
    "target.up_to_date": N_("target.up_to_date"),
    "target.aborted": N_("target.aborted"),
    "target.interrupted": N_("target.interrupted"),
    "stage.started": N_("stage.started"),
    "stage.completed": N_("stage.completed"),
    "stage.retry": N_("stage.retry"),
    "stage.cleanup_started": N_("stage.cleanup_started"),
    "stage.cleanup_finished": N_("stage.cleanup_finished"),
    "stage.verify_failed": N_("stage.verify_failed"),
    "step.skipped": N_("step.skipped"),
    "step.interrupted": N_("step.interrupted"),
    "rollback.started": N_("rollback.started"),
    "rollback.verified": N_("rollback.verified"),
    "rollback.failed": N_("rollback.failed"),
    "target.locked": N_("target.locked"),
    "target.refused": N_("target.refused"),
    "target.unreachable": N_("target.unreachable"),
    "target.lock_broken": N_("target.lock_broken"),
    "target.lock_lost": N_("target.lock_lost"),
    "target.reachable": N_("target.reachable"),
    "target.rollback_queued": N_("target.rollback_queued"),
    "stage.restart_resumed": N_("stage.restart_resumed"),
    "target.still_changing": N_("target.still_changing"),
    "target.thread_returned": N_("target.thread_returned"),
    "step.command_stopped": N_("step.command_stopped"),
}

#: What a host's row of the live view says after a target, rollback or network event (the row keeps it until
#: the host's next step).
_ROW_LABELS = {
    "target.started": N_("started"), "target.up_to_date": N_("up to date"), "target.succeeded": N_("succeeded"),
    "target.aborted": N_("aborted"), "target.interrupted": N_("interrupted"),
    "target.inconsistent": N_("INCONSISTENT"), "target.reachable": N_("reachable"),
    "target.unreachable": N_("unreachable"), "target.refused": N_("REFUSED"), "target.locked": N_("locked"),
    "target.rollback_queued": N_("rollback queued"), "target.lock_broken": N_("lock broken"),
    "target.lock_lost": N_("lock lost"), "target.leftovers_stopped": N_("leftover commands stopped"),
    "target.leftovers_unknown": N_("leftover commands unknown"), "target.still_changing": N_("still changing"),
    "target.thread_returned": N_("abandoned step returned"),
    "rollback.started": N_("rolling back"), "rollback.stage": N_("rolling back"), "rollback.step": N_("rolling back"),
    "rollback.plugin": N_("rolling back"), "rollback.verified": N_("rolled back"),
    "rollback.recovery": N_("rollback recovery"),
    "network.peer_dead": N_("peer dead"), "network.connection_lost": N_("connection lost"),
    "network.reconnected": N_("reconnected"), "network.upload_lost": N_("upload lost"),
    "network.upload_resumed": N_("upload resumed"), "network.manual_reconnect": N_("waiting for the operator"),
}

#: Words of the data that a line names as they are (a call's ending, a decision, a rollback's status): said in a
#: language that has them, else as the data has them (English lines name them exactly as the JSON does).
_DATA_WORDS = {
    "ok": N_("ok"), "failed": N_("failed"), "skipped": N_("skipped"), "up_to_date": N_("up to date"),
    "timeout": N_("timeout"), "crashed": N_("crashed"), "killed": N_("killed"), "memory": N_("memory"),
    "pids": N_("pids"), "cpu_time": N_("cpu time"), "cancelled": N_("cancelled"), "protocol": N_("protocol"),
    "done": N_("done"), "retry": N_("retry"), "rollback": N_("rollback"), "abort": N_("abort"),
}


def _word(value: object, t: Translate) -> str:
    """``value`` (an ending, a decision, a status of the data) in the language of ``t`` when it has the word."""
    return data_word(value, _DATA_WORDS, t)


#: The stages, whose names the catalogue translates (the watchdog's labels).
_STAGE_LABELS = ("precheck", "backup", "transfer", "upgrade", "postcheck", "rollback")


def _stage(stage: str | None, t: Translate) -> str | None:
    """A stage's name in the language of ``t`` (another word stays as it is)."""
    return t(stage) if stage in _STAGE_LABELS else stage


def describe(event: Event, t: Translate = english) -> str:
    """One human line for an event (several for a timeout); watchdog lines in the language of ``t``."""
    d = event.data
    message = said_in(event.message, t)  # a worded message (a Phrase) in the language of t, else its English
    stage = _stage(event.stage, t)
    where = f"[{stage}] {event.step}" if event.step else (f"[{stage}]" if event.stage else "")
    who = f" ({event.plugin})" if event.plugin and event.step else (f" {event.plugin}" if event.plugin else "")
    name = current_event_name(event.event)  # an event of an earlier version's journal, under today's name
    prefix = f"{event.target}: " if event.target else ""
    if name in WATCHDOG_EVENTS:
        rendered = render_watchdog_event(name, d, stage=event.stage or "", step_label=f"{event.step}{who}", t=t)
        if name == "watchdog.timeout":
            # The block stands on its own: the step is in it, and its rows align as in the design.
            return prefix + (rendered or message)
        return f"{prefix}{where}{who} {rendered or message}"
    if name == "step.started":
        usually = (t(", usually {seconds} s").format(seconds=f"{d['expected_s']:.1f}")
                   if d.get("expected_s") is not None else "")
        text = t("{where}{who} started (attempt {attempt}/{attempts}, timeout {timeout} s{usually})").format(
            where=where, who=who, attempt=d.get("attempt"), attempts=d.get("attempts"),
            timeout=f"{d.get('timeout_s'):g}", usually=usually)
    elif name == "step.completed":
        text = t("{where}{who} done in {seconds} s").format(where=where, who=who,
                                                             seconds=f"{d.get('duration_s', 0):.1f}")
    elif name == "step.failed":
        retry = d.get("retrying_in_s")
        tail = t("; retrying in {seconds} s").format(seconds=f"{retry:g}") if retry is not None else ""
        text = t("attempt {attempt}/{attempts} of {where}{who} {ended}: {message}{tail}").format(
            attempt=d.get("attempt"), attempts=d.get("attempts"), where=where, who=who,
            ended=_word(d.get("ended"), t),
            message=message, tail=tail)
    elif name == "run.started":
        text = t("run {run_id} {mode}: {targets} target(s), {steps} steps each, package {package}").format(
            run_id=event.run_id, mode=d.get("mode"), targets=len(d.get("targets", [])), steps=d.get("steps"),
            package=d.get("package"))
    elif name == "run.finished":
        targets = ", ".join(f"{n}={status_word(rec['status'], t)}@{rec.get('version')}"
                            for n, rec in d.get("targets", {}).items())
        text = t("run {run_id} {status}: {targets}").format(run_id=event.run_id,
                                                            status=status_word(str(d.get("status")), t),
                                                            targets=targets)
    elif name in ("plugin.skipped", "plugin.error_recorded"):
        text = f"{where}{who}: {message}"
    elif name in NETWORK_EVENTS:
        # The step that was running when the network failed, then what happened: the row and time say the rest.
        text = (t("{where}{who} network: {message}").format(where=where, who=who, message=message) if where
                else t("network: {message}").format(message=message))
    elif name == "plugin.host_memory":
        text = t("warning: {message}").format(message=message)
    elif name == "stage.failed":
        text = t("[{stage}] failed: {message}").format(stage=stage, message=message)
    elif name == "target.inconsistent":
        text = "\n".join([t("INCONSISTENT: {message}").format(message=message), *d.get("procedure", []),
                          t("evidence: {path}").format(path=d.get("evidence"))])
    elif name == "rollback.recovery":
        found = "; ".join([*d.get("errors", []), *d.get("problems", [])])
        text = t("[{stage}] recovery: {message} ({found})").format(stage=stage, message=message, found=found)
    elif name.startswith("rollout."):
        text = _rollout_text(name, event, t)
    elif name == "stage.decision":
        text = t("{where} decision: {decision} — {message}").format(where=where,
                                                                     decision=_word(d.get("decision"), t),
                                                                     message=message)
    elif name == "rollback.stage":
        errors = f" ({'; '.join(d.get('errors', []))})" if d.get("errors") else ""
        text = t("{where} rolled back: {status}{errors}").format(where=where, status=_word(d.get("status"), t),
                                                                 errors=errors)
    elif name in ("rollback.step", "rollback.plugin", "step.cleanup"):
        said = f" — {message}" if message else ""
        text = (t("{where}{who} cleanup: {ended}{said}") if name == "step.cleanup"
                else t("{where}{who} rollback: {ended}{said}")).format(where=where, who=who,
                                                                       ended=_word(d.get("ended"), t), said=said)
    else:
        label = t(_EVENT_LABELS[name]) if name in _EVENT_LABELS else name
        text = " ".join(part for part in (label, where + who, message) if part)
    return prefix + text


#: A batch's counts, as its finished line names them.
_COUNT_LABELS = {"succeeded": N_("succeeded"), "failed": N_("failed"), "unreachable": N_("unreachable"),
                 "not_started": N_("not started")}


def _rollout_text(name: str, event: Event, t: Translate) -> str:
    """A rollout line from the event's data, in the language of ``t``; its English message when the data does not
    say enough (an event of an earlier version's journal)."""
    d = event.data
    try:
        number = int(d["batch"]) + 1
        if name == "rollout.batch_started":
            group = t(" (group {group})").format(group=d["group"]) if d.get("group") else ""
            return t("batch {number} of {count}{group}: {targets} targets").format(
                number=number, count=d["batches"], group=group, targets=len(d["targets"]))
        if name == "rollout.batch_finished":
            counts = ", ".join(f"{v} {t(_COUNT_LABELS[k]) if k in _COUNT_LABELS else k.replace('_', ' ')}"
                               for k, v in d["counts"].items() if v)
            return t("batch {number} of {count} finished: {counts}").format(number=number, count=d["batches"],
                                                                            counts=counts)
        if name == "rollout.paused":
            return t("waiting {seconds} s before batch {number}").format(seconds=f"{float(d['seconds']):g}",
                                                                         number=number)
        if name == "rollout.stopped":
            return t("rollout stopped: {reason}; {count} targets not started").format(
                reason=d["reason"], count=len(d["not_started"]))
    except (KeyError, TypeError, ValueError):
        pass
    return said_in(event.message, t)


def progress_text(event: Event, t: Translate = english) -> str:
    """`` 45%`` — and for bytes, the amount, MB/s and the time left (`` 45% 28.8/64.0 MiB 41 MB/s ETA 1s``)."""
    done = float(event.data.get("done") or 0)
    total = float(event.data.get("total") or 0)
    if not total:
        return ""
    text = f" {100 * done / total:.0f}%"
    if event.data.get("unit") == "bytes":
        rate, eta = rate_and_eta(int(done), int(total), float(event.data.get("elapsed_s") or 0))
        eta_text = "?" if eta == float("inf") else f"{eta:.0f}s"
        text += f" {done / 2**20:.1f}/{total / 2**20:.1f} MiB {rate:.0f} MB/s" + t(" ETA {time}").format(time=eta_text)
    return text


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class EtaBoard:
    """Remaining time per target and for the run, from the events alone.

    A target's ETA is its running step's remaining time (the watchdog's latest
    estimate, else the step's usual duration minus its elapsed time) plus the usual
    duration of its later steps. Targets run side by side, so the run's ETA is the
    largest. Unknown (a step never timed before) stays unknown rather than guessed.
    """

    def __init__(self) -> None:
        self._steps: dict[str, tuple[float, float | None, float | None]] = {}  # target -> started, expected, rest
        self._latest: dict[str, tuple[float, float | None]] = {}  # target -> (ts, remaining_s) from watchdog.progress
        self._finished: set[str] = set()

    def see(self, event: Event) -> None:
        target = event.target
        if target is None:
            return
        d = event.data
        if event.event == "step.started":
            self._steps[target] = (event.ts, d.get("expected_s"), d.get("rest_after_s"))
            self._latest.pop(target, None)
        elif event.event in ("watchdog.progress", "watchdog.remaining"):
            self._latest[target] = (event.ts, d.get("remaining_s"))
        elif event.event.startswith("target.") and event.event != "target.started":
            self._finished.add(target)

    def target(self, target: str, now: float) -> float | None:
        if target in self._finished or target not in self._steps:
            return None
        started, expected, rest = self._steps[target]
        if rest is None:
            return None
        latest = self._latest.get(target)
        if latest is not None and latest[1] is not None:
            step_left = max(0.0, latest[1] - (now - latest[0]))
        elif expected is not None:
            step_left = max(0.0, expected - (now - started))
        else:
            return None
        return step_left + rest

    def run(self, now: float) -> float | None:
        etas = [self.target(name, now) for name in self._steps if name not in self._finished]
        if not etas or any(eta is None for eta in etas):
            return None
        return max(eta for eta in etas if eta is not None)


class _Console:
    """The reporters' stream. A console that goes away — the reader of a pipe quit (`| head`), the terminal of
    the operator's SSH session closed — ends the output, never the run: the journal keeps every event."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> None:
        if not self.gone:
            try:
                self._stream.write(text)
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                self._lose(exc)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self._lose(exc)

    def _lose(self, exc: Exception) -> None:
        self.gone = True
        logging.getLogger("drhost.report").warning(
            "console output stopped (%s: %s); the run goes on and its journal keeps every event",
            type(exc).__name__, exc)


class PlainReporter:
    """One line per significant event, timestamped; safe for logs and CI."""

    def __init__(self, stream: TextIO = sys.stderr, t: Translate | None = None) -> None:
        self._stream = _Console(stream)
        self._lock = threading.Lock()
        self._t = t or translator()

    def __call__(self, event: Event) -> None:
        if event.event not in _PLAIN:
            return
        stamp = time.strftime("%H:%M:%S", time.localtime(event.ts))
        first, *rest = describe(event, self._t).splitlines() or [""]
        lines = [f"{stamp} {first}", *(f"         {line}" for line in rest)]
        with self._lock:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()


class LiveReporter:
    """A live block on a terminal: a line per target (stage, step, plugin, elapsed, progress).

    A fleet larger than the terminal, or rolled out in batches, is summarised (FleetBoard: a line per batch,
    the hosts at work in the current one, "… N more hosts"). The block is redrawn at most every
    ``redraw_every_s`` (and every second by a ticker), not at every event: with a thousand targets, events
    come by the thousand a second, and a redraw per event made the view's cost grow with targets².
    """

    def __init__(self, total_steps: int, stream: TextIO = sys.stderr, t: Translate | None = None, *,
                 redraw_every_s: float = 0.2, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = _Console(stream)
        self._t = t or translator()
        self._eta = EtaBoard()
        self._fleet = FleetBoard(self._eta.target)
        self._total = max(1, total_steps)
        self._lines: dict[str, str] = {}
        self._done: dict[str, int] = {}
        self._step_started: dict[str, float] = {}
        self._drawn = 0
        self._redraw_every_s = redraw_every_s
        self._clock = clock
        self._drawn_at: float | None = None
        self._lock = threading.Lock()
        self._started = clock()
        self._finished = threading.Event()
        self._ticker: threading.Thread | None = None
        self._paused = False

    def _clear(self) -> None:
        if self._drawn:
            self._stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _host_line(self, name: str) -> str:
        if name not in self._lines:
            return f"{name:<14} {status_label(self._fleet.status.get(name, 'waiting'), self._t)}"
        done = self._done.get(name, 0)
        bar_len = 20
        filled = int(bar_len * min(done, self._total) / self._total)
        since = self._step_started.get(name)
        step_elapsed = f" {time.time() - since:5.1f}s" if since else ""
        eta = self._eta.target(name, time.time())
        eta_text = self._t(" ETA {time}").format(time=_clock(eta)) if eta is not None else ""
        return (f"{name:<14} [{'#' * filled}{'.' * (bar_len - filled)}] {done:>3}/{self._total}{step_elapsed}"
                f"{eta_text} {self._lines[name]}")

    def _row_label(self, name: str) -> str:
        label = _ROW_LABELS.get(name)
        return self._t(label) if label is not None else name.split(".", 1)[1].replace("_", " ")

    def _where(self, event: Event) -> str:
        return f"[{_stage(event.stage, self._t)}] {event.step}"

    def _draw(self) -> None:
        size = shutil.get_terminal_size((100, 20))
        now = time.time()
        self._drawn_at = self._clock()
        if self._fleet.several or (self._fleet.batches and len(self._fleet.status) > max(4, size.lines - 4)):
            # Room for the notable lines above the block: a terminal that scrolls the block loses its top.
            lines = self._fleet.lines(now, self._host_line, max(4, size.lines - 4), _clock, self._t)
            run_eta = self._fleet.run_eta(now)
        else:
            lines = [self._host_line(name) for name in sorted(self._lines)]
            run_eta = self._eta.run(now)
        for line in lines:
            self._stream.write(line[: size.columns - 1] + "\n")
        run_eta_text = self._t(", run ETA {time}").format(time=_clock(run_eta)) if run_eta is not None else ""
        self._stream.write(self._t("elapsed {seconds} s{run_eta}").format(
            seconds=f"{self._clock() - self._started:6.1f}", run_eta=run_eta_text) + "\n")
        self._drawn = len(lines) + 1
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
        # Redraw every second so elapsed time moves while a step is quiet, and the block comes back after a
        # notable line cleared it and the redraw that would have followed was not yet due.
        while not self._finished.wait(1.0):
            with self._lock:
                if not self._paused:
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
            if event.event in _NOTABLE or event.event == "run.finished":
                self._clear()
                self._stream.write(describe(event, self._t) + "\n")
            self._eta.see(event)
            self._fleet.see(event)
            target = event.target
            if target:
                if event.event == "step.started":
                    self._step_started[target] = event.ts
                    self._lines[target] = f"{self._where(event)} ({event.plugin})"
                elif event.event in ("step.completed", "step.skipped"):
                    self._done[target] = self._done.get(target, 0) + 1
                elif event.event == "step.progress":
                    self._lines[target] = f"{self._where(event)} ({event.plugin}){progress_text(event, self._t)}"
                elif event.event in NETWORK_EVENTS and target in self._lines:
                    # The row says the link is down (or back) until the step's next progress or end.
                    what = self._row_label(event.event)
                    where = f"{self._where(event)} ({event.plugin}) " if event.step else ""
                    self._lines[target] = self._t("{where}network: {what}").format(where=where, what=what)
                elif event.event.startswith(("target.", "rollback.")):
                    self._step_started.pop(target, None)
                    self._lines[target] = self._row_label(event.event)
            due = self._drawn_at is None or self._clock() - self._drawn_at >= self._redraw_every_s
            if event.event != "run.finished" and due:
                self._clear()
                self._draw()
            self._stream.flush()
