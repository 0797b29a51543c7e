"""The orchestrator's rules, checked with small real plugins that record what ran on a local target."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from drhost.config import load_config
from drhost.orchestrator import RunSummary, create_run, drive
from drhost.plan import build_plan
from drhost.plugins import discover
from drhost.state import RunState, read_journal
from drhost_hookspecs import PackageInfo, Stage
from plugin_factory import make_plugin, simple_plugin

RECORDER = """
import os

def note(ctx, what):
    # Through the Context: in a container the target's files are not visible to the plugin.
    path = os.path.join(ctx.target.install_root, "log")
    before = ctx.read_text(path) if ctx.exists(path) else ""
    ctx.write_text(path, before + what + "\\n")

def step(name):
    def run(ctx):
        note(ctx, name)
    return run

@hookimpl
def drhost_plugin_info():
    return PluginInfo(name=NAME, department="test", plugin_class=PluginClass(CLASS))

@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.PRECHECK:
        register(Step("check", step("check"), retryable=True, timeout_s=30, category=Category.FILE))
    if stage is Stage.UPGRADE:
        register(Step("a", step("a"), retryable=True, timeout_s=30, category=Category.FILE, order=10,
                      cleanup=step("a.cleanup"), rollback=step("a.rollback")))
        register(Step("b", step("b"), retryable=False, timeout_s=30, category=Category.FILE, order=20,
                      cleanup=step("b.cleanup"), rollback=step("b.rollback")))
        register(Step("c", step("c"), retryable=True, timeout_s=30, category=Category.FILE, order=30))

@hookimpl
def drhost_cleanup(stage, ctx):
    note(ctx, f"cleanup:{stage.value}")

@hookimpl
def drhost_rollback(stage, ctx):
    note(ctx, f"rollback:{stage.value}")

@hookimpl
def drhost_verify(stage, phase, ctx):
    note(ctx, f"verify:{stage.value}:{phase.value}")
    return []
"""


def recorder(name: str, plugin_class: str) -> str:
    return f"NAME = {name!r}\nCLASS = {plugin_class!r}\n" + RECORDER


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[RunSummary, list[str], RunState]]:
    """Build a one-target run with a recorder plugin and drive it; returns (summary, log lines, state)."""
    site = tmp_path / "site"
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DRHOST_INSTANT_RETRIES", "1")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    root = tmp_path / "target"
    root.mkdir()

    def run(plugin_class: str = "core", overrides: tuple[str, ...] = (), decision: str = "rollback",
            before: Callable[[RunState], None] | None = None,
            source: str | None = None) -> tuple[RunSummary, list[str], RunState]:
        make_plugin(site, "rec", source or recorder("rec", plugin_class))
        import importlib

        importlib.invalidate_caches()
        # Core plugins are imported into this process: forget the previous test's module of the same name.
        monkeypatch.delitem(sys.modules, "rec", raising=False)
        monkeypatch.setenv("DRHOST_LOAD_PLUGINS", "rec")
        config = load_config(overrides=["target.t.transport=local", f"target.t.root={root}", *overrides])
        plan = build_plan(discover(), config.data)
        # A real (empty) file with its real digest: resume re-checks the package it was verified with.
        (tmp_path / "pkg").write_bytes(b"")
        package = PackageInfo("p", "2", ("1",), str(tmp_path / "pkg"), "", hashlib.sha256(b"").hexdigest(), 0)
        state = create_run(config=config.data, config_files=[], plan=plan, package=package)
        mode = "upgrade"
        if before is not None:
            before(state)
            mode = "resume"
        summary = drive(state, mode=mode, decide=lambda target, stage, message: decision)
        log = (root / "log").read_text().split() if (root / "log").exists() else []
        return summary, log, state

    return run


def events_of(state: RunState) -> list[dict[str, object]]:
    return read_journal(state.run_dir / "events.jsonl")


def test_clean_run_runs_every_step_once_and_verifies_each_stage(world) -> None:  # type: ignore[no-untyped-def]
    """Without faults each step runs once in order and every stage is verified as completed."""
    summary, log, _ = world()
    assert summary.status == "succeeded"
    assert [line for line in log if not line.startswith("verify")] == ["check", "a", "b", "c"]
    assert [line for line in log if line.startswith("verify")] == [
        f"verify:{s.value}:completed" for s in Stage.ordered()]


def test_retryable_step_is_retried_within_the_class_attempts(world) -> None:  # type: ignore[no-untyped-def]
    """A retryable step failing once is run again and the run succeeds; the failure event says 'retrying'."""
    summary, log, state = world(overrides=("plugin.rec.fault=a:fail:1",))
    assert summary.status == "succeeded" and log.count("a") == 1  # the injected failure happens before the body
    failed = [e for e in events_of(state) if e["event"] == "step.failed"]
    assert len(failed) == 1 and failed[0]["data"]["attempt"] == 1 and failed[0]["data"]["attempts"] == 4
    assert failed[0]["data"]["retrying_in_s"] == 0


def test_retries_stop_at_the_class_limit(world) -> None:  # type: ignore[no-untyped-def]
    """A business plugin gets 1 + 2 attempts, then it is skipped and the run completes."""
    summary, log, state = world("business", overrides=("plugin.rec.fault=a:fail",))
    assert summary.status == "succeeded"
    attempts = [e["data"]["attempt"] for e in events_of(state) if e["event"] == "step.failed"]
    assert attempts == [1, 2, 3]
    assert "b" not in log and "c" not in log
    assert "rec" in state.get("targets")["t"]["skipped_plugins"]


@pytest.mark.podman
def test_third_party_failure_is_recorded_and_the_run_goes_on(world) -> None:  # type: ignore[no-untyped-def]
    """A third-party failure is recorded; its plugin's later steps still run."""
    summary, log, state = world("third_party", overrides=("plugin.rec.fault=a:fail",))
    assert summary.status == "succeeded" and log[-1] != "a" and "c" in log
    assert state.get("targets")["t"]["errors"][0]["action"] == "recorded"


