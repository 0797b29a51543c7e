"""The four plugins together upgrade a real drproduct 1.0.0 install to 2.0.0, and roll it back."""

from __future__ import annotations

import pytest

from drhost_hookspecs import Stage, VerifyPhase
from plugin_harness import PRE_UPGRADE, SEED_JOBS, Harness

NON_RETRYABLE = ("install_program_files", "upgrade_db_schema", "register_services", "init_core_config",
                 "update_licence")


def _old_state(h: Harness) -> dict[str, object]:
    return {
        "ini": (h.root / "etc" / "drproduct.ini").read_text(),
        "licence": (h.root / "etc" / "license.lic").read_text(),
        "registration": (h.root / "etc" / "services" / "drproductd.json").read_text(),
        "current": (h.root / "current").readlink(),
        "releases": sorted(p.name for p in (h.root / "releases").iterdir()),
        "schema": h.tool_json("drproduct-db", "version")["schema"],
        "jobs": h.tool_json("drproduct-db", "dump")["jobs"],
    }


def test_full_sequence_upgrades_1_to_2(harness: Harness) -> None:
    """All five stages in host order turn a running 1.0.0 into a healthy 2.0.0 with every job kept."""
    jobs_before = harness.tool_json("drproduct-db", "dump")["jobs"]
    harness.run_stages(*Stage.ordered())
    health = harness.tool_json("drproductctl", "health")
    assert (health["status"], health["version"], health["schema"], health["jobs"]) == ("ok", "2.0.0", 2, SEED_JOBS)
    jobs_after = harness.tool_json("drproduct-db", "dump")["jobs"]
    assert [{k: j[k] for k in jobs_before[0]} for j in jobs_after] == jobs_before
    assert "[replication]" in (harness.root / "etc" / "drproduct.ini").read_text()
    assert harness.tool_json("drproduct-license", "show")["series"] == "2.x"
    for stage in Stage.ordered():
        assert harness.verify(stage, VerifyPhase.COMPLETED) == {}, stage


def test_steps_run_in_host_order(harness: Harness) -> None:
    """Upgrade steps of all plugins interleave by order: stop, test db, install, migrate, register ... start."""
    names = [step for _, step in harness.ordered(Stage.UPGRADE)]
    assert names == ["stop_services", "test_db_connection", "install_program_files", "upgrade_db_schema",
                     "register_services", "init_core_config", "update_licence", "update_config_files",
                     "init_log_files", "migrate_job_templates", "set_permissions", "update_monitoring_config",
                     "start_services"]


def test_rollback_after_complete_upgrade_restores_1_0_0(harness: Harness) -> None:
    """Rolling back postcheck..precheck after a full upgrade leaves 1.0.0 running with the old files and rows."""
    harness.run_stages(*PRE_UPGRADE)
    before = _old_state(harness)
    harness.run_stages(Stage.UPGRADE, Stage.POSTCHECK)
    for stage in reversed(Stage.ordered()):
        harness.compensate(stage, "rollback")
    assert _old_state(harness) == before
    assert harness.verify(Stage.UPGRADE, VerifyPhase.ROLLED_BACK) == {}
    assert harness.tool_json("drproductctl", "health")["version"] == "1.0.0"
    assert not (harness.root / "releases" / "2.0.0").exists()
    assert not (harness.root / "staging" / "2.0.0").exists()


@pytest.mark.parametrize("step", NON_RETRYABLE)
def test_rollback_right_after_non_retryable_step(harness: Harness, step: str) -> None:
    """Rollback (run twice) after the upgrade stopped right after a non-retryable step restores the old state."""
    harness.run_stages(*PRE_UPGRADE)
    before = _old_state(harness)
    harness.run_stages(Stage.UPGRADE, until=step)
    harness.compensate(Stage.UPGRADE, "rollback")
    harness.compensate(Stage.UPGRADE, "rollback")
    assert _old_state(harness) == before
    assert harness.verify(Stage.UPGRADE, VerifyPhase.ROLLED_BACK) == {}


@pytest.mark.parametrize("step", NON_RETRYABLE)
def test_cleanup_then_restart_of_upgrade_stage_succeeds(harness: Harness, step: str) -> None:
    """Cleanup after a non-retryable step, run twice, lets the upgrade stage start again from its first step."""
    harness.run_stages(*PRE_UPGRADE)
    before = _old_state(harness)
    harness.run_stages(Stage.UPGRADE, until=step)
    harness.compensate(Stage.UPGRADE, "cleanup")
    for stage, plugin, name in [(s, p, n) for s, p, n in harness.done if s is Stage.UPGRADE]:
        raise AssertionError(f"cleanup left {stage}/{plugin}/{name} recorded")
    harness.compensate(Stage.UPGRADE, "cleanup")
    state = _old_state(harness)
    assert {k: state[k] for k in ("current", "releases", "schema", "jobs", "licence")} == {
        k: before[k] for k in ("current", "releases", "schema", "jobs", "licence")}
    harness.run_stages(Stage.UPGRADE, Stage.POSTCHECK)
    assert harness.tool_json("drproductctl", "health")["version"] == "2.0.0"
