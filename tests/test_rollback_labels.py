"""A rollback that does not finish is described by evidence: the compensations that did not finish and what each
plugin's verification (drhost_verify, rolled_back) actually reported — never a fixed "neither version" label.

Real runs through the CLI (``drhost upgrade``, then ``drhost status`` in another process), real worker
processes whose compensation hangs and is killed at its deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import run_json
from drhost.orchestrator._rollback import rollback_verdict
from drhost.packaging import build_package
from plugin_factory import make_plugin

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Drhost = Callable[..., subprocess.CompletedProcess[str]]

#: A database-class plugin whose upgrade step works and whose compensation hangs, ignoring its stop.
HANGING_ROLLBACK = """
import time

@hookimpl
def drhost_plugin_info():
    return PluginInfo(name="zz-stuck", department="test", plugin_class=PluginClass("database"))

def work(ctx):
    ctx.write_text(ctx.target.install_root + "/stuck.txt", "new")

def undo(ctx):
    while True:  # time.sleep, not ctx.sleep: the stop request is ignored
        time.sleep(0.1)

@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.UPGRADE:
        register(Step("work", work, rollback=undo, retryable=True, timeout_s=2, category=Category.PLUGIN, order=1))

@hookimpl
def drhost_verify(stage, phase, ctx):
    return []
"""

#: A database-class plugin whose step fails (so the stage is rolled back); its verification is VERIFY.
FAILING = """
from drhost_hookspecs import StepFailed

@hookimpl
def drhost_plugin_info():
    return PluginInfo(name="zz-db", department="test", plugin_class=PluginClass("database"))

def broken(ctx):
    raise StepFailed("schema upgrade failed", retryable=False)

@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.UPGRADE:
        register(Step("broken", broken, retryable=True, timeout_s=30, category=Category.PLUGIN, order=2))

@hookimpl
def drhost_verify(stage, phase, ctx):
    if phase.value != "rolled_back" or stage.value != "upgrade":
        return []
VERIFY
"""

VERIFIES = {
    "raises": "    raise RuntimeError('catalog unreadable')",
    "problem": "    return ['catalog still at schema 2']",
    "clean": "    return []",
}


def upgrade(drhost: Drhost, tmp_path: Path, verify: str) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    site = tmp_path / "site"
    make_plugin(site, "zz-stuck", HANGING_ROLLBACK)
    make_plugin(site, "zz-db", FAILING.replace("VERIFY", VERIFIES[verify]))
    root = tmp_path / "target"
    root.mkdir()
    inventory = tmp_path / "inv.ini"
    inventory.write_text(f"[target:t]\ntransport = local\nroot = {root}\n")
    package = build_package("2.0.0", tmp_path / "pkg")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "DRHOST_LOAD_PLUGINS": "zz-stuck,zz-db"}
    proc = drhost("upgrade", "-i", str(inventory), "--package", str(package), "--json", "--on-failure", "rollback",
                  "--set", "run.kill_grace_s=0.5", env=env)
    return run_json(proc), proc


def status_of(drhost: Drhost, run_id: str) -> tuple[dict[str, Any], str]:
    as_json = drhost("status", run_id, "--json")
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    text = drhost("status", run_id)
    assert text.returncode == 0, text.stderr[-2000:]
    (target,) = json.loads(as_json.stdout)["targets"]
    return target, text.stdout


KILLED = "rollback of stage upgrade: zz-stuck/work rollback killed after 2 s"


def test_hung_compensation_and_a_verify_that_did_not_run_read_unknown(drhost: Drhost, tmp_path: Path) -> None:
    """A compensation killed after its timeout, one plugin verified old, one could not verify: "unknown", each named."""
    summary, proc = upgrade(drhost, tmp_path, "raises")
    assert proc.returncode == 4, proc.stderr[-3000:]
    label = summary["targets"]["t"]["verification"]
    assert summary["targets"]["t"] == {"status": "inconsistent", "version": None, "verification": label}
    assert label.startswith(KILLED + "; verification reports: ")
    assert "old version (zz-stuck)" in label
    assert "unknown (zz-db: verify not run: [upgrade] RuntimeError: catalog unreadable" in label
    target, text = status_of(drhost, summary["run_id"])
    assert target["consistent"] == f"unknown: {label}; follow the manual procedure"
    assert target["verification"]["verdict"] == "unknown"
    assert "neither" not in text and "neither" not in proc.stderr
    events = (Path(summary["run_dir"]) / "events.jsonl").read_text()
    (inconsistent,) = [json.loads(line) for line in events.splitlines() if '"target.inconsistent"' in line]
    assert inconsistent["message"] == (f"rollback did not complete, also after a recovery pass: {label}; follow "
                                       f"the manual procedure")


def test_a_verification_that_reports_a_problem_reads_no(drhost: Drhost, tmp_path: Path) -> None:
    """A plugin whose verification names a problem makes the verdict NO, with the problem it reported."""
    summary, proc = upgrade(drhost, tmp_path, "problem")
    assert proc.returncode == 4, proc.stderr[-3000:]
    label = summary["targets"]["t"]["verification"]
    assert "not restored (zz-db: [upgrade] catalog still at schema 2)" in label and "old version (zz-stuck)" in label
    target, _ = status_of(drhost, summary["run_id"])
    assert target["consistent"].startswith(f"NO: {KILLED}")


def test_every_verification_clean_but_a_compensation_killed_reads_unconfirmed(drhost: Drhost,
                                                                              tmp_path: Path) -> None:
    """Every plugin verified the old state, yet a compensation was killed: "unconfirmed", not NO and not yes."""
    summary, proc = upgrade(drhost, tmp_path, "clean")
    assert proc.returncode == 4, proc.stderr[-3000:]
    label = summary["targets"]["t"]["verification"]
    assert label == f"{KILLED}; verification reports: old version (zz-db), old version (zz-stuck)"
    target, text = status_of(drhost, summary["run_id"])
    assert target["consistent"].startswith("unconfirmed: ")
    assert f"consistent: unconfirmed: {KILLED}" in text


def test_a_record_without_rollback_evidence_claims_nothing() -> None:
    """A record that holds no verification (an older run) gets no verdict, so nothing is claimed for it."""
    assert rollback_verdict({"rollback": {"stages": {"upgrade": "failed"}, "errors": ["x"]}}) is None
    assert rollback_verdict({"rollback": {"verification": {"upgrade": {}}}}) == {
        "verdict": "unknown", "label": "verification reports: nothing (no plugin verifies a rollback)",
        "plugins": {}, "failed_calls": []}