def test_non_retryable_failure_with_retry_cleans_up_and_restarts_the_stage(world) -> None:  # type: ignore[no-untyped-def]
    """Retrying a failed non-retryable step first cleans up (last step first, then plugin hooks), then restarts
    the upgrade stage from its first step."""
    summary, log, state = world(overrides=("plugin.rec.fault=b:fail:1",), decision="retry")
    assert summary.status == "succeeded"
    upgrade = [line for line in log if not line.startswith(("verify", "check"))]
    assert upgrade == ["a", "b.cleanup", "a.cleanup", "cleanup:upgrade", "a", "b", "c"]
    names = [e["event"] for e in events_of(state)]
    assert names.index("stage.cleanup_started") < names.index("stage.retry")


def test_stage_retry_is_bounded(world) -> None:  # type: ignore[no-untyped-def]
    """When retries of a stage are used up, the target is rolled back instead."""
    summary, _, state = world(overrides=("plugin.rec.fault=b:fail", "run.stage_retries=1"), decision="retry")
    assert summary.status == "rolled_back"
    decisions = [e for e in events_of(state) if e["event"] == "stage.decision"]
    assert decisions[-1]["data"]["decision"] == "rollback" and "stage_retries" in decisions[-1]["message"]


def test_rollback_runs_compensations_lifo_then_hooks_then_verifies(world) -> None:  # type: ignore[no-untyped-def]
    """Rollback goes stage by stage in reverse: step compensations last-run-first, plugin hooks, verification."""
    summary, log, _ = world(overrides=("plugin.rec.fault=c:fail",))
    assert summary.status == "rolled_back"
    tail = log[log.index("c.rollback") if "c.rollback" in log else log.index("b.rollback"):]
    assert tail[:3] == ["b.rollback", "a.rollback", "rollback:upgrade"]
    assert "rollback:precheck" in tail and "verify:upgrade:rolled_back" in tail


def test_abort_leaves_the_target_for_resume(world) -> None:  # type: ignore[no-untyped-def]
    """Choosing abort changes nothing more on the target and leaves the run resumable."""
    summary, log, _ = world(overrides=("plugin.rec.fault=b:fail",), decision="abort")
    assert summary.status == "aborted" and summary.exit_code == 5
    assert not any("rollback" in line or "cleanup" in line for line in log)


