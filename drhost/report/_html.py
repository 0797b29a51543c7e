"""``drhost report``: one self-contained HTML file about a run, from its state and its journal.

The page is drawn in the browser by a small inline script from a JSON blob embedded in the page, so the
same data a test reads is what the operator sees. Only run data goes in, never configuration values other
than the targets' names, hosts and groups and the rollout settings: a run's config may name secrets.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import html
import json
import os
import re
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from drhost_hookspecs import Stage

from ..errors import ExitCode, phrase_from_json, said_in
from ..events import NETWORK_EVENTS, Event
from ..i18n import N_, Translate, english, translator
from ..orchestrator import RUN_EXIT_CODES
from ..state import JournalSkips, RunState, atomic_write, iter_journal
from ..status import rollout_summary, run_next_commands, status_texts, target_next
from ._console import describe
from ._html_assets import CSS, SCRIPT

_EXIT_MEANINGS = {
    ExitCode.SUCCEEDED: N_("every target succeeded or was already up to date"),
    ExitCode.FAILED: N_("an unexpected end"),
    ExitCode.ROLLED_BACK: N_("targets were rolled back (verified)"),
    ExitCode.ROLLBACK_FAILED: N_("a target is inconsistent (rollback and recovery failed): act now"),
    ExitCode.ABORTED: N_("targets were left as they are (abort decision or the rollout stopped): resume or roll back"),
    ExitCode.INTERRUPTED: N_("targets are unfinished: resume or roll back"),
    ExitCode.REFUSED: N_("drhost refused to drive some targets"),
}
#: The page's own words: what its script wraps in ``L("...")`` (found in the script itself, so the two cannot
#: drift), and the words it shows for keys of the data (stages, outcomes, marker kinds, modes), with spaces for
#: underscores. Their translations travel in the data as ``labels``; the script is the same in every language,
#: so its hash in the page's Content-Security-Policy does not change.
_SCRIPT_IDS = tuple(re.findall(r'\bL\("([^"\\]*)"', SCRIPT))
_WORDS = (
    N_("precheck"), N_("backup"), N_("transfer"), N_("upgrade"), N_("postcheck"), N_("rollback"), N_("cleanup"),
    N_("resume"), N_("running"), N_("completed"), N_("failed"), N_("interrupted"), N_("unfinished"), N_("timeout"),
    N_("crashed"), N_("killed"), N_("memory"), N_("pids"), N_("cpu time"), N_("cancelled"), N_("skipped"),
    N_("verified"), N_("queued"), N_("done"), N_("failure"), N_("retry"), N_("warning"), N_("decision"),
    N_("network"),
)


def page_labels(t: Translate) -> dict[str, str]:
    """The translations of the page's words in the language of ``t`` (none in English: the ids are English)."""
    return {text: t(text) for text in (*_SCRIPT_IDS, *_WORDS, *status_texts()) if t(text) != text}
_EXIT_NAMES = {value: name for name, value in vars(ExitCode).items() if isinstance(value, int)}
#: The rollout keys a report may show; anything else under ``[rollout]`` stays out.
_ROLLOUT_KEYS = ("serial", "groups", "max_failed", "max_failed_total", "max_unreachable", "max_unreachable_total",
                 "pause_s", "approve")
#: Events that end a step attempt, and the outcome they stand for (``step.failed`` carries its own).
_STEP_ENDS = {"step.completed": "completed", "step.failed": "failed", "step.interrupted": "interrupted"}
_ROLLBACK_ENDS = {"rollback.verified": "verified", "rollback.failed": "failed", "target.inconsistent": "failed",
                  "target.rollback_queued": "queued", "target.interrupted": "interrupted"}
