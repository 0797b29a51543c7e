"""The crash matrix: the controller SIGKILLed at many points of an upgrade and of a rollback, then resumed.

Whatever the point, the target ends whole — fully 2.0.0 (daemon healthy at 2.0.0, schema 2, every job)
or fully 1.0.0 after rollback (the old daemon healthy, schema 1, every job) — read from the target
itself, never from drhost's records; and the journal shows no non-retryable step run twice without a
cleanup between the two runs. The kill points are failpoints (drhost/failpoints.py), each one first seen
reached in a clean run, so a renamed point cannot silently turn a case into a no-op.

Most cases kill twice: at a point of the run, then at a later point of the resumed run, then resume to the
end. A case costs one upgrade and a controller start per kill, so two kills a case halve the matrix's work
(some 90 s of CPU a suite run); and a controller killed while it resumes a killed run is a case of its own
that a single kill never made.
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
from state_rows import read_state
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

#: Kill points of a successful upgrade, in the order a clean run reaches them; after resume the target
#: must be whole at 2.0.0.
UPGRADE_POINTS = [
    "run.created",
    "state.before_commit@2",
    *(f"step.started:precheck/{key}" for key in (
        "dr-core/check_installed_version", "dr-core/check_disk_space", "dr-core/check_service_healthy",
        "dr-database/check_database", "dr-monitoring/check_monitoring_agent")),
    # Around a checkpoint's commit: just before it (the previous record must be read back), just after it.
    "state.committed@22",
    "stage.verified:precheck",
    *(f"step.started:backup/{key}" for key in (
        "dr-core/backup_program_files", "dr-database/backup_database", "dr-catalog/export_job_catalog")),
    "stage.verified:backup",
    "step.started:transfer/dr-core/upload_package", "step.returned:transfer/dr-core/upload_package",
    "step.started:transfer/dr-core/unpack_package", "step.returned:transfer/dr-core/unpack_package",
    "state.before_commit@43",
    "stage.verified:transfer",
    "step.started:upgrade/dr-core/stop_services", "step.started:upgrade/dr-database/test_db_connection",
    # Around and in the middle of the non-retryable steps: a mid kill lands while the step's code runs.
    "step.started:upgrade/dr-core/install_program_files", "step.mid:upgrade/dr-core/install_program_files+0.05",
    "step.returned:upgrade/dr-core/install_program_files",
    "step.started:upgrade/dr-database/upgrade_db_schema", "step.mid:upgrade/dr-database/upgrade_db_schema+0.15",
    "step.returned:upgrade/dr-database/upgrade_db_schema",
    "step.started:upgrade/dr-core/register_services", "step.mid:upgrade/dr-core/register_services+0.05",
    "step.returned:upgrade/dr-core/register_services",
    "step.started:upgrade/dr-core/init_core_config", "step.returned:upgrade/dr-core/init_core_config",
    "step.started:upgrade/dr-core/update_licence", "step.returned:upgrade/dr-core/update_licence",
    "step.started:upgrade/dr-core/update_config_files", "state.committed@61",
    "step.started:upgrade/dr-core/init_log_files",
    "step.started:upgrade/dr-catalog/migrate_job_templates", "step.returned:upgrade/dr-catalog/migrate_job_templates",
    "step.started:upgrade/dr-core/set_permissions", "step.started:upgrade/dr-monitoring/update_monitoring_config",
    "state.before_commit@72",
    "step.started:upgrade/dr-core/start_services", "step.returned:upgrade/dr-core/start_services",
    "stage.verified:upgrade",
    *(f"step.started:postcheck/{key}" for key in (
        "dr-core/check_new_version_healthy", "dr-database/verify_data", "dr-catalog/verify_job_catalog",
        "dr-monitoring/probe_health_endpoint")),
    "stage.verified:postcheck",
    "target.finishing",
]

#: A postcheck failure of the database class rolls the target back; kill points of that rollback.
ROLLBACK_FAULT = ("--on-failure", "rollback", "--set", "plugin.dr-database.fault=verify_data:fail")
ROLLBACK_POINTS = [  # in the order the rollback reaches them
    "rollback.before:upgrade/dr-catalog/migrate_job_templates",
    "rollback.returned:upgrade/dr-core/update_licence",
    "rollback.before:upgrade/dr-core/register_services",
    "rollback.before:upgrade/dr-database/upgrade_db_schema",
    "rollback.returned:upgrade/dr-database/upgrade_db_schema",
    "rollback.before:upgrade/dr-core/install_program_files",
    "rollback.plugin_before:upgrade/dr-core",
    "rollback.plugin_returned:upgrade/dr-database",
    "rollback.verifying:upgrade",
    "rollback.stage_returned:upgrade",
    "rollback.stage_returned:transfer",
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
def reached(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, int]]:
    """The failpoints a clean upgrade, a rolled-back one and a cleaned-up one really reach, each with the
    position of its first hit (found once for every xdist worker that runs a part of the matrix)."""
    found: dict[str, dict[str, int]] = computed_once(tmp_path_factory, "crash-matrix-reached",
                                                     lambda: _reach(tmp_path_factory))
    return found


def _reach(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {}
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
        first: dict[str, int] = {}
        hits: dict[str, int] = {}
        for position, name in enumerate(log.read_text().splitlines()):
            hits[name] = hits.get(name, 0) + 1
            first.setdefault(name, position)
            first[f"{name}@{hits[name]}"] = position
        found[mode] = first
    return found


def chained(points: list[str]) -> list[tuple[str, ...]]:
    """The kill sequences over ``points`` (listed in the order a clean run reaches them): each point, then the
    point half the list later, in the resumed run. A counted point (``NAME@N``) is killed at alone: a resumed
    controller counts its hits from one again, so it cannot be the later kill."""
    alone = [(point,) for point in points if "@" in point]
    ordered = [point for point in points if "@" not in point]
    later = (len(ordered) + 1) // 2
    pairs = [(ordered[i], ordered[i + later]) for i in range(len(ordered) - later)]
    middle = [(ordered[later - 1],)] if len(ordered) % 2 else []
    return [*pairs, *middle, *alone]


#: The matrix is about the run's state and the target, not about how the third-party plugin is isolated: outside
#: the kill points in dr-monitoring's own steps (where a killed controller leaves a container behind, which the
#: resume must remove) that plugin runs as a process, which saves a container start per controller — some 0.7 s
#: of CPU each, 100 s over the matrix. Containers a killed controller left are also test_resume.py's.
CONTAINER_POINTS = "dr-monitoring"


def crash_and_resume(drhost: Drhost, state_dir: Path, kills: tuple[str, ...],
                     extra: tuple[str, ...]) -> tuple[Path, str]:
    """The upgrade killed at the first point, each resume killed at the next, then resumed to its end."""
    if not any(CONTAINER_POINTS in point for point in kills) and "--ssh" not in extra:
        extra = (*extra, "--set", "class.third_party.isolation=process")
    first, *then = kills
    killed = drhost("upgrade", *BASE, *extra, env={"DRHOST_FAILPOINT": first})
    assert killed.returncode == -9, f"{first}: the controller was not killed (exit {killed.returncode}): " \
                                    f"{killed.stderr[-1500:]}"
    run_dir = the_run(state_dir)
    for point in then:
        killed = drhost("resume", run_dir.name, "--json", env={"DRHOST_FAILPOINT": point})
        assert killed.returncode == -9, f"{point}: the resuming controller was not killed " \
                                        f"(exit {killed.returncode}): {killed.stderr[-1500:]}"
    resumed = drhost("resume", run_dir.name, "--json")
    summary = run_json(resumed)
    return run_dir, str(summary["status"])


def check_whole(state_dir: Path, run_dir: Path, seed: list[tuple[Any, ...]], expected: str) -> None:
    (root,) = demo_roots(state_dir)
    assert whole_version(root, seed) == expected
    assert non_retryable_reruns(read_events(run_dir)) == []


def _spec_name(point: str) -> str:
    return point.split("+", 1)[0]


#: (the kills, what the run does, its drill's name, the run's status after resume, the version the target is at).
CASES = [
    *((kills, (), "upgrade", "succeeded", "2.0.0") for kills in chained(UPGRADE_POINTS)),
    *((kills, ROLLBACK_FAULT, "rollback", "rolled_back", "1.0.0") for kills in chained(ROLLBACK_POINTS)),
    *((kills, CLEANUP_FAULT, "cleanup", "succeeded", "2.0.0") for kills in chained(CLEANUP_POINTS)),
]


def assert_reached_in_order(kills: tuple[str, ...], drill: str, reached: dict[str, dict[str, int]]) -> None:
    names = [_spec_name(point) for point in kills]
    missing = [name for name in names if name not in reached[drill]]
    assert not missing, f"{missing} never reached by the {drill} drill"
    positions = [reached[drill][name] for name in names]
    assert positions == sorted(set(positions)), f"{names}: a later kill must come later in the run ({positions})"


@pytest.mark.parametrize(("kills", "extra", "drill", "status", "version"), CASES,
                         ids=[f"{case[2]}:{' then '.join(case[0])}" for case in CASES])
def test_controller_killed_anywhere_resumes_to_a_whole_target(
        drhost: Drhost, state_dir: Path, kills: tuple[str, ...], extra: tuple[str, ...], drill: str, status: str,
        version: str, reached: dict[str, dict[str, int]], fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """SIGKILL of the controller at this point of an upgrade, a rollback or a cleanup (and of the resuming one
    at the later point), then resume: the run ends as that drill does and the target is whole at the version
    it should be, read from the target."""
    assert_reached_in_order(kills, drill, reached)
    run_dir, ended = crash_and_resume(drhost, state_dir, kills, extra)
    assert ended == status
    check_whole(state_dir, run_dir, fresh_seed_jobs, version)


def test_matrix_has_at_least_fifty_distinct_points() -> None:
    """The matrix kills at 50 or more distinct points (the issue's floor)."""
    points = {_spec_name(p) for p in (*UPGRADE_POINTS, *ROLLBACK_POINTS, *CLEANUP_POINTS)}
    assert len(points) >= 50, len(points)
    killed = {_spec_name(point) for case in CASES for point in case[0]}
    assert killed == points, points - killed


def test_chained_kills_cover_every_point_once_and_later_ones_later() -> None:
    """Chaining keeps every point, each once, the later kill after the first in the list, never a counted one."""
    points = [f"p{i}" for i in range(7)] + ["state.committed@5"]
    chains = chained(points)
    assert sorted(point for chain in chains for point in chain) == sorted(points)
    assert all(points.index(chain[0]) < points.index(chain[-1]) for chain in chains if len(chain) == 2)
    assert all("@" not in chain[1] for chain in chains if len(chain) == 2)
    assert len(chains) == 5  # three pairs, the middle point alone, the counted point alone


#: The subset also run on a fleet of the other shape (a login user that becomes root with sudo, each target
#: behind a bastion): a kill in the middle of a non-retryable step, right after the upload (staged as the login
#: user, moved as root), and before the first compensation of a rollback.
REMOTE_CASES = [
    (("step.mid:upgrade/dr-core/install_program_files+0.05",), (), "upgrade", "succeeded", "2.0.0"),
    (("step.returned:transfer/dr-core/upload_package",), (), "upgrade", "succeeded", "2.0.0"),
    (("rollback.before:upgrade/dr-database/upgrade_db_schema",), ROLLBACK_FAULT, "rollback", "rolled_back", "1.0.0"),
]


@pytest.mark.sshd
@pytest.mark.skipif(not bastion_available()[0], reason=bastion_available()[1])
@pytest.mark.parametrize(("kills", "extra", "drill", "status", "version"), REMOTE_CASES,
                         ids=[f"become-bastion-{case[2]}:{case[0][0]}" for case in REMOTE_CASES])
def test_controller_killed_on_a_become_and_bastion_fleet_resumes_to_a_whole_target(
        drhost: Drhost, state_dir: Path, kills: tuple[str, ...], extra: tuple[str, ...], drill: str, status: str,
        version: str, reached: dict[str, dict[str, int]], fresh_seed_jobs: list[tuple[Any, ...]],
        login_user: LoginUser) -> None:
    """The same kill and resume with the target behind a bastion, as a login user that becomes root: the
    resuming controller reconnects through the jump host and the target ends whole, read from the target."""
    assert_reached_in_order(kills, drill, reached)
    run_dir, ended = crash_and_resume(drhost, state_dir, kills,
                                      (*extra, "--ssh", "--bastion", "--login-user", login_user.name))
    assert ended == status
    check_whole(state_dir, run_dir, fresh_seed_jobs, version)
    (target,) = read_state(run_dir)["config"]["targets"].values()
    assert (target["user"], target["become"]) == (login_user.name, "sudo") and target["proxy_jump"]
