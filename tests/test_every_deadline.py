"""Every deadline is watched, not only steps': a rollback, a plugin-wide hook, a version probe and a lock get the
progress lines, the 85 %/95 % warnings and the classified timeout report with its context, as steps do; the ETA
says what retries and a stage restart would add.

Real drhost runs (the CLI) with a plugin whose compensations run a real ``sleep`` on the target, killed at their
deadline; real sshd through a delaying TCP proxy for the version probe and the lock.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from demo_proxy import demo_behind_proxy
from drhost.events import EventBus
from drhost.orchestrator._env import Executor, RunEnv
from drhost.orchestrator._locks import TargetLocks
from drhost.orchestrator._target import TargetFlow
from drhost.packaging import build_package
from drhost.plan import recorded_plan
from drhost.state import RunState
from drhost.watchdog import render_watchdog_event
from drhost.watchdog._history import eta_extra
from drhost_hookspecs import PackageInfo
from plugin_factory import make_plugin
from sshd_hosts import sshd_available
from tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

Drhost = Callable[..., subprocess.CompletedProcess[str]]
SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "schemas" / "watchdog-events.schema.json").read_text())
FAST_CADENCE = ("--set", "watchdog.progress_every_s=0.5", "--set", "watchdog.remaining_every_s=1",
                "--set", "watchdog.resources_every_s=60", "--set", "run.kill_grace_s=0.5")
#: The budget of the step's rollback (the step's timeout) and of the plugin-wide rollback hook.
BUDGET_S = 2.0

#: A database-class plugin: "prepare" is undone by a rollback that runs a real sleep on the target; "breaks" fails
#: the stage; the plugin-wide rollback hook sleeps too. Each writes a stamp to the target's own log first.
SLOW_UNDO = """
import time
from drhost_hookspecs import StepFailed

def stamp(ctx, what):
    ctx.run(["sh", "-c", 'echo "$1 $(date +%s.%N)" >> "$2/zz-slow.log"', "sh", what, ctx.target.install_root])

def prepare(ctx):
    stamp(ctx, "prepare")

def undo_prepare(ctx):
    stamp(ctx, "undo-start")
    ctx.run(["sleep", "60"])
    stamp(ctx, "undo-end")

def breaks(ctx):
    raise StepFailed("zz-slow: the upgrade breaks here")

@hookimpl
def drhost_plugin_info():
    return PluginInfo(name="zz-slow", department="test", plugin_class=PluginClass("database"))

@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.UPGRADE:
        register(Step("prepare", prepare, retryable=False, timeout_s=BUDGET, category=Category.DATABASE,
                      order=1, rollback=undo_prepare, cleanup=undo_prepare))
        register(Step("breaks", breaks, retryable=False, timeout_s=30, category=Category.PLUGIN, order=2))

@hookimpl
def drhost_rollback(stage, ctx):
    if stage is Stage.UPGRADE:
        stamp(ctx, "hook-start")
        ctx.run(["sleep", "60"])
        stamp(ctx, "hook-end")
