"""The commands that drive runs: upgrade, resume, rollback, status, plan."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from drhost_hookspecs import Stage

from ..config import LoadedConfig
from ..demo.bastion import remove_recorded
from ..demo.environment import create_demo, start_bastion, start_ssh_hosts, stop_demo
from ..demo.sshd import SshHost
from ..errors import ExitCode
from ..events import Subscriber
from ..i18n import translator
from ..orchestrator import (
    ApproveBatch,
    Batch,
    Decide,
    RunSummary,
    ask_reconnect,
    batches_for,
    create_run,
    drive,
    waiting_line,
)
from ..plan import format_plan, recorded_plan
from ..policy import RUN_ON_FAILURES, Decision, one_of
from ..report import LiveReporter, PlainReporter
from ..state import RunState, find_run, run_in_use, state_root
from ..status import next_commands, rollout_summary, run_next_commands, status_word, target_status
from ..transport import transport
from ._inputs import package_info, prepare

_CHOICES: dict[str, Decision] = {"r": "retry", "b": "rollback", "a": "abort"}


def make_decide(mode: str, interactive: bool, reporter: Subscriber | None = None) -> Decide:
    """The failure decision: fixed by ``--on-failure``, or asked on a terminal."""
    on_failure = one_of(mode, RUN_ON_FAILURES, "run.on_failure")
    if on_failure == "ask" and not interactive:
        on_failure = "rollback"
    if on_failure != "ask":
        fixed: Decision = on_failure
        return lambda target, stage, message: fixed
    lock = threading.Lock()
    t = translator()

    def ask(target: str, stage: Stage, message: str) -> Decision:
        pause = reporter.paused() if isinstance(reporter, LiveReporter) else contextlib.nullcontext()
        with lock, pause:
            while True:
                sys.stderr.write("\n" + t("{target}: stage {stage} failed: {message}").format(
                    target=target, stage=t(stage.value), message=message) + "\n  " + t(
                    "[r]etry the stage, roll[b]ack this target, or [a]bort (leave it for resume)? "))
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
    t = translator()

    def approve(batch: Batch, count: int) -> bool:
        if granted is not None and batch.index == granted:
            return True
        if not interactive:
            return False
        pause = reporter.paused() if isinstance(reporter, LiveReporter) else contextlib.nullcontext()
        with lock, pause:
            group = t(" (group {group})").format(group=batch.group) if batch.group else ""
            sys.stderr.write("\n" + t("batch {number} of {count}{group}: {size} targets: {targets}").format(
                number=batch.index + 1, count=count, group=group, size=len(batch.targets),
                targets=", ".join(batch.targets)) + "\n  " + t("start it? [y]es / [n]o (stop here; resume later) "))
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
        t = translator()
        print(t("run {run_id}: {status}").format(run_id=summary.run_id, status=status_word(summary.status, t)))
        for line in rollout_summary(RunState.open(summary.run_dir).snapshot(), t)["lines"]:
            print(f"  {line}")
        for name, target in summary.targets.items():
            if target["status"] == "pending":
                print("  " + t("{target}: not started").format(target=name))
            else:
                print("  " + t("{target}: {status} (version {version})").format(
                    target=name, status=status_word(target["status"], t),
                    version=target.get("version") or t("unknown")))
            if target.get("verification"):
                print("    " + t("verification: {verdict}").format(verdict=target["verification"]))
            for line in target.get("still_changing") or []:
                print("    " + t("MAY STILL BE CHANGING: {what}").format(what=line))
        for line in next_commands(summary.run_id, summary.status, t):
            print(line)
        print(t("run directory: {path}").format(path=summary.run_dir))
    return summary.exit_code


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
            if demo.get("bastion"):
                sys.stderr.write(f"; its network namespaces ({', '.join(demo['bastion']['namespaces'])}) go with "
                                 "ip netns del NAME")
            sys.stderr.write("\n")
            return
        for problem in stop_demo(roots):
            sys.stderr.write(f"warning: {problem}\n")
        for host in demo.get("sshd", []):
            SshHost(host["name"], Path(host["directory"]), int(host["port"]), login_user=host.get("login_user")).stop()
        if demo.get("bastion"):
            remove_recorded(demo["bastion"])

    return after


def cmd_upgrade(args: argparse.Namespace) -> int:
    prepared = prepare(args, need_package=True)
    assert prepared.package is not None
    extra: dict[str, Any] = {"blocked_plugins": prepared.blocked, "weaker_isolation": prepared.weaker_isolation}
    if prepared.weaker_isolation:
        print(translator()("warning: weaker isolation for this run: {what}").format(what=prepared.weaker_isolation),
              file=sys.stderr)
    if prepared.demo_bastion is not None:
        assert prepared.demo_roots is not None
        for note in start_bastion(prepared.demo_bastion):
            print(f"demo: {note}", file=sys.stderr)
        try:
            create_demo(state_root(), prepared.demo_roots,
                        namespaces={name: str(host.netns) for name, host in prepared.demo_bastion.targets.items()})
        except BaseException:
            prepared.demo_bastion.close()
            raise
        bastion = prepared.demo_bastion.bastion
        extra["demo"] = {"roots": [str(r) for r in prepared.demo_roots.values()], "keep": bool(args.keep),
                         "bastion": prepared.demo_bastion.record(),
                         "sshd": [{"name": h.name, "directory": str(h.directory), "port": h.port,
                                   "login_user": h.login_user}
                                  for h in (*prepared.demo_bastion.targets.values(), bastion)]}
    elif prepared.demo_roots is not None:
        create_demo(state_root(), prepared.demo_roots,
                    reserved_ports=[h.port for h in (prepared.demo_ssh_hosts or {}).values()])
        extra["demo"] = {"roots": [str(r) for r in prepared.demo_roots.values()], "keep": bool(args.keep)}
        if prepared.demo_ssh_hosts is not None:
            try:
                for note in start_ssh_hosts(prepared.demo_ssh_hosts):
                    print(f"demo: {note}", file=sys.stderr)
            except BaseException:
                stop_demo(list(prepared.demo_roots.values()))
                raise
            extra["demo"]["sshd"] = [{"name": h.name, "directory": str(h.directory), "port": h.port,
                                      "login_user": h.login_user} for h in prepared.demo_ssh_hosts.values()]
    state = create_run(config=prepared.config.data, config_files=prepared.config.files, plan=prepared.plan,
                       package=package_info(prepared.package), extra=extra)
    if not args.json:
        print(translator()("run {run_id} started; state in {path}").format(run_id=state.run_id, path=state.run_dir),
              file=sys.stderr)
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    reporter = _reporter(args, len(prepared.plan.steps))
    with contextlib.closing(state):
        summary = drive(state, mode="upgrade",
                        decide=make_decide(prepared.config.data["run"]["on_failure"], interactive, reporter),
                        subscribers=[reporter],
                        after=_demo_after(bool(args.keep)) if prepared.demo_roots is not None else None,
                        break_lock=bool(args.break_lock), approve=make_approve(interactive, reporter))
    return _finish(args, summary)


def _continue(args: argparse.Namespace, mode: Literal["resume", "rollback"]) -> int:
    state = RunState.open(find_run(args.run), complete=True)
    plan = recorded_plan(state)
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
    with contextlib.closing(state):
        summary = drive(state, mode=mode, decide=make_decide(on_failure, interactive, reporter),
                        subscribers=[reporter], after=_demo_after(bool(demo.get("keep"))) if demo else None,
                        break_lock=bool(args.break_lock), approve=make_approve(interactive, reporter, granted=waiting))
    return _finish(args, summary)


def cmd_resume(args: argparse.Namespace) -> int:
    return _continue(args, "resume")


def cmd_rollback(args: argparse.Namespace) -> int:
    return _continue(args, "rollback")


#: The connection settings ``drhost plan`` shows for an ssh target, each with where it came from.
CONNECTION_KEYS = ("host", "port", "user", "key_file", "known_hosts", "host_key_policy", "proxy_jump",
                   "connect_timeout_s", "heartbeat_s", "dead_after_s", "become", "become_user")


def _connection_settings(config: LoadedConfig, name: str, target: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """(value, origin) of each connection setting an ssh target has: an inventory line, --set, or the
    operator's ssh_config file and line."""
    if target.get("transport") != "ssh":
        return {}
    return {key: (target[key], str(config.origin(("targets", name, key)))) for key in CONNECTION_KEYS
            if key in target}


