"""Class policies under injected faults: core/database abort and roll back, business is skipped,
third_party errors are recorded, slow steps just take longer, retryable steps are retried."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import TargetProbe, run_json
from state_rows import read_state

pytestmark = [pytest.mark.podman, pytest.mark.slow, pytest.mark.integration]

TARGETS = ["dr-demo-1", "dr-demo-2"]
# Two targets side by side are enough for "every target": a third adds a full upgrade to each of 18 cases.
FLAGS = ("--set", "run.forks=2", "--set", "run.kill_grace_s=0.5")
BASE = ("--demo-targets", "2", *FLAGS)


def targets_for(kind: str) -> list[str]:
    """The targets a fault drill runs on: both for a failure, where the class's policy is applied to every
    target side by side; one for a hang, a crash or a memory bomb, which differ in how the step ends, not in
    how a policy fans out over the targets (a second target would add an upgrade to each of 12 cases)."""
    return TARGETS if kind == "fail" else TARGETS[:1]

#: One upgrade-stage step per class: (plugin, class, step, timeout key).
PLUGINS = {
    "core": ("dr-core", "install_program_files"),
    "database": ("dr-database", "upgrade_db_schema"),
    "business": ("dr-catalog", "migrate_job_templates"),
    "third_party": ("dr-monitoring", "update_monitoring_config"),
}
ENDED = {"fail": "failed", "hang": "timeout", "crash": "crashed", "oom": "memory"}


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def roots_of(state: dict[str, Any]) -> list[Path]:
    return [Path(r) for r in state["demo"]["roots"]]


def fault_args(plugin_class: str, kind: str) -> list[str]:
    plugin, step = PLUGINS[plugin_class]
    args = [*FLAGS, "--demo-targets", str(len(targets_for(kind))), "--set", f"plugin.{plugin}.fault={step}:{kind}"]
    if kind == "hang":
        args += ["--set", f"timeouts.upgrade.{step}=2"]
    return args


def assert_upgraded(roots: list[Path], seed: list[tuple[Any, ...]], count: int = len(TARGETS)) -> None:
    assert len(roots) == count
    for root in roots:
        probe = TargetProbe(root)
        assert probe.current_version == "2.0.0"
        health = probe.health()
        assert health is not None and (health["status"], health["version"], health["schema"]) == ("ok", "2.0.0", 2)
        assert probe.schema() == 2
        assert probe.jobs() == seed
        assert "replicas" in probe.tables()


def assert_rolled_back(roots: list[Path], seed: list[tuple[Any, ...]], count: int = len(TARGETS)) -> None:
    assert len(roots) == count
    for root in roots:
        probe = TargetProbe(root)
        assert probe.current_version == "1.0.0"
        assert os.readlink(root / "current") == "releases/1.0.0"
        health = probe.health()
        assert health is not None, f"{root}: old daemon not running after rollback"
        assert (health["status"], health["version"], health["schema"]) == ("ok", "1.0.0", 1), health
        assert probe.schema() == 1
        assert probe.jobs() == seed
        assert "replicas" not in probe.tables()


def failed_events(events: list[dict[str, Any]], step: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "step.failed" and e.get("step") == step]


def run_with_fault(drhost: Any, plugin_class: str, kind: str,
                   expected_exit: int) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Run the demo with one fault; return (summary, state, events)."""
    proc = drhost("upgrade", "--demo", "--json", "--keep", *fault_args(plugin_class, kind))
    summary = run_json(proc)
    assert proc.returncode == expected_exit, proc.stderr[-3000:]
    run_dir = Path(summary["run_dir"])
    return summary, read_state(run_dir), read_events(run_dir)