def test_unfinished_non_retryable_step_is_cleaned_up_on_resume(world) -> None:  # type: ignore[no-untyped-def]
    """A non-retryable step found started-but-unfinished (controller crash) is cleaned up, then the stage restarts."""
    def crashed_mid_b(state: RunState) -> None:
        with state.mutate() as body:
            target = body["targets"]["t"]
            target["status"] = "running"
            for stage in ("precheck", "backup", "transfer"):
                target["stages"][stage] = "completed"
            target["stages"]["upgrade"] = "running"
            target["version_before"] = "1"
            target["steps"] = {
                "precheck/rec/check": {"status": "done", "seq": 1, "attempts": 1, "runs": 1},
                "upgrade/rec/a": {"status": "done", "seq": 2, "attempts": 1, "runs": 1},
                "upgrade/rec/b": {"status": "started", "seq": 3, "attempts": 1, "runs": 1},
            }
            target["seq"] = 3

    summary, log, state = world(before=crashed_mid_b)
    assert summary.status == "succeeded"
    assert [line for line in log if not line.startswith("verify")] == [
        "b.cleanup", "a.cleanup", "cleanup:upgrade", "a", "b", "c"]
    assert any(e["event"] == "step.interrupted" for e in events_of(state))


def test_unfinished_retryable_step_is_simply_run_again_on_resume(world) -> None:  # type: ignore[no-untyped-def]
    """A retryable step found started-but-unfinished is run again without cleanup."""
    def crashed_mid_a(state: RunState) -> None:
        with state.mutate() as body:
            target = body["targets"]["t"]
            target["status"] = "running"
            for stage in ("precheck", "backup", "transfer"):
                target["stages"][stage] = "completed"
            target["version_before"] = "1"
            target["steps"] = {"upgrade/rec/a": {"status": "started", "seq": 1, "attempts": 1, "runs": 1}}
            target["seq"] = 1

    summary, log, _ = world(before=crashed_mid_a)
    assert summary.status == "succeeded"
    assert [line for line in log if not line.startswith("verify")] == ["a", "b", "c"]


def test_checkpointed_state_survives_a_worker_killed_mid_step(world) -> None:  # type: ignore[no-untyped-def]
    """State a worker checkpointed before dying is in the run's state, for the compensations to use."""
    source = simple_plugin("rec", "business", step_body=(
        "import os, signal\nctx.state['backup'] = '/b/1'\nctx.checkpoint()\nos.kill(os.getpid(), signal.SIGKILL)"))
    summary, _, state = world(source=source)
    assert summary.status == "succeeded"  # business: skipped after its attempts
    assert state.get("targets")["t"]["plugin_state"]["rec"]["backup"] == "/b/1"


def test_a_rollback_failing_once_is_recovered_in_the_same_run(world) -> None:  # type: ignore[no-untyped-def]
    """A compensation that fails once is run again by recovery: the target ends rolled back, verified."""
    flaky = RECORDER.replace('''cleanup=step("b.cleanup"), rollback=step("b.rollback")''',
                             '''cleanup=step("b.cleanup"), rollback=flaky_rollback''') + '''
def flaky_rollback(ctx):
    marker = os.path.join(ctx.target.install_root, "rollback-attempts")
    count = int(ctx.read_text(marker)) if ctx.exists(marker) else 0
    ctx.write_text(marker, str(count + 1))
    if count == 0:
        raise RuntimeError("disk full while restoring")
    note(ctx, "b.rollback")
'''
    source = "NAME = 'rec'\nCLASS = 'core'\n" + flaky
    summary, log, state = world(source=source, overrides=("plugin.rec.fault=c:fail",))
    assert summary.status == "rolled_back" and summary.exit_code == 3
    assert state.get("targets")["t"]["status"] == "rolled_back"
    assert log.count("b.rollback") == 1
    events = [json.loads(line) for line in (state.run_dir / "events.jsonl").read_text().splitlines()]
    (recovery,) = [e for e in events if e["event"] == "rollback.recovery"]
    assert "disk full while restoring" in " ".join(recovery["data"]["errors"])