#: Events the timelines read in full; of every other event only its time and target matter (the journal is
#: mostly plugin.log and step.progress, and those are dropped as soon as they are read).
_READ_IN_FULL = frozenset({
    "run.started", "target.started", "stage.started", "stage.completed", "stage.failed", "step.started",
    *_STEP_ENDS, "step.skipped", "watchdog.timeout", "watchdog.warning", "stage.retry", "stage.decision",
    "stage.cleanup_started", "stage.cleanup_finished", "rollback.started", "rollback.stage", *_ROLLBACK_ENDS,
    "plugin.output_dropped", *NETWORK_EVENTS,
})
#: Per target, at most this many of each kind go into the report; the rest are counted in ``not_shown``, so a
#: report's memory and size do not grow with the journal.
SHOWN_PER_TARGET = {"markers": 500, "steps": 1000, "stages": 200, "cleanups": 200, "rollbacks": 50,
                    "rollback_parts": 200, "timeouts": 100, "output_dropped": 100}
#: A message (step failure, timeout block, ...) is cut to this many characters in the report.
MESSAGE_CHARS = 4000
#: Modes (drives of the run: upgrade, resume, rollback) listed at most.
MODES_SHOWN = 100
#: Events are written in the order they reach the journal, stamped a moment before by their thread: this many
#: events are enough to put them back in time order, and bound the memory it takes.
REORDER_WINDOW = 2048


def _cut(text: object) -> object:
    if isinstance(text, str) and len(text) > MESSAGE_CHARS:
        return f"{text[:MESSAGE_CHARS]} [... {len(text) - MESSAGE_CHARS} more characters]"
    return text


