"""The style and the script of ``drhost report``'s page, inlined into every report.

Kept as strings rather than package files: the package data patterns ship no ``.css``/``.js``.
The script builds every element with ``createElement``/``textContent``; run data never becomes markup.
"""

CSS = """
:root { --fg: #1d2430; --muted: #5b6574; --line: #d8dde5; --bg: #ffffff; --panel: #f5f7fa;
  --precheck: #6c8ebf; --backup: #9673a6; --transfer: #d79b00; --upgrade: #2e8b57; --postcheck: #1b9aaa;
  --bad: #c62828; --warn: #ef6c00; --ok: #2e7d32; --rollback: #8d6e63; }
* { box-sizing: border-box; }
body { margin: 0; padding: 20px 28px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
h1 { font-size: 22px; margin: 0 0 12px; } h2 { font-size: 17px; margin: 26px 0 10px; }
h3 { font-size: 15px; margin: 0 0 8px; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; }
.facts dt { color: var(--muted); } .facts dd { margin: 0; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
  background: var(--panel); border: 1px solid var(--line); }
.badge.s-succeeded, .badge.s-up_to_date { background: #e8f5e9; border-color: #a5d6a7; color: var(--ok); }
.badge.s-rolled_back, .badge.s-aborted, .badge.s-interrupted, .badge.s-unreachable, .badge.s-locked {
  background: #fff3e0; border-color: #ffcc80; color: #a84300; }
.badge.s-failed, .badge.s-inconsistent, .badge.s-rollback_failed { background: #ffebee; border-color: #ef9a9a;
  color: var(--bad); }
.notice { padding: 8px 12px; border-left: 4px solid var(--warn); background: #fff8e1; margin: 8px 0; }
.notice.stop-reason { border-color: var(--bad); background: #ffebee; }
.batches { margin: 6px 0; padding-left: 22px; }
pre { background: var(--panel); border: 1px solid var(--line); padding: 8px 10px; overflow-x: auto;
  white-space: pre-wrap; margin: 6px 0; font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 14px; margin: 6px 0 12px; font-size: 12px; color: var(--muted); }
.legend span { display: inline-flex; align-items: center; gap: 4px; }
.swatch { width: 14px; height: 10px; display: inline-block; border-radius: 2px; }
.timeline { border: 1px solid var(--line); border-radius: 6px; overflow: hidden; }
.row { display: grid; grid-template-columns: 220px 1fr; border-top: 1px solid var(--line); min-height: 60px; }
.row.axis { min-height: 26px; border-top: 0; background: var(--panel); }
.label { padding: 6px 10px; border-right: 1px solid var(--line); overflow: hidden; }
.label .name { font-weight: 600; display: block; overflow-wrap: anywhere; }
.track { position: relative; margin: 0 14px; }
.tick { position: absolute; top: 5px; font-size: 11px; color: var(--muted); transform: translateX(-50%);
  white-space: nowrap; }
.gridline { position: absolute; top: 0; bottom: 0; border-left: 1px dashed #e6e9ee; }
.batch-header { padding: 6px 10px; background: #eef1f6; border-top: 1px solid var(--line); font-weight: 600; }
.batch-header .muted { font-weight: 400; color: var(--muted); }
.bar { position: absolute; border-radius: 3px; min-width: 2px; }
.bar.stage { top: 14px; height: 24px; }
.bar.stage.outcome-failed { box-shadow: inset 0 0 0 2px var(--bad); }
.bar.step { top: 5px; height: 14px; background: rgba(255, 255, 255, 0.55);
  border: 1px solid rgba(0, 0, 0, 0.35); border-radius: 2px; }
.bar.step.outcome-failed, .bar.step.outcome-timeout, .bar.step.outcome-crashed, .bar.step.outcome-memory,
.bar.step.outcome-protocol { background: #ffcdd2; border-color: var(--bad); }
.bar.step.outcome-interrupted, .bar.step.outcome-unfinished, .bar.step.outcome-cancelled { background: #fff3e0; }
.bar.rollback { top: 41px; height: 14px; background: repeating-linear-gradient(135deg, #d7ccc8 0 6px, #efebe9 6px 12px);
  border: 1px solid var(--rollback); }
.bar.rollback.outcome-failed { border-color: var(--bad); }
.bar.rb-part { top: 2px; height: 8px; background: var(--rollback); border-radius: 2px; }
.bar.rb-part.status-failed { background: var(--bad); }
.bar.cleanup { top: 41px; height: 14px; background: repeating-linear-gradient(45deg, #cfd8dc 0 4px, #eceff1 4px 8px);
  border: 1px solid #90a4ae; }
.marker { position: absolute; top: 0; transform: translateX(-50%); font-size: 11px; line-height: 14px;
  min-width: 14px; height: 14px; text-align: center; border-radius: 7px; color: #fff; z-index: 2; cursor: default; }
.marker-timeout { background: var(--bad); } .marker-failure { background: #b71c1c; }
.marker-retry { background: #1565c0; } .marker-warning { background: var(--warn); }
.marker-decision { background: #4a148c; } .marker-skipped { background: #757575; }
.marker-network { background: #e65100; }
.empty { position: absolute; top: 20px; left: 0; color: var(--muted); font-style: italic; }
.row.not-started .track { background: repeating-linear-gradient(90deg, transparent 0 8px, #f3f4f6 8px 16px); }
.target-details { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; margin: 10px 0; }
.target-details ul { margin: 4px 0; padding-left: 20px; }
.stage-precheck { background: var(--precheck); } .stage-backup { background: var(--backup); }
.stage-transfer { background: var(--transfer); } .stage-upgrade { background: var(--upgrade); }
.stage-postcheck { background: var(--postcheck); }
.muted { color: var(--muted); }
"""

SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("run-data").textContent);
  var root = document.getElementById("report");
  var axis = data.axis, span = Math.max((axis.end || 0) - (axis.start || 0), 0.001);
  // The page's words in the operator's language: data.labels maps an English text to its translation (absent in
  // English); {name} fields are filled after translation, as drhost.i18n does.
  var LABELS = data.labels || {};
  function L(text, fields) {
    var out = Object.prototype.hasOwnProperty.call(LABELS, text) ? LABELS[text] : text;
    return fields ? out.replace(/\{(\w+)\}/g, function (m, k) { return k in fields ? String(fields[k]) : m; }) : out;
  }
  function word(key) { var text = String(key).replace(/_/g, " "); return L(text); }
  var GLYPHS = {timeout: "\u23f1", failure: "\u2715", retry: "\u21bb", warning: "!", decision: "?", skipped: "\u2013",
                network: "\u21af"};

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function add(parent, child) { parent.appendChild(child); return child; }
  function seconds(s) {
    if (s === null || s === undefined) { return "-"; }
    if (s < 60) { return (s < 10 ? s.toFixed(2) : s.toFixed(1)) + " s"; }
    var m = Math.floor(s / 60), r = Math.round(s - 60 * m);
    return m < 60 ? m + "m" + (r < 10 ? "0" : "") + r + "s" : Math.floor(m / 60) + "h" + (m % 60) + "m";
  }
  function clock(ts) {
    return ts ? new Date(ts * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "-";
  }
  function pct(ts) { return Math.min(100, Math.max(0, (ts - axis.start) / span * 100)); }
  function place(node, start, end) {
    var left = pct(start);
    node.style.left = left + "%";
    node.style.width = Math.max(0, pct(end === null ? axis.end : end) - left) + "%";
    return node;
  }
  function badge(status) { return el("span", "badge s-" + status, word(status)); }
  function fact(list, name, value) {
    add(list, el("dt", null, name));
    var dd = add(list, el("dd"));
    if (value instanceof Node) { dd.appendChild(value); } else { dd.textContent = String(value); }
    return dd;
  }

  function summary() {
    var run = data.run;
    add(root, el("h1", null, L("drhost run {run_id}", {run_id: run.id})));
    var facts = add(root, el("dl", "facts"));
    facts.id = "summary";
    fact(facts, L("run"), run.id);
    fact(facts, L("mode"), run.modes.map(word).join(L(", then ")));
    fact(facts, L("status"), badge(run.status));
    fact(facts, L("exit"), run.exit_code === null ? run.exit_meaning
      : run.exit_code + " " + run.exit_name + ": " + run.exit_meaning).className = "exit";
    fact(facts, L("package"), run.package || "-");
    fact(facts, L("started"), clock(run.started));
    fact(facts, L("finished"), run.finished ? clock(run.finished) : L("not finished"));
    fact(facts, L("duration"), seconds(run.duration_s));
    var counts = Object.keys(run.counts).map(function (k) { return run.counts[k] + " " + word(k); });
    fact(facts, L("targets"), counts.join(", ")).className = "counts";
    if (run.weaker_isolation) { fact(facts, L("weaker isolation"), run.weaker_isolation); }
    if (run.recovered_from) {
      fact(facts, L("state"), L("previous generation used: {why}", {why: run.recovered_from}));
    }
    if (run.journal_skipped) {
      fact(facts, L("journal"), L("events incomplete: {what}", {what: run.journal_skipped}));
    }
  }

  function rollout() {
    var r = data.rollout;
    add(root, el("h2", null, L("Rollout")));
    var keys = Object.keys(r.settings);
    if (keys.length) {
      var text = keys.map(function (k) { return k + " = " + (r.settings[k] === "" ? "-" : r.settings[k]); })
        .join(" \u00b7 ");
      add(root, el("p", "muted settings", text));
    }
    var list = add(root, el("ol", "batches"));
    var status = {};
    data.targets.forEach(function (t) { status[t.name] = word(t.status); });
    r.batches.forEach(function (b) {
      var names = b.targets.map(function (n) { return n + " (" + status[n] + ")"; });
      var item = add(list, el("li", null, (b.group ? L("group {group}: ", {group: b.group}) : "") + names.join(", ")));
      item.setAttribute("data-batch", String(b.index));
    });
    if (r.stopped) {
      var stop = add(root, el("div", "notice stop-reason",
        L("rollout stopped in batch {batch}: {reason}", {batch: r.stopped.batch + 1, reason: r.stopped.reason})));
      add(stop, el("div", "not-started-list",
        L("not started: {targets}", {targets: r.stopped.not_started.join(", ") || L("none")})));
    }
    if (r.waiting !== null && r.waiting !== undefined) {
      add(root, el("div", "notice waiting", L("waiting for approval of batch {batch}: {targets}",
        {batch: r.waiting + 1, targets: r.batches[r.waiting].targets.join(", ")})));
    }
    add(root, el("h2", null, L("Next")));
    add(root, el("pre", "next", data.next.length ? data.next.join("\n") : L("nothing to do")));
  }

  function legend() {
    var box = add(root, el("div", "legend"));
    data.stages.forEach(function (s) {
      var item = add(box, el("span"));
      add(item, el("i", "swatch stage-" + s));
      add(item, document.createTextNode(word(s)));
    });
    [["bar rollback", "rollback"], ["bar cleanup", "cleanup"]].forEach(function (p) {
      var item = add(box, el("span"));
      var sw = add(item, el("i", "swatch " + p[0]));
      sw.style.position = "static";
      add(item, document.createTextNode(word(p[1])));
    });
    Object.keys(GLYPHS).forEach(function (k) {
      var item = add(box, el("span"));
      var m = add(item, el("i", "marker marker-" + k, GLYPHS[k]));
      m.style.position = "static"; m.style.transform = "none";
      add(item, document.createTextNode(word(k)));
    });
  }

  function axisRow(box) {
    var row = add(box, el("div", "row axis"));
    add(row, el("div", "label muted", L("from {time}", {time: clock(axis.start)})));
    var track = add(row, el("div", "track"));
    var steps = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
    var step = steps.filter(function (s) { return span / s <= 10; })[0] || span / 10;
    for (var t = 0; t <= span + 1e-9; t += step) {
      var tick = add(track, el("span", "tick", "+" + (step >= 1 && t < 60 ? Math.round(t) + " s" : seconds(t))));
      tick.style.left = (t / span * 100) + "%";
    }
  }

  function stepTitle(s) {
    return s.step + " (" + s.plugin + ")\n"
      + L("stage {stage}, attempt {attempt}/{attempts}",
          {stage: word(s.stage), attempt: s.attempt, attempts: s.attempts})
      + "\n" + L("duration {time}", {time: seconds(s.duration_s !== undefined && s.duration_s !== null ? s.duration_s
        : (s.end || axis.end) - s.start)})
      + "\n" + L("outcome: {outcome}", {outcome: word(s.outcome)}) + (s.message ? "\n" + s.message : "");
  }
  function stepBar(parent, s, from, length) {
    var bar = add(parent, el("div", "bar step outcome-" + s.outcome));
    var end = s.end === null ? axis.end : s.end;
    bar.style.left = (length > 0 ? (s.start - from) / length * 100 : 0) + "%";
    bar.style.width = (length > 0 ? (end - s.start) / length * 100 : 0) + "%";
    bar.title = stepTitle(s);
    bar.setAttribute("data-step", s.step);
    bar.setAttribute("data-attempt", String(s.attempt));
    bar.setAttribute("data-outcome", s.outcome);
  }

  function targetRow(box, t) {
    var row = add(box, el("div", "row target" + (t.not_started ? " not-started" : "")));
    row.setAttribute("data-target", t.name);
    row.setAttribute("data-status", t.status);
    var label = add(row, el("div", "label"));
    add(label, el("span", "name", t.name));
    add(label, badge(t.status));
    var track = add(row, el("div", "track"));
    if (t.not_started) {
      add(track, el("span", "empty", t.not_started));
      return;
    }
    (t.stages || []).forEach(function (s) {
      var bar = place(add(track, el("div", "bar stage stage-" + s.stage + " outcome-" + s.outcome)), s.start, s.end);
      var end = s.end === null ? axis.end : s.end;
      bar.title = L("stage {stage}: {outcome}", {stage: word(s.stage), outcome: word(s.outcome)}) + "\n"
        + clock(s.start) + " \u2192 " + clock(s.end)
        + " (" + seconds(end - s.start) + ")" + (s.message ? "\n" + s.message : "");
      bar.setAttribute("data-stage", s.stage);
      s.steps.forEach(function (step) { stepBar(bar, step, s.start, end - s.start); });
    });
    (t.loose_steps || []).forEach(function (s) {
      var holder = place(add(track, el("div", "bar stage-free")), axis.start, axis.end);
      holder.style.top = "14px";
      stepBar(holder, s, axis.start, span);
    });
    (t.cleanups || []).forEach(function (c) {
      var bar = place(add(track, el("div", "bar cleanup outcome-" + c.outcome)), c.start, c.end);
      bar.title = L("cleanup of stage {stage}: {outcome}", {stage: word(c.stage), outcome: word(c.outcome)});
    });
    (t.rollbacks || []).forEach(function (r) {
      var bar = place(add(track, el("div", "bar rollback outcome-" + r.outcome)), r.start, r.end);
      bar.title = L("rollback ({outcome}): stages {stages}",
                    {outcome: word(r.outcome), stages: r.stages.map(word).join(", ")})
        + (r.message ? "\n" + r.message : "");
      var length = (r.end === null ? axis.end : r.end) - r.start;
      r.parts.forEach(function (p) {
        var part = add(bar, el("div", "bar rb-part status-" + p.status));
        part.style.left = (length > 0 ? (p.start - r.start) / length * 100 : 0) + "%";
        part.style.width = (length > 0 ? (p.end - p.start) / length * 100 : 0) + "%";
        part.title = p.title;
        part.setAttribute("data-stage", p.stage);
      });
    });
    // Markers of one moment (a timeout, its failure, the retry) would hide each other: later ones move right.
    var width = track.clientWidth || 1000, lastPx = -Infinity;
    (t.markers || []).slice().sort(function (a, b) { return a.ts - b.ts; }).forEach(function (m) {
      var mark = add(track, el("span", "marker marker-" + m.kind, GLYPHS[m.kind] || "\u2022"));
      var px = pct(m.ts) / 100 * width, shift = Math.max(0, lastPx + 15 - px);
      lastPx = px + shift;
      mark.style.left = "calc(" + pct(m.ts) + "% + " + shift + "px)";
      mark.title = m.title;
      mark.setAttribute("data-kind", m.kind);
    });
  }

  function timeline() {
    add(root, el("h2", null, L("Timeline")));
    legend();
    var box = add(root, el("div", "timeline"));
    box.id = "timeline";
    axisRow(box);
    var r = data.rollout;
    r.batches.forEach(function (b) {
      var header = add(box, el("div", "batch-header",
        L("batch {number} of {count}", {number: b.index + 1, count: r.batches.length})));
      header.setAttribute("data-batch", String(b.index));
      var more = (b.group ? " \u00b7 " + L("group {group}", {group: b.group}) : "") + " \u00b7 "
        + (b.targets.length === 1 ? L("1 target") : L("{count} targets", {count: b.targets.length}));
      if (r.stopped && r.stopped.batch === b.index) { more += " \u00b7 " + L("rollout stopped here"); }
      if (r.waiting === b.index) { more += " \u00b7 " + L("waits for approval"); }
      add(header, el("span", "muted", more));
      data.targets.filter(function (t) { return t.batch === b.index; }).forEach(function (t) { targetRow(box, t); });
    });
  }

  // What report_data leaves out past its per-target limits (not_shown), in words.
  var HIDDEN = {markers: L("markers"), steps: L("step bars"), stages: L("stage bars"), cleanups: L("cleanup bars"),
    rollbacks: L("rollbacks"), rollback_parts: L("rollback parts"), timeouts: L("timeout reports"),
    output_dropped: L("output notes")};

  function listSection(parent, title, items, render) {
    if (!items || !items.length) { return; }
    add(parent, el("h4", null, title));
    var list = add(parent, el("ul"));
    items.forEach(function (item) { add(list, el("li", null, render(item))); });
  }

  function details() {
    add(root, el("h2", null, L("Targets")));
    data.targets.forEach(function (t) {
      var box = add(root, el("section", "target-details"));
      box.setAttribute("data-target", t.name);
      var h = add(box, el("h3", null, t.name + " "));
      add(h, badge(t.status));
      var facts = add(box, el("dl", "facts"));
      fact(facts, L("batch"), (t.batch + 1) + (t.group ? " " + L("(group {group})", {group: t.group}) : ""));
      if (t.host) { fact(facts, L("host"), t.host); }
      fact(facts, L("version before"), t.version_before || "-");
      fact(facts, L("version after"), t.version || "-");
      if (t.not_started) { fact(facts, L("started"), t.not_started); }
      (t.rollbacks || []).forEach(function (r) {
        var parts = r.parts.map(function (p) { return word(p.stage) + " " + word(p.status); });
        fact(facts, L("rollback"), word(r.outcome) + (parts.length ? ": " + parts.join(", ") : ""))
          .className = "rollback";
      });
      fact(facts, L("next"), t.next);
      listSection(box, L("Errors"), t.errors, function (e) {
        return clock(e.ts) + " [" + (e.stage || "-") + "] " + (e.step ? e.step + " " : "") + (e.plugin || "")
          + ": " + e.message + (e.action ? " (" + e.action + ")" : "");
      });
      listSection(box, L("Rollback errors"), t.rollback_errors, function (e) { return e; });
      listSection(box, L("Plugins that did not end ok"), Object.keys(t.plugins || {}), function (p) {
        var e = t.plugins[p];
        return p + ": " + word(e.ended) + (e.why ? " \u2014 " + e.why : "")
          + (e.limit ? " " + L("(limit {limit})", {limit: e.limit}) : "");
      });
      if (t.timeouts && t.timeouts.length) {
        add(box, el("h4", null, L("Timeouts")));
        t.timeouts.forEach(function (x) { add(box, el("pre", "timeout-report", x.message)); });
      }
      listSection(box, L("Plugin output over its limits"), t.output_dropped, function (o) {
        return clock(o.ts) + " [" + (o.stage || "-") + "] " + (o.step ? o.step + " " : "") + (o.plugin || "")
          + ": " + o.message;
      });
      var hidden = Object.keys(t.not_shown || {}).filter(function (k) { return t.not_shown[k] > 0; });
      if (hidden.length) {
        add(box, el("p", "muted not-shown", hidden.map(function (k) {
          return L("{count} more {what} not shown", {count: t.not_shown[k], what: HIDDEN[k] || k});
        }).join("; ")));
      }
      if (t.manual_procedure && t.manual_procedure.length) {
        add(box, el("h4", null, L("Manual procedure")));
        add(box, el("pre", "manual-procedure", t.manual_procedure.join("\n")));
        if (t.evidence) { add(box, el("p", "muted", L("evidence: {path}", {path: t.evidence}))); }
      }
    });
  }

  summary();
  rollout();
  timeline();
  details();
  add(root, el("p", "muted", L("generated {time} by drhost report", {time: clock(data.run.generated)})));
  document.documentElement.setAttribute("data-rendered", "yes");
})();
"""

__all__ = ["CSS", "SCRIPT"]