def test_a_rollback_failing_twice_leaves_an_inconsistent_target_with_a_procedure(world) -> None:  # type: ignore[no-untyped-def]
    """Recovery fails too: the target is marked inconsistent, evidence kept, a manual procedure given; once the
    cause is gone, drhost rollback finishes it."""
    broken = RECORDER.replace('''cleanup=step("b.cleanup"), rollback=step("b.rollback")''',
                              '''cleanup=step("b.cleanup"), rollback=stuck_rollback''') + '''
def stuck_rollback(ctx):
    if ctx.exists(os.path.join(ctx.target.install_root, "disk-full")):
        raise RuntimeError("disk full while restoring")
    note(ctx, "b.rollback")
'''
    source = "NAME = 'rec'\nCLASS = 'core'\n" + broken
    root = None

    def fill_disk(state: RunState) -> None:
        nonlocal root
        root = Path(state.get("config")["targets"]["t"]["root"])
        (root / "disk-full").write_text("")
        drive(state, mode="upgrade", decide=lambda *a: "rollback")

    summary, _log, state = world(source=source, overrides=("plugin.rec.fault=c:fail",), before=fill_disk)
    record = state.get("targets")["t"]
    assert record["status"] == "inconsistent" and summary.status == "failed" and summary.exit_code == 4
    assert record["phase"] == "rollback"
    procedure = record["manual_procedure"]
    assert procedure[0].startswith("1. make sure nothing drives t")
    assert any("disk full while restoring" in line for line in procedure)
    assert procedure[-1].endswith("(it retries only what failed and verifies again)")
    evidence = Path(record["evidence"])
    assert evidence.stat().st_mode & 0o777 == 0o600
    assert json.loads(evidence.read_text())["procedure"] == procedure
    assert root is not None
    (root / "disk-full").unlink()
    again = drive(state, mode="rollback", decide=lambda *a: "rollback")
    assert again.status == "rolled_back" and state.get("targets")["t"]["status"] == "rolled_back"


def test_resume_after_abort_cleans_up_the_failed_non_retryable_step(world) -> None:  # type: ignore[no-untyped-def]
    """Resuming an aborted run does not re-run a failed non-retryable step as it is: cleanup, then restart."""
    summary, _, state = world(overrides=("plugin.rec.fault=b:fail:1",), decision="abort")
    assert summary.status == "aborted"
    resumed = drive(state, mode="resume", decide=lambda *a: "rollback")
    log = (Path(state.get("config")["targets"]["t"]["root"]) / "log").read_text().split()
    upgrade = [line for line in log if not line.startswith(("verify", "check"))]
    assert resumed.status == "succeeded"
    assert upgrade == ["a", "b.cleanup", "a.cleanup", "cleanup:upgrade", "a", "b", "c"]


@pytest.mark.podman
def test_oversized_result_fails_the_step_but_keeps_the_saved_state(world) -> None:  # type: ignore[no-untyped-def]
    """A step whose result is too large to send fails; the state it checkpointed before is kept."""
    source = simple_plugin("rec", "third_party", step_body=(
        "ctx.state['backup'] = '/b/2'\nctx.checkpoint()\nctx.state['blob'] = 'x' * (2 * 1024 * 1024)"))
    summary, _, state = world(source=source, overrides=("run.worker_message_limit_bytes=1048576",))
    target = state.get("targets")["t"]
    assert summary.status == "succeeded"  # third_party: error recorded, run goes on
    assert "exceeds the limit" in target["errors"][0]["message"]
    assert target["plugin_state"]["rec"] == {"backup": "/b/2"}


def test_sandbox_that_cannot_start_fails_the_plugin_not_the_run(world) -> None:  # type: ignore[no-untyped-def]
    """A container that cannot be started mid-run fails that plugin's step with the reason; the run goes on."""
    summary, _, state = world("third_party", overrides=("container.podman=/nonexistent/podman",))
    target = state.get("targets")["t"]
    assert summary.status == "succeeded"  # third_party: error recorded, the run continues
    assert "cannot start the plugin's sandbox" in target["errors"][0]["message"]
    assert "/nonexistent/podman" in target["errors"][0]["message"]