def _slim(events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each event as little as the report needs: messages cut; of events it does not draw, time and target."""
    for event in events:
        if "ts" not in event:
            continue
        if event.get("event") not in _READ_IN_FULL:
            yield {"ts": event["ts"], "event": event.get("event"), "target": event.get("target")}
            continue
        if "message" in event:
            event["message"] = _cut(event["message"])
        yield event


def _in_time_order(events: Iterable[dict[str, Any]], window: int = REORDER_WINDOW) -> Iterator[dict[str, Any]]:
    """The events by time (journal order among equal times), sorted within a sliding window of ``window``."""
    heap: list[tuple[float, int, dict[str, Any]]] = []
    for seq, event in enumerate(events):
        heapq.heappush(heap, (float(event["ts"]), seq, event))
        if len(heap) > window:
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


def _message(event: Mapping[str, Any]) -> str:
    """The event's message, as the phrase its wording describes when it has one (so it can be said)."""
    return phrase_from_json(str(event.get("message") or ""), event.get("wording"))


def _said(event: Mapping[str, Any], t: Translate) -> str | None:
    """The event's message in the language of ``t``; None when it has none."""
    return said_in(_message(event), t) if event.get("message") else None


def _title(event: Mapping[str, Any], t: Translate) -> str:
    """The console's line for an event, without the target (the row already names it)."""
    fields = {k: event.get(k) for k in ("stage", "step", "plugin")}
    rebuilt = Event(str(event["event"]), str(event.get("run_id", "")), message=_message(event),
                    data=event.get("data") or {}, ts=float(event["ts"]), **fields)
    return describe(rebuilt, t)


class _Timeline:
    """One target's bars and markers, built from its events in journal order."""

    def __init__(self, t: Translate) -> None:
        self._t = t
        self.stages: list[dict[str, Any]] = []
        self.loose_steps: list[dict[str, Any]] = []
        self.cleanups: list[dict[str, Any]] = []
        self.markers: list[dict[str, Any]] = []
        self.rollbacks: list[dict[str, Any]] = []
        self.timeouts: list[dict[str, Any]] = []
        self.output_dropped: list[dict[str, Any]] = []
        self.not_shown: Counter[str] = Counter()
        self._steps_shown = 0
        self.started: float | None = None
        self.last: float | None = None
        self._open_stage: dict[str, dict[str, Any]] = {}
        self._open_steps: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._open_cleanup: dict[str, dict[str, Any]] = {}

    def _keep(self, kind: str, into: list[dict[str, Any]], item: dict[str, Any]) -> None:
        """Append ``item`` while ``kind`` has room (``SHOWN_PER_TARGET``); count it otherwise."""
        if len(into) < SHOWN_PER_TARGET[kind]:
            into.append(item)
        else:
            self.not_shown[kind] += 1

    def _marker(self, kind: str, event: Mapping[str, Any], title: str | None = None) -> None:
        if len(self.markers) >= SHOWN_PER_TARGET["markers"]:
            self.not_shown["markers"] += 1  # before building the title: counting must stay cheap
            return
        self.markers.append({"kind": kind, "ts": event["ts"], "stage": event.get("stage"), "step": event.get("step"),
                             "title": title if title is not None else _title(event, self._t)})

    def close_open(self, outcome: str) -> None:
        """A controller that stopped mid-stage leaves bars open: they end where the target was last seen."""
        end = self.last
        for bar in [*self._open_steps.values(), *self._open_stage.values(), *self._open_cleanup.values()]:
            bar["end"], bar["outcome"] = end, outcome
        self._open_steps.clear()
        self._open_stage.clear()
        self._open_cleanup.clear()
        if self.rollbacks and self.rollbacks[-1]["outcome"] == "running":
            self.rollbacks[-1]["outcome"] = outcome

    def see(self, event: Mapping[str, Any]) -> None:
        name, ts = str(event["event"]), float(event["ts"])
        data: Mapping[str, Any] = event.get("data") or {}
        stage, step, plugin = event.get("stage"), event.get("step"), event.get("plugin")
        self.last = ts if self.last is None else max(self.last, ts)
        if name not in _READ_IN_FULL:
            return
        if name == "target.started" and self.started is None:
            self.started = ts
        bar: dict[str, Any] | None
        if name == "stage.started":
            bar = {"stage": stage, "start": ts, "end": None, "outcome": "running", "steps": []}
            self._keep("stages", self.stages, bar)
            if self.stages[-1] is not bar:
                bar["hidden"] = True  # over the limit: never in the report, and neither are its steps
            self._open_stage[str(stage)] = bar
        elif name in ("stage.completed", "stage.failed") and str(stage) in self._open_stage:
            bar = self._open_stage.pop(str(stage))
            bar["end"], bar["outcome"] = ts, "completed" if name == "stage.completed" else "failed"
            if name == "stage.failed":
                bar["message"] = _said(event, self._t)
                self._marker("failure", event)
        elif name == "step.started":
            bar = {"stage": stage, "step": step, "plugin": plugin, "attempt": data.get("attempt"),
                   "attempts": data.get("attempts"), "timeout_s": data.get("timeout_s"), "start": ts, "end": None,
                   "outcome": "running"}
            owner = self._open_stage.get(str(stage))
            if self._steps_shown < SHOWN_PER_TARGET["steps"] and not (owner or {}).get("hidden"):
                self._steps_shown += 1
                (owner["steps"] if owner is not None else self.loose_steps).append(bar)
            else:
                self.not_shown["steps"] += 1
            self._open_steps[(str(stage), str(step), str(plugin))] = bar
            if int(data.get("attempt") or 1) > 1:
                said = self._t("retry: attempt {attempt}/{attempts} of [{stage}] {step} ({plugin})")
                self._marker("retry", event, said.format(attempt=data.get("attempt"), attempts=data.get("attempts"),
                                                         stage=stage, step=step, plugin=plugin))
        elif name in _STEP_ENDS:
            bar = self._open_steps.pop((str(stage), str(step), str(plugin)), None)
            if bar is not None:
                bar["end"] = ts
                bar["outcome"] = str(data.get("ended") or _STEP_ENDS[name])
                bar["duration_s"] = data.get("duration_s")
                if name != "step.completed":
                    bar["message"] = _said(event, self._t)
            if name == "step.failed":
                self._marker("failure", event)
        elif name == "step.skipped":
            self._marker("skipped", event)
        elif name == "watchdog.timeout":
            self._marker("timeout", event, self._t("timeout: [{stage}] {step} ({plugin}), attempt {attempt}").format(
                stage=stage, step=step, plugin=plugin, attempt=data.get("attempt")))
            if len(self.timeouts) < SHOWN_PER_TARGET["timeouts"]:
                self.timeouts.append({"stage": stage, "step": step, "plugin": plugin, "attempt": data.get("attempt"),
                                      "ts": ts, "message": _said(event, self._t) or _cut(_title(event, self._t))})
            else:
                self.not_shown["timeouts"] += 1
        elif name == "plugin.output_dropped":
            self._keep("output_dropped", self.output_dropped, {
                "ts": ts, "stage": stage, "step": step, "plugin": plugin, "message": _said(event, self._t),
                **{k: data.get(k) for k in ("log_lines", "log_bytes", "truncated", "progress")}})
        elif name == "watchdog.warning":
            self._marker("warning", event)
        elif name in NETWORK_EVENTS:
            self._marker("network", event)
        elif name == "stage.retry":
            self._marker("retry", event)
        elif name == "stage.decision":
            self._marker("decision", event)
        elif name == "stage.cleanup_started":
            bar = {"stage": stage, "start": ts, "end": None, "outcome": "running"}
            self._keep("cleanups", self.cleanups, bar)
            self._open_cleanup[str(stage)] = bar
        elif name == "stage.cleanup_finished" and str(stage) in self._open_cleanup:
            bar = self._open_cleanup.pop(str(stage))
            bar["end"], bar["outcome"] = ts, "failed" if data.get("errors") else "completed"
        elif name == "rollback.started":
            if len(self.rollbacks) >= SHOWN_PER_TARGET["rollbacks"]:
                # The last one shown is the one that goes on: only the latest rollbacks matter for the outcome.
                self.not_shown["rollbacks"] += 1
                self.rollbacks.pop(0)
            self.rollbacks.append({"start": ts, "end": None, "outcome": "running", "stages": data.get("stages", []),
                                   "parts": []})
        elif self.rollbacks and name == "rollback.stage":
            rollback = self.rollbacks[-1]
            begin = rollback["parts"][-1]["end"] if rollback["parts"] else rollback["start"]
            self._keep("rollback_parts", rollback["parts"], {
                "stage": stage, "start": begin, "end": ts, "status": data.get("status"),
                "title": _title(event, self._t) + (f"; rule: {data['rule']}" if data.get("rule") else "")})
        elif self.rollbacks and name in _ROLLBACK_ENDS and self.rollbacks[-1]["outcome"] == "running":
            self.rollbacks[-1]["outcome"] = _ROLLBACK_ENDS[name]
            self.rollbacks[-1]["message"] = _said(event, self._t)

    def to_json(self) -> dict[str, Any]:
        # A rollback's bar runs to the target's end (its verification and what followed belong to it), or to the
        # next rollback of the target (`drhost rollback RUN` after an inconsistent one), so the two never overlap.
        for index, rollback in enumerate(self.rollbacks):
            later = self.rollbacks[index + 1:]
            rollback["end"] = later[0]["start"] if later else self.last
        return {"stages": self.stages, "loose_steps": self.loose_steps, "cleanups": self.cleanups,
                "markers": self.markers, "rollbacks": self.rollbacks, "timeouts": self.timeouts,
                "output_dropped": self.output_dropped, "not_shown": dict(sorted(self.not_shown.items())),
                "started": self.started, "last": self.last}


class _Journal:
    """What the report takes from the journal, read once, front to back, in bounded memory."""

    def __init__(self, targets: Collection[str], t: Translate) -> None:
        self._targets = targets
        self._t = t
        self.timelines: dict[str, _Timeline] = {}
        self.modes: list[str] = []
        self.drives = 0
        self.first: float | None = None
        self.last: float | None = None
        self.run_started: float | None = None

    def read(self, events: Iterable[dict[str, Any]]) -> _Journal:
        for event in _in_time_order(_slim(events)):
            ts = float(event["ts"])
            self.first = ts if self.first is None else min(self.first, ts)
            self.last = ts if self.last is None else max(self.last, ts)
            if event.get("event") == "run.started":
                self._run_started(event, ts)
            target = event.get("target")
            # Only the run's own targets get a row: a timeline per name found would grow with the journal.
            if target is not None and str(target) in self._targets:
                self.timelines.setdefault(str(target), _Timeline(self._t)).see(event)
        for timeline in self.timelines.values():
            timeline.close_open("unfinished")
        return self

    def _run_started(self, event: Mapping[str, Any], ts: float) -> None:
        self.drives += 1
        self.run_started = ts if self.run_started is None else min(self.run_started, ts)
        if len(self.modes) < MODES_SHOWN:
            self.modes.append(str((event.get("data") or {}).get("mode", "upgrade")))
        if self.drives > 1:
            for timeline in self.timelines.values():
                timeline.close_open("interrupted")


def _not_started_reason(name: str, rollout: Mapping[str, Any], batches: list[dict[str, Any]], t: Translate) -> str:
    stopped = rollout.get("stopped")
    if stopped and name in stopped.get("not_started", []):
        return t("not started: rollout stopped")
    waiting = rollout.get("waiting")
    if waiting is not None and name in batches[waiting]["targets"]:
        return t("not started: batch {batch} waits for approval").format(batch=waiting + 1)
    return t("not started")


def _target(name: str, body: Mapping[str, Any], timeline: _Timeline | None, batch: int, not_started: str,
            t: Translate) -> dict[str, Any]:
    record = body["targets"][name]
    config = body.get("config", {}).get("targets", {}).get(name, {})
    status = str(record.get("status"))
    rollback = record.get("rollback") or {}
    plugins = {p: e for p, e in (record.get("plugins") or {}).items() if e.get("ended") != "ok"}
    return {
        "name": name, "host": config.get("host"), "group": config.get("group"), "batch": batch, "status": status,
        "version_before": record.get("version_before"), "version": record.get("version"),
        "errors": [{k: e.get(k) for k in ("ts", "stage", "step", "plugin", "message", "action")}
                   for e in record.get("errors") or []],
        "rollback_errors": [*rollback.get("errors", []), *rollback.get("problems", [])],
        "plugins": plugins, "manual_procedure": record.get("manual_procedure"), "evidence": record.get("evidence"),
        "next": target_next(name, status, dict(record), t).replace("RUN", str(body["run_id"])),
        "not_started": not_started if status == "pending" and (timeline is None or timeline.started is None) else None,
        **(timeline.to_json() if timeline is not None else {}),
    }


def report_data(run_dir: Path, t: Translate = english) -> dict[str, Any]:
    """Everything the page shows, as plain JSON: the summary, the rollout, each target's timeline and details;
    its words in the language of ``t`` (the keys and the statuses stay the state's)."""
    state = RunState.open(run_dir)
    body = state.snapshot()
    path = run_dir / "events.jsonl"
    skips = JournalSkips()
    journal = _Journal(set(body["targets"]), t).read(iter_journal(path, skips) if path.exists() else ())
    timelines, modes = journal.timelines, journal.modes
    rollout = rollout_summary(body, t)
    batches = (body.get("rollout") or {}).get("batches") or [{"index": 0, "group": None,
                                                             "targets": sorted(body["targets"])}]
    record = body.get("rollout") or {}
    batch_of = {name: i for i, b in enumerate(batches) for name in b["targets"]}
    targets = [_target(name, body, timelines.get(name), batch_of.get(name, len(batches) - 1),
                       _not_started_reason(name, record, batches, t), t)
               for name in sorted(body["targets"], key=lambda n: (batch_of.get(n, len(batches)), n))]
    run_started = journal.run_started
    started = run_started if run_started is not None else body.get("created")
    finished = body.get("finished")
    status = str(body["status"])
    code = RUN_EXIT_CODES.get(status, ExitCode.FAILED) if status not in ("running", "rolling_back", "created") \
        else None
    settings = (body.get("config") or {}).get("rollout") or {}
    return {
        "run": {
            "id": body["run_id"], "modes": modes or ["upgrade"], "modes_not_shown": journal.drives - len(modes),
            "status": status, "exit_code": code,
            "exit_name": _EXIT_NAMES.get(code) if code is not None else None,
            "exit_meaning": t(_EXIT_MEANINGS.get(code, "")) if code is not None
            else t("not finished: no exit code yet"),
            "package": (body.get("package") or {}).get("version"), "started": started, "finished": finished,
            "duration_s": None if finished is None or started is None else round(float(finished) - started, 3),
            "counts": dict(sorted(Counter(t["status"] for t in targets).items())),
            "weaker_isolation": body.get("weaker_isolation"), "recovered_from": state.recovered_from,
            "journal_skipped": skips.describe(path),
            "generated": time.time(),
        },
        "rollout": {
            "batches": [{"index": i, "group": b.get("group"), "targets": list(b["targets"])}
                        for i, b in enumerate(batches)],
            "stopped": rollout["stopped"], "waiting": rollout["waiting"], "lines": rollout["lines"],
            "settings": {k: settings[k] for k in _ROLLOUT_KEYS if k in settings},
        },
        "next": run_next_commands(body, rollout, t),
        "axis": {"start": journal.first if journal.first is not None else started,
                 "end": journal.last if journal.last is not None else finished},
        "stages": [stage.value for stage in Stage.ordered()],
        "targets": targets,
        "labels": page_labels(t),
    }


def _embed(data: Mapping[str, Any]) -> str:
    """JSON that cannot end its ``<script>`` element early: ``<``, ``>`` and ``&`` only occur escaped."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _noscript(data: Mapping[str, Any], t: Translate) -> str:
    """The summary without the script: run facts and one row per target."""
    e = html.escape
    run = data["run"]
    rows = "".join(
        f"<tr><td>{e(str(row['name']))}</td><td>{e(str(row['status']))}</td><td>{row['batch'] + 1}</td>"
        f"<td>{e(str(row.get('version_before') or '-'))}</td><td>{e(str(row.get('version') or '-'))}</td>"
        f"<td>{e(str(row['next']))}</td></tr>" for row in data["targets"])
    lines = "".join(f"<li>{e(line)}</li>" for line in [*data["rollout"]["lines"], *data["next"]])
    heads = "".join(f"<th>{e(t(head))}</th>" for head in (N_("target"), N_("status"), N_("batch"),
                                                           N_("version before"), N_("version after"), N_("next")))
    said = t("run {run_id}: {status} (exit {exit_code}), package {package}. The timeline needs JavaScript.").format(
        run_id=run["id"], status=run["status"], exit_code=run["exit_code"], package=run["package"])
    return (f"<noscript><p>{e(said)}</p><ul>{lines}</ul>"
            f"<table><thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table></noscript>")


def build_report(run_dir: Path, t: Translate | None = None) -> str:
    """The report page of the run in ``run_dir``: one HTML document that loads nothing from anywhere; its words
    in the language of ``t`` (default: the operator's locale)."""
    t = t or translator()
    data = report_data(run_dir, t)
    # Only this page's own style and script may run: a message that smuggled markup in could not load anything.
    policy = (f"default-src 'none'; style-src {_csp_hash(CSS)}; script-src {_csp_hash(SCRIPT)}; img-src data:; "
              f"base-uri 'none'; form-action 'none'")
    lang = "zh-CN" if t("run") != "run" else "en"
    return (
        f"<!DOCTYPE html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{html.escape(policy)}\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(t('drhost run {run_id}').format(run_id=data['run']['id']))}</title>"
        f"<style>{CSS}</style></head><body>"
        f"<main id=\"report\"></main>{_noscript(data, t)}"
        f"<script type=\"application/json\" id=\"run-data\">{_embed(data)}</script>"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def write_report(run_dir: Path, out: Path | None = None, t: Translate | None = None) -> Path:
    """Write the report (default ``RUN_DIR/report.html``) atomically, readable by the owner only."""
    path = out if out is not None else run_dir / "report.html"
    atomic_write(path, build_report(run_dir, t).encode("utf-8"), 0o600)
    # atomic_write's mode is filtered by the umask; a stricter umask must not leave the report unreadable.
    os.chmod(path, 0o600)
    return path


__all__ = ["build_report", "page_labels", "report_data", "write_report"]