"""


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def stamps(root: Path) -> list[tuple[str, float]]:
    lines = (root / "zz-slow.log").read_text().split("\n")
    return [(what, float(at)) for what, at in (line.split() for line in lines if line.strip())]


def check_report(events: list[dict[str, Any]], op: str, operation: str, budget_s: float) -> dict[str, Any]:
    """The rules each run of a watched operation that ran out of time obeys; returns its first watchdog.timeout."""
    mine = [e for e in events if e.get("data", {}).get("op") == op and e["event"] in
            ("watchdog.progress", "watchdog.remaining", "watchdog.warning", "watchdog.timeout")]
    for event in mine:
        jsonschema.validate(event, SCHEMA)
    timeouts = [e for e in mine if e["event"] == "watchdog.timeout"]
    assert timeouts, f"no timeout report for {operation}"
    # Each run (a rollback's recovery pass runs it again) warns at 85 % and 95 %, in that order, then reports.
    warnings = [e for e in mine if e["event"] == "watchdog.warning"]
    assert [w["data"]["percent"] for w in warnings] == [85, 95] * len(timeouts), mine
    assert all(w["data"]["operation"] == operation for w in warnings)
    assert [e["event"] for e in mine if e["event"] != "watchdog.progress" and e["event"] != "watchdog.remaining"] == [
        "watchdog.warning", "watchdog.warning", "watchdog.timeout"] * len(timeouts)
    assert [e for e in mine if e["event"] == "watchdog.progress"], "no progress line for " + operation
    for timeout in timeouts:
        check_one_report(timeout, operation, budget_s)
    return timeouts[0]


def check_one_report(timeout: dict[str, Any], operation: str, budget_s: float) -> None:
    data = timeout["data"]
    assert data["operation"] == operation and data["configured_s"] == budget_s
    # Generous upper bound: stopped (TERM, then KILL after the grace) well before the 60 s sleep ended.
    assert budget_s <= data["elapsed_s"] <= budget_s + 15, data
    assert data["exceeded_s"] == pytest.approx(data["elapsed_s"] - budget_s, abs=0.01)
    assert data["stopped"]["confirmed"] is True
    for key in ("cpu_percent", "memory_percent"):
        assert 0 <= data["environment"][key] <= 100, data["environment"]
    assert data["suggestion"]
    saved = json.loads(Path(data["context_path"]).read_text())
    assert saved["operation"] == operation and saved["target_context"]["top_processes"]
    for line in ("reason:", "timeout:", "elapsed:", "exceeded by:", "environment:", "suggestion:", "context:"):
        assert f"\n{line}" in timeout["message"], (line, timeout["message"])
    assert operation in timeout["message"].splitlines()[1], timeout["message"]


@pytest.mark.slow
def test_a_rollback_and_a_rollback_hook_past_their_budgets_warn_and_get_classified_reports(
        drhost: Drhost, tmp_path: Path) -> None:
    """A step's rollback and a plugin-wide rollback hook that outlast their budgets get the 85/95 % warnings, are
    stopped at the deadline (the target's log has no end stamp) and get a timeout report naming the operation."""
    site = tmp_path / "site"
    make_plugin(site, "zz-slow", SLOW_UNDO.replace("BUDGET", repr(BUDGET_S)))
    root = tmp_path / "target"
    root.mkdir()
    inventory = tmp_path / "inv.ini"
    inventory.write_text(f"[target:t]\ntransport = local\nroot = {root}\n")
    package = build_package("2.0.0", tmp_path / "pkg")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "DRHOST_LOAD_PLUGINS": "zz-slow"}
    proc = drhost("upgrade", "-i", str(inventory), "--package", str(package), "--on-failure", "rollback",
                  "--json", *FAST_CADENCE, "--set", "class.database.retries=0",
                  "--set", f"watchdog.rollback_hook_timeout_s={BUDGET_S:g}", env=env)
    summary = json.loads(proc.stdout)
    run_dir = Path(summary["run_dir"])
    events = read_events(run_dir)
    undo = check_report(events, "rollback_step", "rollback zz-slow.prepare", BUDGET_S)
    assert undo["data"]["category"] == "database" and undo["data"]["timeout_key"] == "upgrade.prepare"
    assert undo["stage"] == "upgrade" and undo["step"] == "prepare"
    hook = check_report(events, "rollback", "rollback hook zz-slow", BUDGET_S)
    assert hook["data"]["timeout_key"] == "watchdog.rollback_hook_timeout_s"
    # The compensations really ran and were really stopped: started, never finished.
    done = [what for what, _ in stamps(root)]
    assert "undo-start" in done and "hook-start" in done, done
    assert "undo-end" not in done and "hook-end" not in done, done
    # A rollback whose compensations timed out is not claimed: the exit code is not success.
    assert proc.returncode != 0, proc.stdout[-2000:]


def test_the_eta_foresees_the_policys_retries_and_a_stage_restart() -> None:
    """The ETA's extra: retries left x (typical duration + retry wait), the stage's typical duration per restart
    left, unknown when never timed; the rendered line says what the estimate includes."""
    extra = eta_extra(expected_s=40.0, retry_wait_s=10.0, retries_left=3, stage_expected_s=200.0, restarts_left=1)
    assert extra == {"retries_left": 3, "retries_s": 150.0, "stage_restart": True, "restarts_left": 1,
                     "restart_s": 200.0}
    data = {"elapsed_s": 10.0, "timeout_s": 300.0, "budget_percent": 3.3, "budget_left_s": 290.0,
            "remaining_s": 30.0, **extra}
    line = render_watchdog_event("watchdog.progress", data)
    assert line == ("[progress] running for 10 s of 5 min, about 30 s left; with retries up to 2.5 min more "
                    "(3 retries), a stage restart up to 3.3 min more"), line
    unknown = eta_extra(expected_s=None, retry_wait_s=0.0, retries_left=1, stage_expected_s=None, restarts_left=0)
    assert render_watchdog_event("watchdog.remaining", {**data, **unknown}) == (
        "remaining: about 30 s (timeout in 4.8 min); with retries up to unknown more (1 retries)")
    last = eta_extra(expected_s=40.0, retry_wait_s=10.0, retries_left=0, stage_expected_s=None, restarts_left=0)
    assert render_watchdog_event("watchdog.remaining", {**data, **last}) == "remaining: about 30 s (timeout in 4.8 min)"


