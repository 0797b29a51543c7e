"""A step's remote command never outlives the step, and a compensation that hangs is retried.

Real sshd behind the fault proxy (tests/tcp_proxy.py), a real core plugin whose step's command appends a
timestamp to a file on the target every 0.2 s and whose compensation writes its own start time there: the
proof that nothing of the step ran after its compensation started is read from the target's own files.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import psutil
import pytest

from drhost.config import load_config
from drhost.orchestrator import create_run, drive
from drhost.plan import build_plan
from drhost.plugins import discover
from drhost.state import RunState
from drhost_hookspecs import PackageInfo
from plugin_factory import make_plugin
from sshd_hosts import SshHost, sshd_available
from tcp_proxy import TcpProxy

SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "schemas" / "command-stop-events.schema.json").read_text())

pytestmark = [pytest.mark.sshd, pytest.mark.slow, pytest.mark.integration,
              pytest.mark.skipif(not sshd_available()[0], reason=sshd_available()[1])]

#: A core plugin. ``write``: one long command appending a timestamp every 0.2 s (LOOPS times). Its
#: compensation records its start time; it hangs (sleeps 30 s) on its "first" attempt, or on "always"; with
#: "loop" its first attempt runs a long command of its own, appending a timestamp to undo.ts every 0.2 s.
#: ``drhost_verify`` reads from the target whether the step was undone; the version is the target's VERSION.
PLUGIN = """
import pathlib

@hookimpl
def drhost_plugin_info():
    return PluginInfo(name="zz-link", department="test", plugin_class=PluginClass("core"))

def write(ctx):
    root = ctx.target.install_root
    ctx.run(["/bin/sh", "-c", f"i=0; while [ $i -lt LOOPS ]; do date +%s.%N >> {root}/step.ts; sleep 0.2; "
                              f"i=$((i+1)); done"], timeout=90)

def fail(ctx):
    raise RuntimeError("the next step fails: roll back")

def undo(ctx):
    root = ctx.target.install_root
    ctx.run(["/bin/sh", "-c", f"date +%s.%N >> {root}/comp.ts"])
    if HANG == "loop" and ctx.run(["test", "-e", f"{root}/looped"], check=False).returncode:
        ctx.run(["/bin/sh", "-c", f"touch {root}/looped; i=0; while [ $i -lt 200 ]; do date +%s.%N >> "
                                  f"{root}/undo.ts; sleep 0.2; i=$((i+1)); done"], timeout=90)
    if HANG == "always" or (HANG == "first" and ctx.run(["test", "-e", f"{root}/hung"], check=False).returncode):
        ctx.run(["/bin/sh", "-c", f"touch {root}/hung; sleep 30; date +%s.%N >> {root}/late.ts"])
    ctx.run(["/bin/sh", "-c", f"date +%s.%N >> {root}/undone.ts"])

@hookimpl
def drhost_installed_version(ctx):
    path = ctx.target.install_root + "/VERSION"
    return ctx.read_text(path).strip() if ctx.exists(path) else None

@hookimpl
def drhost_verify(stage, phase, ctx):
    root = ctx.target.install_root
    if phase.value == "rolled_back" and stage.value == "upgrade" and not ctx.exists(f"{root}/undone.ts"):
        return [f"{root}/undone.ts is missing: the write step was not undone"]
    return []

def nothing(ctx):
    pass

@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.UPGRADE:
        register(Step("write", write, retryable=RETRYABLE, timeout_s=TIMEOUT, category=Category.PLUGIN, order=10,
                      cleanup=nothing, rollback=undo))
        if FAIL_NEXT:
            register(Step("fail", fail, retryable=False, timeout_s=30, category=Category.PLUGIN, order=20,
                          cleanup=nothing, rollback=nothing))
