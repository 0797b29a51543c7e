"""The commands that drive runs: upgrade, resume, rollback, status, plan."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from pathlib import Path
from typing import Any

from drhost_hookspecs import Stage

from ..demo.environment import create_demo, start_ssh_hosts, stop_demo
from ..demo.sshd import SshHost
from ..errors import ExitCode
from ..events import Subscriber
from ..orchestrator import Decide, RunSummary, create_run, drive
from ..orchestrator._abandoned import abandoned_view
from ..orchestrator._fleet import ApproveBatch
from ..orchestrator._rollback import rollback_verdict
from ..orchestrator._rollout import Batch, batches_for
from ..plan import Plan, format_plan
from ..report import LiveReporter, PlainReporter
from ..state import RunState, find_run, state_root
from ._inputs import package_info, prepare

_CHOICES = {"r": "retry", "b": "rollback", "a": "abort"}


def make_decide(mode: str, interactive: bool, reporter: Subscriber | None = None) -> Decide:
    """The failure decision: fixed by ``--on-failure``, or asked on a terminal."""
    if mode == "ask" and not interactive:
        mode = "rollback"
    if mode != "ask":
        return lambda target, stage, message: mode
    lock = threading.Lock()

    def ask(target: str, stage: Stage, message: str) -> str:
        pause = reporter.paused() if isinstance(reporter, LiveReporter) else contextlib.nullcontext()
        with lock, pause:
            while True:
                sys.stderr.write(f"\n{target}: stage {stage.value} failed: {message}\n"
                                 f"  [r]etry the stage, roll[b]ack this target, or [a]bort (leave it for resume)? ")
                sys.stderr.flush()
                answer = sys.stdin.readline().strip().lower()[:1]
                if not answer:
                    return "rollback"
                if answer in _CHOICES:
                    return _CHOICES[answer]

    return ask


def make_approve(interactive: bool, reporter: Subscriber | None = None, *, granted: int | None = None,
                 ) -> ApproveBatch | None:
    """Approval of a batch ([rollout] approve): asked on a terminal; without one the run stops there, resumable.

    ``granted``: the batch the operator approved by running ``drhost resume`` (the one the run waits for).
    """
    lock = threading.Lock()

    def approve(batch: Batch, count: int) -> bool:
        if granted is not None and batch.index == granted:
            return True
        if not interactive:
            return False
        pause = reporter.paused() if isinstance(reporter, LiveReporter) else contextlib.nullcontext()
        with lock, pause:
            group = f" (group {batch.group})" if batch.group else ""
            sys.stderr.write(f"\nbatch {batch.index + 1} of {count}{group}: {len(batch.targets)} targets: "
                             f"{', '.join(batch.targets)}\n  start it? [y]es / [n]o (stop here; resume later) ")
            sys.stderr.flush()
            return sys.stdin.readline().strip().lower()[:1] == "y"

    return approve if interactive or granted is not None else None


def _reporter(args: argparse.Namespace, total_steps: int) -> Subscriber:
    if sys.stderr.isatty() and not args.json and not getattr(args, "plain", False):
        return LiveReporter(total_steps)
    return PlainReporter()


def _finish(args: argparse.Namespace, summary: RunSummary) -> int:
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(f"run {summary.run_id}: {summary.status}")
        for line in rollout_summary(RunState.open(summary.run_dir).snapshot())["lines"]:
            print(f"  {line}")
        for name, target in summary.targets.items():
            if target["status"] == "pending":
                print(f"  {name}: not started")
            else:
                print(f"  {name}: {target['status']} (version {target.get('version') or 'unknown'})")
            if target.get("verification"):
                print(f"    verification: {target['verification']}")
            for line in target.get("still_changing") or []:
                print(f"    MAY STILL BE CHANGING: {line}")
        for line in next_commands(summary.run_id, summary.status):
            print(line)
        print(f"run directory: {summary.run_dir}")
    return summary.exit_code


def next_commands(run_id: str, status: str) -> list[str]:
    if status in ("interrupted", "aborted"):
        return [f"resume:    drhost resume {run_id}", f"roll back: drhost rollback {run_id}"]
    if status == "failed":
        return [f"details:   drhost status {run_id}", f"retry the rollback: drhost rollback {run_id}"]
    return []


def _demo_after(keep: bool) -> Any:
    def after(state: RunState, status: str) -> None:
        demo = state.get("demo") or {}
        roots = [Path(r) for r in demo.get("roots", [])]
        if keep or status == "interrupted":
            why = "--keep" if keep else "the run is interrupted and can be resumed"
            sys.stderr.write(f"demo daemons left running ({why}); stop them with "
                             f"ROOT/current/bin/drproductctl --root ROOT stop for each root in "
                             f"{roots[0].parents[2] if roots else ''}")
            if demo.get("sshd"):
                sys.stderr.write(", and the demo's sshd servers with kill $(cat DIR/pid) for each DIR/pid under it")
            sys.stderr.write("\n")
            return
        for problem in stop_demo(roots):
            sys.stderr.write(f"warning: {problem}\n")
        for host in demo.get("sshd", []):
            SshHost(host["name"], Path(host["directory"]), int(host["port"])).stop()

    return after


def cmd_upgrade(args: argparse.Namespace) -> int:
    prepared = prepare(args, need_package=True)
    assert prepared.package is not None
    extra: dict[str, Any] = {"blocked_plugins": prepared.blocked, "weaker_isolation": prepared.weaker_isolation}
    if prepared.weaker_isolation:
        print(f"warning: weaker isolation for this run: {prepared.weaker_isolation}", file=sys.stderr)
    if prepared.demo_roots is not None:
        create_demo(state_root(), prepared.demo_roots,
                    reserved_ports=[h.port for h in (prepared.demo_ssh_hosts or {}).values()])
        extra["demo"] = {"roots": [str(r) for r in prepared.demo_roots.values()], "keep": bool(args.keep)}
        if prepared.demo_ssh_hosts is not None:
            try:
                start_ssh_hosts(prepared.demo_ssh_hosts)
            except BaseException:
                stop_demo(list(prepared.demo_roots.values()))
                raise
            extra["demo"]["sshd"] = [{"name": h.name, "directory": str(h.directory), "port": h.port}
                                     for h in prepared.demo_ssh_hosts.values()]
    state = create_run(config=prepared.config.data, config_files=prepared.config.files, plan=prepared.plan,
                       package=package_info(prepared.package), extra=extra)
    if not args.json:
        print(f"run {state.run_id} started; state in {state.run_dir}", file=sys.stderr)
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    reporter = _reporter(args, len(prepared.plan.steps))
    summary = drive(state, mode="upgrade",
                    decide=make_decide(prepared.config.data["run"]["on_failure"], interactive, reporter),
                    subscribers=[reporter],
                    after=_demo_after(bool(args.keep)) if prepared.demo_roots is not None else None,
                    break_lock=bool(args.break_lock), approve=make_approve(interactive, reporter))
    return _finish(args, summary)


def _continue(args: argparse.Namespace, mode: str) -> int:
    state = RunState.open(find_run(args.run), complete=True)
    plan = state.plan()
    # A stored config without it is refused by drive()'s re-check, with the key named; not a KeyError here.
    on_failure = args.on_failure or str(state.get("config")["run"].get("on_failure", "ask"))
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    demo = state.get("demo")
    reporter = _reporter(args, len(plan.steps))
    # Resuming a run that waits for approval is the approval of that batch; after a budget stopped the rollout,
    # of the batch after the one that stopped it.
    rollout = state.get("rollout") or {}
    waiting = rollout.get("waiting")
    if waiting is None and rollout.get("stopped"):
        waiting = int(rollout["stopped"]["batch"]) + 1
    summary = drive(state, mode=mode, decide=make_decide(on_failure, interactive, reporter), subscribers=[reporter],
                    after=_demo_after(bool(demo.get("keep"))) if demo else None, break_lock=bool(args.break_lock),
                    approve=make_approve(interactive, reporter, granted=waiting))
    return _finish(args, summary)


def cmd_resume(args: argparse.Namespace) -> int:
    return _continue(args, "resume")


def cmd_rollback(args: argparse.Namespace) -> int:
    return _continue(args, "rollback")


def cmd_plan(args: argparse.Namespace) -> int:
    prepared = prepare(args, need_package=False)
    batches = batches_for(prepared.config.data)
    if args.json:
        print(json.dumps({"targets": sorted(prepared.config.data["targets"]),
                          "batches": [b.to_json() for b in batches],
                          "steps": [s.to_json() for s in prepared.plan.steps],
                          "plugins": [p.to_json() for p in prepared.plan.plugins]}, indent=2))
    else:
        print(f"targets: {', '.join(sorted(prepared.config.data['targets']))}")
        for name, target in sorted(prepared.config.data["targets"].items()):
            where = (f"ssh {target.get('user', 'root')}@{target['host']}:{target.get('port', 22)}"
                     if target["transport"] == "ssh" else "local")
            print(f"  {name}: {where}, install root {target['root']}")
        if len(batches) > 1:
            print(f"rollout: {len(batches)} batches, {prepared.config.data['run']['forks']} targets at a time")
            for batch in batches:
                group = f" [{batch.group}]" if batch.group else ""
                print(f"  batch {batch.index + 1}{group}: {', '.join(batch.targets)}")
        for line in format_plan(prepared.plan):
            print(line)
    return ExitCode.SUCCEEDED


def target_status(plan: Plan, name: str, record: dict[str, Any]) -> dict[str, Any]:
    steps = record.get("steps", {})
    done = [s.key for s in plan.steps if steps.get(s.key, {}).get("status") in ("done", "skipped")]
    current = next((s for s in plan.steps if steps.get(s.key, {}).get("status") == "started"), None)
    remaining = [s.key for s in plan.steps if s.key not in done]
    status = record["status"]
    consistent = {"succeeded": "yes: new version", "up_to_date": "yes: unchanged", "rolled_back": "yes: old version",
                  "pending": "yes: untouched", "locked": "yes: untouched (another run holds its lock)",
                  "unreachable": "unknown: unreachable; resume when it is back",
                  "refused": "unknown: it refused drhost (host key or credentials); nothing was done since"}.get(
        status, "unknown until the run is resumed or rolled back")
    verdict = rollback_verdict(record) if status == "inconsistent" else None
    if status == "inconsistent":
        # Derived from what the plugins' verification reported, never a fixed label.
        consistent = (f"{verdict['verdict']}: {verdict['label']}; follow the manual procedure" if verdict
                      else "unknown: no verification recorded; follow the manual procedure")
    abandoned = abandoned_view(record)
    if abandoned["still_changing"]:
        consistent = f"unknown: may still be changing ({'; '.join(abandoned['still_changing'])})"
    elif abandoned["abandoned"]:
        consistent = f"{consistent} when recorded; but {abandoned['abandoned'][-1]}"
    return {
        "target": name, "status": status, "phase": record.get("phase"), "stage": record.get("stage"),
        "step": current.key if current else None, "done": len(done), "total": len(plan.steps),
        "remaining": remaining, "consistent": consistent, "version_before": record.get("version_before"),
        "version": record.get("version"), "errors": record.get("errors", []),
        "skipped_plugins": record.get("skipped_plugins", {}), "rollback": record.get("rollback", {}),
        "plugins": record.get("plugins", {}), "manual_procedure": record.get("manual_procedure"),
        "evidence": record.get("evidence"),
        "next": "wait: a core thread that drhost abandoned may still be changing it (see above); check the target "
                "once that drhost has exited" if abandoned["still_changing"] else target_next(name, status, record),
        "still_changing": abandoned["still_changing"], "abandoned_threads": abandoned["abandoned"],
        "verification": verdict,
        # What was noticed but not enforced (a core step that grew drhost past its class's memory_mb).
        "findings": [*(f for entry in steps.values() for f in entry.get("findings", [])),
                     *record.get("findings", [])],
    }


def target_next(name: str, status: str, record: dict[str, Any]) -> str:
    """What the operator does next for this target, as one line."""
    return {
        "succeeded": "nothing: at the new version",
        "up_to_date": "nothing: was already at the package's version",
        "rolled_back": "nothing: back at the old version, verified",
        "inconsistent": "follow the manual procedure below, then: drhost rollback RUN",
        "locked": "another run holds its lock: wait for it (see the error), or --break-lock if it is dead",
        "unreachable": "when it is reachable again: drhost resume RUN (or drhost rollback RUN)",
        # Never retried on its own: a changed host key may be an impostor; the operator decides.
        "refused": "check why it refused (a changed host key: confirm with its owner, then update known_hosts; "
                   "rejected credentials: fix them), then: drhost rollback RUN (or drhost resume RUN)",
        "aborted": "drhost resume RUN to continue, or drhost rollback RUN",
        "interrupted": "drhost resume RUN to continue, or drhost rollback RUN",
        "pending": "not started, untouched: drhost resume RUN starts it with its batch (if no drhost is running "
                   "the run)",
    }.get(status, "drhost resume RUN (if no drhost is running it)")


def cmd_status(args: argparse.Namespace) -> int:
    state = RunState.open(find_run(args.run), complete=True)
    body = state.snapshot()
    plan = state.plan()
    targets = [target_status(plan, name, record) for name, record in sorted(body["targets"].items())]
    commands = next_commands(body["run_id"], body["status"])
    if body["status"] in ("running", "rolling_back", "created"):
        commands = [f"if no drhost is running it: drhost resume {body['run_id']}"]
    rollout = rollout_summary(body)
    if rollout["waiting"] is not None:
        commands = [f"approve batch {rollout['waiting'] + 1}: drhost resume {body['run_id']}",
                    f"roll back:  drhost rollback {body['run_id']}"]
    report = {"run_id": body["run_id"], "status": body["status"], "run_dir": str(state.run_dir),
              "package": body["package"]["version"], "targets": targets, "next": commands,
              "recovered_from": state.recovered_from, "weaker_isolation": body.get("weaker_isolation"),
              "rollout": rollout}
    if args.json:
        print(json.dumps(report, indent=2))
        return ExitCode.SUCCEEDED
    print(f"run {body['run_id']}: {body['status']} (package {body['package']['version']})")
    if state.recovered_from:
        print(f"  note: {state.recovered_from}")
    if body.get("weaker_isolation"):
        print(f"  weaker isolation (operator allowed): {body['weaker_isolation']}")
    for line in rollout["lines"]:
        print(f"  {line}")
    for t in targets:
        print(f"  {t['target']}: {t['status']}, stage {t['stage'] or '-'}, step {t['step'] or '-'}, "
              f"{t['done']}/{t['total']} steps done; consistent: {t['consistent']}")
        print(f"      next: {t['next'].replace('RUN', body['run_id'])}")
        for line in t["still_changing"]:
            print(f"      MAY STILL BE CHANGING: {line}")
        for line in t["abandoned_threads"]:
            print(f"      note: {line}")
        for plugin, ending in sorted(t["plugins"].items()):
            if ending.get("ended") != "ok":
                extra = ", ".join(f"{k} {ending[k]}" for k in ("limit", "signal") if ending.get(k))
                print(f"      plugin {plugin}: {ending['ended']}" + (f" ({extra})" if extra else "")
                      + (f": {ending['limit_text']}" if ending.get("limit_text") else ""))
        for line in t.get("manual_procedure") or []:
            print(f"      {line}")
        if t.get("evidence"):
            print(f"      evidence: {t['evidence']}")
        for finding in t["findings"][-3:]:
            print(f"      finding: {finding.get('message')}")
        for error in t["errors"][-3:]:
            print(f"      error: [{error.get('stage')}] {error.get('step') or ''} {error.get('plugin')}: "
                  f"{error.get('message')} ({error.get('action')})")
    for line in commands:
        print(line)
    return ExitCode.SUCCEEDED


def rollout_summary(body: dict[str, Any]) -> dict[str, Any]:
    """The run's batches and why the rollout stopped or waits, as data and as lines for the operator."""
    record = body.get("rollout") or {}
    batches = record.get("batches") or []
    stopped, waiting = record.get("stopped"), record.get("waiting")
    lines = []
    if len(batches) > 1:
        sizes = ", ".join(str(len(b["targets"])) for b in batches)
        lines.append(f"rollout: {len(batches)} batches of {sizes} targets")
    if stopped:
        lines.append(f"rollout stopped in batch {stopped['batch'] + 1}: {stopped['reason']}; not started: "
                     f"{', '.join(stopped['not_started']) or 'none'} (drhost resume RUN continues with them; "
                     f"the budget then counts afresh)".replace("RUN", str(body["run_id"])))
    if waiting is not None:
        lines.append(f"rollout waits for approval of batch {waiting + 1}: "
                     f"{', '.join(batches[waiting]['targets'])}")
    return {"batches": [list(b["targets"]) for b in batches], "stopped": stopped, "waiting": waiting,
            "lines": lines}


def add_run_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demo", action="store_true", help="use the embedded demo: three local drproduct targets")
    parser.add_argument("--demo-targets", type=int, metavar="N", help="demo: N targets instead of three (1-50)")
    parser.add_argument("--ssh", action="store_true",
                        help="demo: reach the three targets over SSH (upgrade starts its own loopback sshd servers)")
    parser.add_argument("-i", "--inventory", help="ops INI file with [target:NAME] sections")
    parser.add_argument("-c", "--config", action="append", help="extra config file (INI or JSON); repeatable")
    parser.add_argument("--package", help="the upgrade package (drproduct-VERSION.tar.gz)")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting")
    parser.add_argument("-p", dest="plugin_options", action="append", metavar="no:NAME",
                        help="block plugin NAME for this run")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout at the end")