def test_a_core_step_s_progress_lines_carry_its_retries_and_stage_restart(
        drhost: Drhost, tmp_path: Path, state_dir: Path) -> None:
    """In a real run, a retryable core step's progress events carry the retries its class allows and the stage
    restart run.stage_retries allows, priced from the step history, and its line says so."""
    site = tmp_path / "site"
    body = "import time\ntime.sleep(1.5)"
    make_plugin(site, "zz-core", f'''
import time

@hookimpl
def drhost_plugin_info():
    return PluginInfo(name="zz-core", department="test", plugin_class=PluginClass("core"))

def work(ctx):
    {body.replace(chr(10), chr(10) + "    ")}

@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.UPGRADE:
        register(Step("work", work, retryable=True, timeout_s=30, category=Category.PLUGIN))
''')
    root = tmp_path / "target"
    root.mkdir()
    inventory = tmp_path / "inv.ini"
    inventory.write_text(f"[target:t]\ntransport = local\nroot = {root}\n")
    package = build_package("2.0.0", tmp_path / "pkg")
    # The history of earlier runs: "work" usually takes 2 s on t.
    history = state_dir / "history" / "step-durations.json"
    history.parent.mkdir(parents=True, exist_ok=True)
    history.write_text(json.dumps({"format": 1, "targets": {"t": {"upgrade/zz-core/work": [2.0, 2.0, 2.0]}}}))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "DRHOST_LOAD_PLUGINS": "zz-core"}
    proc = drhost("upgrade", "-i", str(inventory), "--package", str(package), "--on-failure", "retry", "--json",
                  "--set", "watchdog.progress_every_s=0.5", "--set", "run.stage_retries=1",
                  "--set", "class.core.retries=3", "--set", "class.core.retry_interval_s=10", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = read_events(Path(json.loads(proc.stdout)["run_dir"]))
    progress = [e for e in events if e["event"] == "watchdog.progress" and e.get("step") == "work"]
    assert progress, "no progress line"
    data = progress[0]["data"]
    # drhost's CLI tests run with instant retries (DRHOST_INSTANT_RETRIES): the wait is 0, so 3 x 2 s.
    assert (data["retries_left"], data["retries_s"]) == (3, 6.0), data
    assert (data["stage_restart"], data["restart_s"]) == (True, 2.0), data
    assert progress[0]["message"].endswith("; with retries up to 6 s more (3 retries), a stage restart up to 2 s "
                                           "more"), progress[0]["message"]


# -------------------------------------------------------------------- over real sshd, through a delaying link

_SSH_SETTINGS = ("watchdog.version_probe_timeout_s=0.5", "watchdog.lock_timeout_s=0.5",
                 "watchdog.progress_every_s=0.2", "run.kill_grace_s=0.5", "run.lock_stale_after_s=60")


@pytest.fixture
def ssh_state(state_dir: Path) -> Iterator[tuple[RunState, TcpProxy]]:
    """A one-target SSH demo run whose target is reached only through a TCP proxy in front of its sshd."""
    with demo_behind_proxy(*_SSH_SETTINGS) as (state, _host, _root, proxy, _remote):
        yield state, proxy


@pytest.mark.sshd
@pytest.mark.slow
@pytest.mark.skipif(not sshd_available()[0], reason=sshd_available()[1])
def test_a_lock_and_a_version_probe_over_a_slow_link_get_timeout_reports(
        ssh_state: tuple[RunState, TcpProxy]) -> None:
    """Over a link delayed 0.25 s each way, taking the target's lock and probing its version outlast their 0.5 s
    budgets: each gets warnings and a classified report naming it, the lock's with the link's latency."""
    state, proxy = ssh_state
    body = state.snapshot()
    seen: list[dict[str, Any]] = []
    bus = EventBus()
    bus.subscribe(lambda event: seen.append(json.loads(json.dumps(event.to_json()))))
    package = PackageInfo(**{**body["package"], "upgrades_from": tuple(body["package"]["upgrades_from"])})
    env = RunEnv(state=state, plan=recorded_plan(state), config=body["config"], package=package, bus=bus,
                 decide=lambda *_: "abort", logger=logging.getLogger("test_every_deadline"))
    executor = Executor(env)
    locks = TargetLocks(run_id=state.run_id, config=env.config, break_lock=False)
    proxy.set_latency(0.25)
    try:
        session = executor.session("dr-demo-1")
        started = time.monotonic()
        with executor.watched("dr-demo-1", executor.lock_operation(), session):
            previous, refused = locks.acquire("dr-demo-1", session, str(env.config["targets"]["dr-demo-1"]["root"]))
        assert refused is None and previous is None, refused
        # The probe is stopped at its deadline; the link is healed meanwhile so that only the probe is slow.
        threading.Timer(3.0, proxy.set_latency, (0.0,)).start()
        version = TargetFlow(env, executor, "dr-demo-1").probe_version()
        took = time.monotonic() - started
    finally:
        proxy.set_latency(0.0)
        locks.release("dr-demo-1")
        locks.close()
        executor.close()
    assert version is None  # it timed out: no version is claimed
    lock = check_report(seen, "lock", "lock", 0.5)
    assert lock["data"]["category"] == "network" and lock["data"]["timeout_key"] == "watchdog.lock_timeout_s"
    # The link's latency, measured at the time of the report: the reason says it.
    assert lock["data"]["measurement"]["latency_ms"] is not None, lock["data"]
    probe = check_report(seen, "installed_version", "version probe dr-core", 0.5)
    assert probe["data"]["timeout_key"] == "watchdog.version_probe_timeout_s"
    assert took < 120, took