@pytest.mark.parametrize("kind", ["fail", "hang", "crash", "oom"])
@pytest.mark.parametrize("plugin_class", ["core", "database"])
def test_abort_classes_roll_back(drhost: Any, plugin_class: str, kind: str,
                                 fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """A core or database step failing (any way) rolls every target back to 1.0.0, healthy, data intact."""
    plugin, step = PLUGINS[plugin_class]
    summary, state, events = run_with_fault(drhost, plugin_class, kind, 3)
    assert summary["status"] == "rolled_back"
    assert {t["status"] for t in summary["targets"].values()} == {"rolled_back"}
    assert {t["version"] for t in summary["targets"].values()} == {"1.0.0"}
    assert_rolled_back(roots_of(state), fresh_seed_jobs, len(targets_for(kind)))
    for name in targets_for(kind):
        record = state["targets"][name]
        assert record["status"] == "rolled_back"
        assert record["rollback"]["errors"] == [] and record["rollback"]["problems"] == []
        assert record["stages"]["upgrade"] == "failed"
        assert record["stages"]["postcheck"] == "pending"
        assert any(e["plugin"] == plugin and e["step"] == step and e["action"] == "stage failed"
                   for e in record["errors"])
        failures = [e for e in failed_events(events, step) if e["target"] == name]
        assert failures, f"{name}: no step.failed for {step}"
        assert {e["data"]["ended"] for e in failures} == {ENDED[kind]}
        assert any(e["event"] == "rollback.verified" and e.get("target") == name for e in events)
        assert not any(e["event"] == "step.started" and e.get("target") == name and e.get("stage") == "postcheck"
                       for e in events)


@pytest.mark.parametrize("kind", ["fail", "hang", "crash", "oom"])
def test_business_plugin_is_skipped(drhost: Any, kind: str, fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """A failing business plugin is skipped for the rest of the run; the upgrade completes at 2.0.0."""
    plugin, step = PLUGINS["business"]
    summary, state, events = run_with_fault(drhost, "business", kind, 0)
    assert summary["status"] == "succeeded"
    assert_upgraded(roots_of(state), fresh_seed_jobs, len(targets_for(kind)))
    for name in targets_for(kind):
        record = state["targets"][name]
        assert record["status"] == "succeeded" and record["version"] == "2.0.0"
        assert plugin in record["skipped_plugins"], record["skipped_plugins"]
        assert step in record["skipped_plugins"][plugin]
        assert record["steps"][f"upgrade/{plugin}/{step}"]["status"] == "failed"
        # Its later step is skipped, not run.
        assert record["steps"][f"postcheck/{plugin}/verify_job_catalog"]["status"] == "skipped"
        assert any(e["event"] == "plugin.skipped" and e.get("target") == name and e.get("plugin") == plugin
                   for e in events)
        failures = [e for e in failed_events(events, step) if e["target"] == name]
        assert failures and {e["data"]["ended"] for e in failures} == {ENDED[kind]}
        assert not any(e["event"] == "step.started" and e.get("target") == name
                       and e.get("step") == "verify_job_catalog" for e in events)


@pytest.mark.parametrize("kind", ["fail", "hang", "crash", "oom"])
def test_third_party_error_is_recorded(drhost: Any, kind: str, fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """A failing third_party plugin has its error recorded and the upgrade completes at 2.0.0."""
    plugin, step = PLUGINS["third_party"]
    summary, state, events = run_with_fault(drhost, "third_party", kind, 0)
    assert summary["status"] == "succeeded"
    assert_upgraded(roots_of(state), fresh_seed_jobs, len(targets_for(kind)))
    for name in targets_for(kind):
        record = state["targets"][name]
        assert record["status"] == "succeeded" and record["version"] == "2.0.0"
        assert record["skipped_plugins"] == {}
        recorded = [e for e in record["errors"] if e["plugin"] == plugin and e.get("step") == step]
        assert recorded and recorded[0]["action"] == "recorded"
        assert any(e["event"] == "plugin.error_recorded" and e.get("target") == name and e.get("plugin") == plugin
                   for e in events)
        failures = [e for e in failed_events(events, step) if e["target"] == name]
        assert failures and {e["data"]["ended"] for e in failures} == {ENDED[kind]}
        # Not skipped: the plugin's later step still runs.
        assert record["steps"][f"postcheck/{plugin}/probe_health_endpoint"]["status"] == "done"


def test_slow_steps_succeed(drhost: Any, fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """A slow step in a plugin of every class only takes longer: the run succeeds with no failure."""
    args = list(BASE)
    for plugin, step in PLUGINS.values():
        args += ["--set", f"plugin.{plugin}.fault={step}:slow", "--set", f"plugin.{plugin}.fault_delay_s=0.5"]
    proc = drhost("upgrade", "--demo", "--json", "--keep", *args)
    summary = run_json(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["status"] == "succeeded"
    run_dir = Path(summary["run_dir"])
    state = read_state(run_dir)
    assert_upgraded(roots_of(state), fresh_seed_jobs)
    events = read_events(run_dir)
    assert not [e for e in events if e["event"] in ("step.failed", "plugin.skipped", "plugin.error_recorded")]
    for name in TARGETS:
        assert state["targets"][name]["errors"] == []
        for _plugin, step in PLUGINS.values():
            done = [e for e in events if e["event"] == "step.completed" and e.get("target") == name
                    and e.get("step") == step]
            assert len(done) == 1 and done[0]["data"]["duration_s"] >= 0.5, done


def test_retryable_step_failing_once_is_retried(drhost: Any, fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """A retryable step failing once is retried: attempt 1 fails, attempt 2 completes, the run succeeds."""
    proc = drhost("upgrade", "--demo", "--json", "--keep", *BASE,
                  "--set", "plugin.dr-core.fault=update_config_files:fail:1")
    summary = run_json(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["status"] == "succeeded"
    run_dir = Path(summary["run_dir"])
    state = read_state(run_dir)
    assert_upgraded(roots_of(state), fresh_seed_jobs)
    events = read_events(run_dir)
    for name in TARGETS:
        mine = [e for e in events if e.get("target") == name and e.get("step") == "update_config_files"]
        kinds = [(e["event"], e["data"].get("attempt")) for e in mine if e["event"].startswith("step.")]
        assert kinds == [("step.started", 1), ("step.failed", 1), ("step.started", 2), ("step.completed", 2)], kinds
        failed = mine[[e["event"] for e in mine].index("step.failed")]
        assert failed["data"]["ended"] == "failed"
        assert failed["data"]["retrying_in_s"] == 0
        entry = state["targets"][name]["steps"]["upgrade/dr-core/update_config_files"]
        assert entry["status"] == "done" and entry["attempts"] == 2
        assert state["targets"][name]["stage_attempts"]["upgrade"] == 0