def cmd_plan(args: argparse.Namespace) -> int:
    prepared = prepare(args, need_package=False)
    batches = batches_for(prepared.config.data)
    settings = {name: _connection_settings(prepared.config, name, target)
                for name, target in sorted(prepared.config.data["targets"].items())}
    if args.json:
        print(json.dumps({"targets": sorted(prepared.config.data["targets"]),
                          "target_settings": {name: {key: {"value": value, "from": origin}
                                                     for key, (value, origin) in found.items()}
                                              for name, found in settings.items()},
                          "batches": [b.to_json() for b in batches],
                          "steps": [s.to_json() for s in prepared.plan.steps],
                          "plugins": [p.to_json() for p in prepared.plan.plugins]}, indent=2))
    else:
        t = translator()
        print(t("targets: {names}").format(names=", ".join(sorted(prepared.config.data["targets"]))))
        for name, target in sorted(prepared.config.data["targets"].items()):
            where = transport(str(target["transport"])).where(target)
            print("  " + t("{target}: {where}, install root {root}").format(target=name, where=where,
                                                                          root=target["root"]))
            for key, (value, origin) in settings[name].items():
                print(f"    {key} = {value}  ({origin})")
        if len(batches) > 1:
            print(t("rollout: {batches} batches, {forks} targets at a time").format(
                batches=len(batches), forks=prepared.config.data["run"]["forks"]))
            for batch in batches:
                group = f" [{batch.group}]" if batch.group else ""
                print("  " + t("batch {number}{group}: {targets}").format(number=batch.index + 1, group=group,
                                                                        targets=", ".join(batch.targets)))
        for line in format_plan(prepared.plan, t):
            print(line)
    return ExitCode.SUCCEEDED


