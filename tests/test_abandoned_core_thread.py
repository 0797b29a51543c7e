"""A core step that ignores its stop is abandoned in a thread of drhost: its target stays marked "may still be
changing" until the thread returns or the drhost process ends, in the record, in the run's summary and in
``drhost status``; after that, the record says a core thread was abandoned while running.

Real drhost processes (the CLI), a real thread that keeps running after its timeout and really changes the
target after drhost recorded it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import run_json
from drhost.config import load_config
from drhost.orchestrator import create_run, drive
from drhost.orchestrator._abandoned import ABANDONED_NOTE, abandoned_view
from drhost.packaging import build_package
from drhost.plan import build_plan
from drhost.plugins import discover
from drhost_hookspecs import PackageInfo
from plugin_factory import make_plugin
from state_rows import read_state

pytestmark = [pytest.mark.integration]

Drhost = Callable[..., subprocess.CompletedProcess[str]]

#: A core plugin whose step ignores cancellation: it sleeps SECONDS in plain time.sleep, then writes a file.
STUCK = """
import pathlib, time

@hookimpl
def drhost_plugin_info():
    return PluginInfo(name="zz-core", department="test", plugin_class=PluginClass("core"))

def stuck(ctx):
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        time.sleep(0.05)  # never looks at ctx.cancelled
    pathlib.Path(ctx.target.install_root, "late.txt").write_text("changed after drhost recorded the target")

@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.UPGRADE:
        register(Step("stuck", stuck, retryable=True, timeout_s=1, category=Category.PLUGIN))
"""

STILL_RUNNING = re.compile(r"^zz-core step stuck abandoned at \d\d:\d\d:\d\d \(thread still running\)$")


def setup(tmp_path: Path, seconds: float) -> tuple[Path, Path, Path, dict[str, str]]:
    site = tmp_path / "site"
    make_plugin(site, "zz-core", STUCK.replace("SECONDS", str(seconds)))
    root = tmp_path / "target"
    root.mkdir()
    inventory = tmp_path / "inv.ini"
    inventory.write_text(f"[target:t]\ntransport = local\nroot = {root}\n")
    package = build_package("2.0.0", tmp_path / "pkg")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "DRHOST_LOAD_PLUGINS": "zz-core"}
    return site, root, inventory, env | {"PACKAGE": str(package)}


def upgrade(drhost: Drhost, inventory: Path, env: dict[str, str], *more: str) -> subprocess.CompletedProcess[str]:
    return drhost("upgrade", "-i", str(inventory), "--package", env["PACKAGE"], "--on-failure", "rollback",
                  "--set", "run.kill_grace_s=0.5", *more, env=env)


def test_the_summary_marks_the_target_and_a_later_status_says_the_thread_was_abandoned(
        drhost: Drhost, tmp_path: Path) -> None:
    """--json lists still_changing while drhost runs; once it exited, status says the thread was abandoned."""
    _, root, inventory, env = setup(tmp_path, 30)
    proc = upgrade(drhost, inventory, env, "--json")
    assert proc.returncode == 3, proc.stderr[-3000:]  # a hung core thread forces the rollback
    summary = run_json(proc)
    (still,) = summary["targets"]["t"]["still_changing"]
    assert STILL_RUNNING.match(still), still
    run_dir = Path(summary["run_dir"])
    state = read_state(run_dir)
    assert state["still_changing_at_finish"]["targets"] == {"t": [still]}
    (entry,) = state["targets"]["t"]["abandoned_threads"]
    assert entry["plugin"] == "zz-core" and entry["step"] == "stuck" and entry["returned"] is None
    assert '"target.still_changing"' in (run_dir / "events.jsonl").read_text()

    # Another drhost, after the first has exited (and its thread with it).
    status = drhost("status", summary["run_id"], "--json")
    (target,) = json.loads(status.stdout)["targets"]
    assert target["still_changing"] == []
    (note,) = target["abandoned_threads"]
    assert note.startswith(f"{ABANDONED_NOTE} (zz-core step stuck abandoned at ")
    assert target["consistent"] == f"yes: old version when recorded; but {note}"
    text = drhost("status", summary["run_id"]).stdout
    assert f"note: {ABANDONED_NOTE}" in text
    assert not (root / "late.txt").exists()  # the thread ended with its process, before it could write


def test_the_plain_summary_prints_may_still_be_changing(drhost: Drhost, tmp_path: Path) -> None:
    """Without --json, the run's last lines name the target that may still be changing and why."""
    _, _, inventory, env = setup(tmp_path, 30)
    proc = upgrade(drhost, inventory, env, "--plain")
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if "MAY STILL BE CHANGING" in x)
    assert STILL_RUNNING.match(line.split("MAY STILL BE CHANGING: ", 1)[1]), line


def test_while_drhost_lives_status_elsewhere_says_may_still_be_changing_until_the_thread_returns(
        drhost: Drhost, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the abandoned thread runs, another process's status says "may still be changing"; when it returns,
    the record says it returned, and the target has indeed changed after drhost recorded it."""
    site, root, _, _ = setup(tmp_path, 5)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("DRHOST_LOAD_PLUGINS", "zz-core")
    importlib.invalidate_caches()
    config = load_config(overrides=["target.t.transport=local", f"target.t.root={root}", "run.kill_grace_s=0.5"])
    plan = build_plan(discover(), config.data)
    package = PackageInfo("p", "2", ("1",), str(tmp_path / "pkg"), "", "0" * 64, 0)
    state = create_run(config=config.data, config_files=[], plan=plan, package=package)
    summary = drive(state, mode="upgrade", decide=lambda *args: "rollback")
    assert summary.status == "rolled_back"
    (still,) = summary.targets["t"]["still_changing"]
    assert STILL_RUNNING.match(still), still

    status = drhost("status", state.run_id, "--json")
    (target,) = json.loads(status.stdout)["targets"]
    (elsewhere,) = target["still_changing"]
    assert elsewhere.endswith(f"(thread left running in drhost pid {os.getpid()}, which is still running)")
    assert target["consistent"].startswith("unknown: may still be changing (zz-core step stuck abandoned at ")

    deadline = time.monotonic() + 15
    while not (root / "late.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (root / "late.txt").exists(), "the abandoned thread never finished"
    time.sleep(0.5)
    record: dict[str, Any] = state.get("targets")["t"]
    view = abandoned_view(record)
    assert view["still_changing"] == []
    (over,) = view["abandoned"]
    assert "the thread has returned since: the target may have changed after drhost recorded it" in over