"""


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRHOST_LOAD_PLUGINS", "zz-link")


def make_run(site: Path, tmp_path: Path, host: SshHost, proxy: TcpProxy, *more: str, hang: str = "never",
             fail_next: bool = False, retryable: bool = False, timeout: float = 90, loops: int = 200) -> RunState:
    source = (PLUGIN.replace("HANG", repr(hang)).replace("FAIL_NEXT", str(fail_next))
              .replace("LOOPS", str(loops))
              .replace("RETRYABLE", str(retryable)).replace("TIMEOUT", str(timeout)))
    make_plugin(site, "zz-link", source)
    sys.modules.pop("zz_link", None)  # a core plugin is imported into this process: each test its own source
    importlib.invalidate_caches()
    known = tmp_path / "known_hosts_proxy"
    key_type, key = (host.directory / "host_key.pub").read_text().split()[:2]
    known.write_text(f"[{proxy.host}]:{proxy.port} {key_type} {key}\n")
    host.root.mkdir(parents=True, exist_ok=True)
    config = load_config(overrides=[
        "target.t.transport=ssh", f"target.t.host={proxy.host}", f"target.t.port={proxy.port}",
        f"target.t.root={host.root}", f"target.t.key_file={host.client_key}", f"target.t.known_hosts={known}",
        "target.t.connect_timeout_s=2", "ssh.plugin_exec.heartbeat_s=0.5", "ssh.plugin_exec.dead_after_s=2",
        "ssh.plugin_exec.reconnects=1", "run.kill_grace_s=0.5", *more])
    plan = build_plan(discover(), config.data)
    package = PackageInfo("p", "2", ("1",), str(tmp_path / "pkg"), "", "0" * 64, 0)
    return create_run(config=config.data, config_files=[], plan=plan, package=package)


def still_running(marker: str) -> list[int]:
    """Processes on this machine (the sshd hosts are local) whose command line contains ``marker``."""
    return [p.pid for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]


def stamps(path: Path) -> list[float]:
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def events(state: RunState) -> list[dict[str, Any]]:
    """The run's journal; every event docs/schemas/command-stop-events.schema.json covers is checked against it."""
    found = [json.loads(line) for line in (state.run_dir / "events.jsonl").read_text().splitlines()]
    for event in found:
        if event["event"] in ("step.command_stopped", "rollback.step"):
            jsonschema.validate(event, SCHEMA)
    return found


def blackhole_mid_step(proxy: TcpProxy, root: Path, back_after_s: float | None,
                       watched: str = "step.ts") -> threading.Event:
    """Once the step's command has written a few lines, drop everything between drhost and the target (the
    heartbeat declares the peer dead), then reset every connection, new ones included, so reconnects fail
    fast (without the wait of a silent handshake); let it through again ``back_after_s`` later (None: never)."""
    done = threading.Event()

    def fault() -> None:
        deadline = time.monotonic() + 60
        while len(stamps(root / watched)) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        proxy.blackhole(True)
        time.sleep(3)
        proxy.limit_data(0)
        proxy.blackhole(False)
        proxy.cut()
        if back_after_s is not None:
            time.sleep(back_after_s)
            proxy.limit_data(None)
        done.set()

    threading.Thread(target=fault, daemon=True).start()
    return done


def assert_nothing_after_compensation(root: Path) -> None:
    writes, (compensation, *_) = stamps(root / "step.ts"), stamps(root / "comp.ts")
    assert writes, "the step's command never wrote"
    assert max(writes) < compensation, (f"the step's command wrote {sum(w > compensation for w in writes)} "
                                        f"line(s) after its compensation started")
    time.sleep(0.6)  # three more of its ticks: a command still running would have written by now
    assert stamps(root / "step.ts") == writes