def cmd_status(args: argparse.Namespace) -> int:
    state = RunState.open(find_run(args.run), complete=True)
    body = state.snapshot()
    plan = recorded_plan(state)
    targets = [target_status(plan, name, record) for name, record in sorted(body["targets"].items())]
    rollout = rollout_summary(body)
    commands = run_next_commands(body, rollout)
    report = {"run_id": body["run_id"], "status": body["status"], "run_dir": str(state.run_dir),
              "package": body["package"]["version"], "targets": targets, "next": commands,
              "recovered_from": state.recovered_from, "weaker_isolation": body.get("weaker_isolation"),
              "rollout": rollout}
    if args.json:
        print(json.dumps(report, indent=2))
        return ExitCode.SUCCEEDED
    # The JSON above stays English (data for tools); the text is in the operator's language.
    t = translator()
    targets = [target_status(plan, name, record, t) for name, record in sorted(body["targets"].items())]
    rollout = rollout_summary(body, t)
    commands = run_next_commands(body, rollout, t)
    run_id = body["run_id"]
    print(t("run {run_id}: {status} (package {package})").format(run_id=run_id, status=status_word(body["status"], t),
                                                                  package=body["package"]["version"]))
    if state.recovered_from:
        print("  " + t("note: {text}").format(text=state.recovered_from))
    if body.get("weaker_isolation"):
        print("  " + t("weaker isolation (operator allowed): {what}").format(what=body["weaker_isolation"]))
    for line in rollout["lines"]:
        print(f"  {line}")
    for target in targets:
        print("  " + t("{target}: {status}, stage {stage}, step {step}, {done}/{total} steps done; consistent: "
                       "{consistent}").format(target=target["target"], status=status_word(target["status"], t),
                                              stage=target["stage"] or "-", step=target["step"] or "-",
                                              done=target["done"], total=target["total"],
                                              consistent=target["consistent"]))
        print("      " + t("next: {what}").format(what=target["next"].replace("RUN", run_id)))
        waiting = waiting_line(run_id, target["target"], target["status_check"], t)
        if waiting:
            print(f"      {waiting}")
        for line in target["still_changing"]:
            print("      " + t("MAY STILL BE CHANGING: {what}").format(what=line))
        for line in target["abandoned_threads"]:
            print("      " + t("note: {text}").format(text=line))
        for plugin, ending in sorted(target["plugins"].items()):
            if ending.get("ended") != "ok":
                extra = ", ".join(f"{k} {ending[k]}" for k in ("limit", "signal") if ending.get(k))
                print("      " + t("plugin {plugin}: {ended}").format(plugin=plugin, ended=ending["ended"])
                      + (f" ({extra})" if extra else "") + (f": {ending['limit_text']}" if ending.get("limit_text")
                                                           else ""))
        for line in target.get("manual_procedure") or []:
            print(f"      {line}")
        if target.get("evidence"):
            print("      " + t("evidence: {path}").format(path=target["evidence"]))
        for finding in target["findings"][-3:]:
            print("      " + t("finding: {message}").format(message=finding.get("message")))
        for error in target["errors"][-3:]:
            print("      " + t("error: [{stage}] {step} {plugin}: {message} ({action})").format(
                stage=error.get("stage"), step=error.get("step") or "", plugin=error.get("plugin"),
                message=error.get("message"), action=error.get("action")))
    for line in commands:
        print(line)
    return ExitCode.SUCCEEDED


