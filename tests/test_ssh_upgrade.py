"""The whole upgrade over SSH: three real sshd hosts on loopback, the demo product behind each."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import TargetProbe, run_json, whole_version
from drhost.demo.bastion import bastion_available
from drhost.demo.sshd import login_keys_under, remove_login_user
from sshd_hosts import LoginUser, sshd_available
from state_rows import read_state

pytestmark = [
    pytest.mark.sshd,
    pytest.mark.slow,
    pytest.mark.skipif(not sshd_available()[0], reason=sshd_available()[1]),
]


def sshd_pids(state_dir: Path) -> list[int]:
    pids = []
    for pid_file in (state_dir / "demo").glob("*/*/sshd/pid"):
        pid = int(pid_file.read_text().split()[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        pids.append(pid)
    return pids


def test_demo_upgrades_three_hosts_over_ssh(drhost: Callable[..., subprocess.CompletedProcess[str]],
                                            state_dir: Path) -> None:
    """--demo --ssh upgrades three sshd-reached targets to 2.0.0, every step through the SSH transport."""
    proc = drhost("upgrade", "--demo", "--ssh", "--json", "--keep")
    summary = run_json(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {t["status"] for t in summary["targets"].values()} == {"succeeded"}
    assert {t["version"] for t in summary["targets"].values()} == {"2.0.0"}
    state = read_state(Path(summary["run_dir"]))
    assert {t["transport"] for t in state["config"]["targets"].values()} == {"ssh"}
    for target in state["config"]["targets"].values():
        health = TargetProbe(Path(target["root"])).health()
        assert health is not None and health["status"] == "ok" and health["version"] == "2.0.0"
    assert len(sshd_pids(state_dir)) == 3


def test_ssh_demo_leaves_no_server_running(drhost: Callable[..., subprocess.CompletedProcess[str]],
                                           state_dir: Path) -> None:
    """Without --keep the SSH demo stops its sshd servers and product daemons."""
    proc = drhost("upgrade", "--demo", "--ssh", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sshd_pids(state_dir) == []


def test_demo_over_ssh_logs_in_as_a_user_and_becomes_root_with_sudo(
        drhost: Callable[..., subprocess.CompletedProcess[str]], state_dir: Path) -> None:
    """--demo --ssh --login-user: hosts that refuse root login are upgraded by a user that becomes root with
    sudo: the targets end at 2.0.0 with root-owned releases, and nothing is left staged or running."""
    user = f"drt-{secrets.token_hex(4)}"
    try:
        proc = drhost("upgrade", "--demo", "--ssh", "--demo-targets", "2", "--login-user", user, "--json")
        staged = list(Path(f"/home/{user}/.drhost-staging").glob("*"))
    finally:
        remove_login_user(user)  # the demo made it (and keeps it for the next demo); this test removes it
    assert f"demo: created the login user {user} (key login only, passwordless sudo: " \
           f"/etc/sudoers.d/drhost-demo-{user})" in proc.stderr
    summary = run_json(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {(t["status"], t["version"]) for t in summary["targets"].values()} == {("succeeded", "2.0.0")}
    state = read_state(Path(summary["run_dir"]))
    targets = state["config"]["targets"].values()
    assert {(t["user"], t["become"], t["become_user"]) for t in targets} == {(user, "sudo", "root")}
    for target in targets:
        release = Path(target["root"]) / "releases" / "2.0.0"
        assert {path.stat().st_uid for path in release.rglob("*")} == {0}
        assert (Path(target["root"]) / "current").resolve() == release
    assert staged == []  # each upload's staged copy and its run's staging directory are gone
    assert not Path(f"/home/{user}").exists() and subprocess.run(["id", user], capture_output=True).returncode == 1
    assert sshd_pids(state_dir) == []
    assert len(list(state_dir.glob("demo/*/*/sshd"))) == 2
    assert login_keys_under(state_dir) == []  # the stopped hosts took their login keys with them


@pytest.mark.skipif(not bastion_available()[0], reason=bastion_available()[1])
def test_demo_behind_a_bastion_upgrades_targets_only_the_jump_host_reaches(
        drhost: Callable[..., subprocess.CompletedProcess[str]], state_dir: Path, login_user: LoginUser,
        fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """--demo --ssh --bastion --login-user: every target in its own network namespace, reached through the
    bastion as a user that becomes root; each ends whole at 2.0.0 (its daemon asked in its own namespace)."""
    proc = drhost("upgrade", "--demo", "--ssh", "--bastion", "--demo-targets", "2", "--login-user",
                  login_user.name, "--json", "--keep")
    summary = run_json(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {(t["status"], t["version"]) for t in summary["targets"].values()} == {("succeeded", "2.0.0")}
    state = read_state(Path(summary["run_dir"]))
    targets = list(state["config"]["targets"].values())
    assert len(login_keys_under(state_dir)) == 3  # kept: the bastion's and both targets' (the teardown's to remove)
    (jump,) = {t["proxy_jump"] for t in targets}
    assert jump.startswith(f"{login_user.name}@169.254.") and jump.endswith(":2222")
    assert all(t["host"].startswith("169.254.") and t["host"] not in jump for t in targets)
    for target in targets:
        probe = TargetProbe(Path(target["root"]))
        assert probe.daemon_namespace_pid() is not None  # the daemon answers in the target's namespace only
        assert whole_version(Path(target["root"]), fresh_seed_jobs) == "2.0.0"