def test_link_lost_mid_step_the_command_is_stopped_before_its_compensation(
        site: Path, tmp_path: Path, state_dir: Path, host: SshHost) -> None:
    """Link black-holed mid-step, back 6 s later: the step's command is stopped (confirmed) before rollback."""
    with TcpProxy(host.host, host.port).start() as proxy:
        state = make_run(site, tmp_path, host, proxy, "run.unreachable_wait_s=60")
        back = blackhole_mid_step(proxy, host.root, back_after_s=3)
        summary = drive(state, mode="upgrade", decide=lambda *args: "rollback")
        assert back.wait(30)
    assert summary.status == "rolled_back" and summary.exit_code == 3, summary
    assert_nothing_after_compensation(host.root)
    names = [e["event"] for e in events(state)]
    assert "step.failed" in names
    stopped = next(e for e in events(state) if e["event"] == "step.command_stopped")
    assert stopped["step"] == "write" and stopped["data"]["stopped"], stopped
    assert names.index("step.command_stopped") < names.index("rollback.started")


def test_a_step_that_times_out_while_the_link_is_down_is_stopped_before_its_compensation(
        site: Path, tmp_path: Path, state_dir: Path, host: SshHost) -> None:
    """The step's deadline passes while the link is down: its command is stopped (confirmed) before rollback."""
    with TcpProxy(host.host, host.port).start() as proxy:
        # Dead only 4 s after the last reply: the 3 s deadline falls while the link is down, undeclared.
        state = make_run(site, tmp_path, host, proxy, "run.unreachable_wait_s=60", "ssh.plugin_exec.dead_after_s=4",
                         "run.kill_grace_s=5", timeout=3)
        back = blackhole_mid_step(proxy, host.root, back_after_s=3)
        summary = drive(state, mode="upgrade", decide=lambda *args: "rollback")
        assert back.wait(30)
    assert summary.status == "rolled_back" and summary.exit_code == 3, summary
    assert_nothing_after_compensation(host.root)
    failed = next(e for e in events(state) if e["event"] == "step.failed")
    assert failed["data"]["ended"] == "timeout", failed
    names = [e["event"] for e in events(state)]
    assert names.index("step.command_stopped") < names.index("rollback.started")


def test_still_unreachable_the_stop_is_queued_first_and_a_later_rollback_does_it(
        site: Path, tmp_path: Path, state_dir: Path, host: SshHost) -> None:
    """Link gone past run.unreachable_wait_s: unreachable, exit 6, stop queued; `rollback` stops it first."""
    with TcpProxy(host.host, host.port).start() as proxy:
        state = make_run(site, tmp_path, host, proxy, "run.unreachable_wait_s=2")
        gone = blackhole_mid_step(proxy, host.root, back_after_s=None)
        summary = drive(state, mode="upgrade", decide=lambda *args: "rollback")
        assert gone.wait(5)
        assert summary.status == "interrupted" and summary.exit_code == 6, summary
        record = state.get("targets")["t"]
        assert record["status"] == "unreachable" and record["phase"] == "rollback"
        assert record["pending_stop"]["step"] == "write"
        assert not (host.root / "comp.ts").exists()  # no compensation next to a command that may still run
        queued = next(e for e in events(state) if e["event"] == "target.rollback_queued")
        assert "may still run on the target" in queued["message"] and "stop is queued first" in queued["message"]
        assert len(stamps(host.root / "step.ts")) > 5, "the command died with the link: nothing to prove"
        proxy.limit_data(None)
        again = drive(state, mode="rollback", decide=lambda *args: "rollback")
    assert again.status == "rolled_back" and again.exit_code == 3, again
    assert state.get("targets")["t"]["pending_stop"] is None
    assert_nothing_after_compensation(host.root)