def cmd_reconnect(args: argparse.Namespace) -> int:
    """The operator's word for status-check connections that wait for it (manual reconnect)."""
    run_dir = find_run(args.run)
    state = RunState.open(run_dir, complete=True)
    body = state.snapshot()
    known = sorted(body["targets"])
    unknown = [name for name in args.targets if name not in known]
    t = translator()
    run_id = body["run_id"]
    if unknown:
        print(t("drhost reconnect: run {run_id} has no target {names}; its targets: {known}").format(
            run_id=run_id, names=", ".join(map(repr, unknown)), known=", ".join(known)), file=sys.stderr)
        return ExitCode.USAGE
    waiting = [name for name in known if isinstance(body["targets"][name].get("status_check"), dict)]
    chosen = list(args.targets) or waiting
    if not chosen:
        print(t("run {run_id}: no status-check connection waits for the operator").format(run_id=run_id))
        return ExitCode.SUCCEEDED
    driver = run_in_use(run_dir)
    for name in chosen:
        ask_reconnect(run_dir, name)
        print(t("{target}: reconnect of the status-check connection asked (it waits for the operator)")
              .format(target=name) if name in waiting else
              t("{target}: reconnect of the status-check connection asked (it does not wait; asked anyway)")
              .format(target=name))
    if driver is None:
        print(t("no drhost is driving run {run_id} now: the next one (drhost resume {run_id}) opens new "
                "connections anyway").format(run_id=run_id))
    else:
        print(t("the driving drhost ({driver}) reconnects at its next status check; drhost status {run_id} shows "
                "when it has").format(driver=driver, run_id=run_id))
    return ExitCode.SUCCEEDED


def add_run_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demo", action="store_true", help="use the embedded demo: three local drproduct targets")
    parser.add_argument("--demo-targets", type=int, metavar="N", help="demo: N targets instead of three (1-50)")
    parser.add_argument("--ssh", action="store_true",
                        help="demo: reach the three targets over SSH (upgrade starts its own loopback sshd servers)")
    parser.add_argument("--bastion", action="store_true",
                        help="demo with --ssh: each target in a network namespace of its own, reachable only "
                             "through a jump host (proxy_jump)")
    parser.add_argument("--login-user", metavar="NAME",
                        help="demo with --ssh: the hosts refuse root login; log in as NAME and become root with sudo "
                             "(the account is created, with passwordless sudo, if it does not exist)")
    parser.add_argument("-i", "--inventory",
                        help="the inventory: drhost's INI ([target:NAME] sections), or an Ansible inventory "
                             "(INI or YAML)")
    parser.add_argument("-l", "--limit", metavar="PATTERN",
                        help="only the targets this Ansible host pattern selects (groups, hosts, wildcards, "
                             "~regex, a:b union, a:&b intersection, a:!b exclusion)")
    parser.add_argument("-c", "--config", action="append", help="extra config file (INI or JSON); repeatable")
    parser.add_argument("--package", help="the upgrade package (drproduct-VERSION.tar.gz)")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting")
    parser.add_argument("-p", dest="plugin_options", action="append", metavar="no:NAME",
                        help="block plugin NAME for this run")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout at the end")

