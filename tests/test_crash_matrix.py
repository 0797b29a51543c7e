"""The crash matrix: the controller SIGKILLed at many points of an upgrade and of a rollback, then resumed.

Whatever the point, the target ends whole — fully 2.0.0 (daemon healthy at 2.0.0, schema 2, every job)
or fully 1.0.0 after rollback (the old daemon healthy, schema 1, every job) — read from the target
itself, never from drhost's records; and the journal shows no non-retryable step run twice without a
cleanup between the two runs. The kill points are failpoints (drhost/failpoints.py), each one first seen
reached in a clean run, so a renamed point cannot silently turn a case into a no-op.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import demo_roots, pids_under, run_json, whole_version
from drhost.demo.bastion import bastion_available
from sshd_hosts import LoginUser
from xdist_scopes import computed_once

pytestmark = [pytest.mark.podman, pytest.mark.slow, pytest.mark.integration]

Drhost = Callable[..., subprocess.CompletedProcess[str]]
BASE = ("--demo", "--demo-targets", "1", "--keep", "--json", "--set", "run.kill_grace_s=0.5")
NON_RETRYABLE = ("upgrade/dr-core/install_program_files", "upgrade/dr-database/upgrade_db_schema",
                 "upgrade/dr-core/register_services", "upgrade/dr-core/init_core_config",
                 "upgrade/dr-core/update_licence")
ALL_STEPS = (
    "precheck/dr-core/check_installed_version", "precheck/dr-core/check_disk_space",
    "precheck/dr-core/check_service_healthy", "precheck/dr-database/check_database",
    "precheck/dr-monitoring/check_monitoring_agent", "backup/dr-core/backup_program_files",
    "backup/dr-database/backup_database", "backup/dr-catalog/export_job_catalog",
    "transfer/dr-core/upload_package", "transfer/dr-core/unpack_package", "upgrade/dr-core/stop_services",
    "upgrade/dr-database/test_db_connection", *NON_RETRYABLE, "upgrade/dr-core/update_config_files",
    "upgrade/dr-core/init_log_files", "upgrade/dr-catalog/migrate_job_templates",
    "upgrade/dr-core/set_permissions", "upgrade/dr-monitoring/update_monitoring_config",
    "upgrade/dr-core/start_services", "postcheck/dr-core/check_new_version_healthy",
    "postcheck/dr-database/verify_data", "postcheck/dr-catalog/verify_job_catalog",
    "postcheck/dr-monitoring/probe_health_endpoint",
)

#: Kill points of a successful upgrade; after resume the target must be whole at 2.0.0.
UPGRADE_POINTS = [
    "run.created",
    *(f"step.started:{key}" for key in ALL_STEPS),
    *(f"step.returned:{key}" for key in (*NON_RETRYABLE, "transfer/dr-core/upload_package",
                                         "transfer/dr-core/unpack_package", "upgrade/dr-core/start_services",
                                         "upgrade/dr-catalog/migrate_job_templates")),
    # In the middle of a non-retryable step: the kill lands while the step's code runs.
    "step.mid:upgrade/dr-core/install_program_files+0.05",
    "step.mid:upgrade/dr-database/upgrade_db_schema+0.15",
    "step.mid:upgrade/dr-core/register_services+0.05",
    *(f"stage.verified:{stage}" for stage in ("precheck", "backup", "transfer", "upgrade", "postcheck")),
    # In the middle of checkpoint writes: after the temp file, and between the two generations.
    "state.tmp_written@3", "state.tmp_written@60", "state.tmp_written@120",
    "state.rotated@30", "state.rotated@100",
    "target.finishing",
]

#: A postcheck failure of the database class rolls the target back; kill points of that rollback.
ROLLBACK_FAULT = ("--on-failure", "rollback", "--set", "plugin.dr-database.fault=verify_data:fail")
ROLLBACK_POINTS = [
    "rollback.before:upgrade/dr-database/upgrade_db_schema",
    "rollback.before:upgrade/dr-core/install_program_files",
    "rollback.before:upgrade/dr-core/register_services",
    "rollback.before:upgrade/dr-catalog/migrate_job_templates",
    "rollback.returned:upgrade/dr-database/upgrade_db_schema",
    "rollback.returned:upgrade/dr-core/update_licence",
    "rollback.plugin_before:upgrade/dr-core",
    "rollback.plugin_returned:upgrade/dr-database",
    "rollback.stage_returned:upgrade",
    "rollback.stage_returned:transfer",
    "rollback.verifying:upgrade",
    "rollback.verifying:precheck",
    "rollback.concluding",
]

#: A non-retryable step failing once, the operator says retry: cleanup, then the stage restarts.
CLEANUP_FAULT = ("--on-failure", "retry", "--set", "plugin.dr-database.fault=upgrade_db_schema:fail:1")
CLEANUP_POINTS = [
    "cleanup.before:upgrade/dr-database/upgrade_db_schema",
    "cleanup.returned:upgrade/dr-core/install_program_files",
]


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def non_retryable_reruns(events: list[dict[str, Any]]) -> list[str]:
    """Non-retryable steps started a second time with no cleanup or rollback of their stage in between."""
    ran: set[str] = set()
    problems = []
    for event in events:
        stage = event.get("stage")
        if event["event"] == "step.started":
            key = f"{stage}/{event['plugin']}/{event['step']}"
            if key in NON_RETRYABLE:
                if key in ran:
                    problems.append(f"{key} started again without a cleanup (at {event['ts']})")
                ran.add(key)
        elif event["event"] in ("stage.cleanup_finished", "rollback.stage"):
            ran = {key for key in ran if not key.startswith(f"{stage}/")}
    return problems


def the_run(state_dir: Path) -> Path:
    (run_dir,) = (state_dir / "runs").iterdir()
    return run_dir


@pytest.fixture(scope="module")
def reached(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """The failpoints a clean upgrade, a rolled-back one and a cleaned-up one really reach (found once for
    every xdist worker that runs a part of the matrix)."""
    found = computed_once(tmp_path_factory, "crash-matrix-reached", lambda: _reach(tmp_path_factory))
    return {mode: set(points) for mode, points in found.items()}


def _reach(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for mode, extra in (("upgrade", ()), ("rollback", ROLLBACK_FAULT), ("cleanup", CLEANUP_FAULT)):
        base = tmp_path_factory.mktemp(f"reach-{mode}")
        log = base / "failpoints.log"
        env = {**os.environ, "DRHOST_STATE_DIR": str(base / "state"), "DRHOST_INSTANT_RETRIES": "1",
               "DRHOST_FAILPOINT_LOG": str(log)}
        try:
            proc = subprocess.run([sys.executable, "-m", "drhost", "upgrade", *BASE, *extra], capture_output=True,
                                  text=True, env=env, timeout=240, stdin=subprocess.DEVNULL)
            assert proc.returncode in (0, 3), proc.stderr[-2000:]
        finally:
            for pid in pids_under(base):  # the demo's daemons (--keep)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        names = log.read_text().splitlines()
        found[mode] = sorted(set(names) | {f"{name}@{n}" for name in set(names)
                                           for n in range(1, names.count(name) + 1)})
    return found


#: The matrix is about the run's state and the target, not about how the third-party plugin is isolated: outside
#: the kill points in dr-monitoring's own steps (where a killed controller leaves a container behind, which the
#: resume must remove) that plugin runs as a process, which saves a container start per controller — some 0.7 s
#: of CPU each, 100 s over the matrix. Containers a killed controller left are also test_resume.py's.
CONTAINER_POINTS = "dr-monitoring"


def crash_and_resume(drhost: Drhost, state_dir: Path, point: str, extra: tuple[str, ...]) -> tuple[Path, str]:
    if CONTAINER_POINTS not in point and "--ssh" not in extra:
        extra = (*extra, "--set", "class.third_party.isolation=process")
    killed = drhost("upgrade", *BASE, *extra, env={"DRHOST_FAILPOINT": point})
    assert killed.returncode == -9, f"{point}: the controller was not killed (exit {killed.returncode}): " \
                                    f"{killed.stderr[-1500:]}"
    run_dir = the_run(state_dir)
    resumed = drhost("resume", run_dir.name, "--json")
    summary = run_json(resumed)
    return run_dir, str(summary["status"])


def check_whole(state_dir: Path, run_dir: Path, seed: list[tuple[Any, ...]], expected: str) -> None:
    (root,) = demo_roots(state_dir)
    assert whole_version(root, seed) == expected
    assert non_retryable_reruns(read_events(run_dir)) == []


def _spec_name(point: str) -> str:
    return point.split("+", 1)[0]


#: (point, what the run does, its drill's name, the run's status after resume, the version the target is at).
CASES = [
    *((point, (), "upgrade", "succeeded", "2.0.0") for point in UPGRADE_POINTS),
    *((point, ROLLBACK_FAULT, "rollback", "rolled_back", "1.0.0") for point in ROLLBACK_POINTS),
    *((point, CLEANUP_FAULT, "cleanup", "succeeded", "2.0.0") for point in CLEANUP_POINTS),
]


@pytest.mark.parametrize(("point", "extra", "drill", "status", "version"), CASES,
                         ids=[f"{case[2]}:{case[0]}" for case in CASES])
def test_controller_killed_anywhere_resumes_to_a_whole_target(
        drhost: Drhost, state_dir: Path, point: str, extra: tuple[str, ...], drill: str, status: str, version: str,
        reached: dict[str, set[str]], fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """SIGKILL of the controller at this point of an upgrade, a rollback or a cleanup, then resume: the run
    ends as that drill does and the target is whole at the version it should be, read from the target."""
    assert _spec_name(point) in reached[drill], f"{point} is never reached by the {drill} drill"
    run_dir, ended = crash_and_resume(drhost, state_dir, point, extra)
    assert ended == status
    check_whole(state_dir, run_dir, fresh_seed_jobs, version)


def test_matrix_has_at_least_fifty_distinct_points() -> None:
    """The matrix kills at 50 or more distinct points (the issue's floor)."""
    points = {_spec_name(p) for p in (*UPGRADE_POINTS, *ROLLBACK_POINTS, *CLEANUP_POINTS)}
    assert len(points) >= 50, len(points)


#: The subset also run on a fleet of the other shape (a login user that becomes root with sudo, each target
#: behind a bastion): a kill in the middle of a non-retryable step, right after the upload (staged as the login
#: user, moved as root), and before the first compensation of a rollback.
REMOTE_CASES = [
    ("step.mid:upgrade/dr-core/install_program_files+0.05", (), "upgrade", "succeeded", "2.0.0"),
    ("step.returned:transfer/dr-core/upload_package", (), "upgrade", "succeeded", "2.0.0"),
    ("rollback.before:upgrade/dr-database/upgrade_db_schema", ROLLBACK_FAULT, "rollback", "rolled_back", "1.0.0"),
]


@pytest.mark.sshd
@pytest.mark.skipif(not bastion_available()[0], reason=bastion_available()[1])
@pytest.mark.parametrize(("point", "extra", "drill", "status", "version"), REMOTE_CASES,
                         ids=[f"become-bastion-{case[2]}:{case[0]}" for case in REMOTE_CASES])
def test_controller_killed_on_a_become_and_bastion_fleet_resumes_to_a_whole_target(
        drhost: Drhost, state_dir: Path, point: str, extra: tuple[str, ...], drill: str, status: str, version: str,
        reached: dict[str, set[str]], fresh_seed_jobs: list[tuple[Any, ...]], login_user: LoginUser) -> None:
    """The same kill and resume with the target behind a bastion, as a login user that becomes root: the
    resuming controller reconnects through the jump host and the target ends whole, read from the target."""
    assert _spec_name(point) in reached[drill], f"{point} is never reached by the {drill} drill"
    run_dir, ended = crash_and_resume(drhost, state_dir, point,
                                      (*extra, "--ssh", "--bastion", "--login-user", login_user.name))
    assert ended == status
    check_whole(state_dir, run_dir, fresh_seed_jobs, version)
    (target,) = json.loads((run_dir / "state.json").read_text())["body"]["config"]["targets"].values()
    assert (target["user"], target["become"]) == (login_user.name, "sudo") and target["proxy_jump"]