def test_link_lost_mid_compensation_its_command_is_stopped_before_the_compensation_runs_again(
        site: Path, tmp_path: Path, state_dir: Path, host: SshHost) -> None:
    """Link black-holed during a compensation's own command, back 3 s later: that command is stopped (confirmed)
    before the stage's recovery runs the compensation again; none of its writes lands after that."""
    with TcpProxy(host.host, host.port).start() as proxy:
        state = make_run(site, tmp_path, host, proxy, "run.unreachable_wait_s=60", hang="loop", fail_next=True,
                         loops=3)
        back = blackhole_mid_step(proxy, host.root, back_after_s=3, watched="undo.ts")
        summary = drive(state, mode="upgrade", decide=lambda *args: "rollback")
        assert back.wait(30)
    assert summary.status == "rolled_back" and summary.exit_code == 3, summary
    writes, (first, again, *_) = stamps(host.root / "undo.ts"), stamps(host.root / "comp.ts")
    assert writes and first < min(writes)
    assert max(writes) < again, f"{sum(w > again for w in writes)} write(s) after the compensation ran again"
    time.sleep(0.6)  # three more ticks: a command still running would have written by now
    assert stamps(host.root / "undo.ts") == writes
    found = events(state)
    stopped = [e for e in found if e["event"] == "step.command_stopped"]
    assert stopped and stopped[0]["step"] == "write" and stopped[0]["data"]["stopped"], stopped
    failed_try = next(e for e in found if e["event"] == "rollback.step" and e["step"] == "write")
    assert failed_try["data"]["ended"] != "ok", failed_try
    assert found.index(stopped[0]) < found.index(failed_try)
    assert (host.root / "undone.ts").exists()


def test_a_compensation_that_hangs_is_killed_and_retried_per_its_class(
        site: Path, tmp_path: Path, state_dir: Path, host: SshHost) -> None:
    """A retryable step's compensation that hangs past its deadline is killed (confirmed) and run again."""
    with TcpProxy(host.host, host.port).start() as proxy:
        state = make_run(site, tmp_path, host, proxy, "class.core.retries=1", hang="first", fail_next=True,
                         retryable=True, timeout=4, loops=3)
        summary = drive(state, mode="upgrade", decide=lambda *args: "rollback")
    assert summary.status == "rolled_back" and summary.exit_code == 3, summary
    (first, second) = stamps(host.root / "comp.ts")
    (undone,) = stamps(host.root / "undone.ts")
    assert first < second < undone
    assert not still_running(f"{host.root}/hung; sleep 30"), "the hung first attempt was not stopped"
    tries = [e for e in events(state) if e["event"] == "rollback.step" and e["step"] == "write"]
    assert [(e["data"]["ended"], e["data"]["attempt"]) for e in tries] == [("timeout", 1), ("ok", 2)], tries
    assert tries[0]["data"]["retrying_in_s"] is not None
    assert state.get("targets")["t"]["rollback"]["failed_calls"].get("upgrade") == []


def test_an_inconsistent_targets_procedure_names_the_plugin_and_what_it_left_read_from_the_target(
        site: Path, tmp_path: Path, state_dir: Path, host: SshHost) -> None:
    """A compensation that hangs in the pass and its recovery: inconsistent, exit 4; the procedure names the
    plugin, how its compensation ended, what its verification read, the commands left and the version."""
    with TcpProxy(host.host, host.port).start() as proxy:
        state = make_run(site, tmp_path, host, proxy, "class.core.retries=0", hang="always", fail_next=True,
                         retryable=True, timeout=2, loops=3)
        (host.root / "VERSION").write_text("2.0.0\n")  # what the failed compensation left: the new version
        summary = drive(state, mode="upgrade", decide=lambda *args: "rollback")
    assert summary.status == "failed" and summary.exit_code == 4, summary
    record = state.get("targets")["t"]
    assert record["status"] == "inconsistent"
    procedure = "\n".join(record["manual_procedure"])
    assert (f"- zz-link: zz-link/write rollback stopped after 2 s (timeout); its verification reports: "
            f"{host.root}/undone.ts is missing: the write step was not undone") in procedure, procedure
    assert "commands of this run still running: none" in procedure, procedure
    assert "installed version: 2.0.0 (as zz-link reads it)" in procedure, procedure
    assert not still_running(f"{host.root}/hung; sleep 30") and not (host.root / "undone.ts").exists()
    assert len(stamps(host.root / "comp.ts")) == 2  # the pass and its recovery
