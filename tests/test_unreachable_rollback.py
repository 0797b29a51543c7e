"""A target that is unreachable when its rollback is needed: queued, retried, rolled back once it is back."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import whole_version
from drhost.cli._inputs import package_info, prepare
from drhost.cli._main import build_parser
from drhost.demo.environment import create_demo, start_ssh_hosts, stop_demo
from drhost.demo.sshd import SshHost
from drhost.orchestrator import create_run, drive
from drhost.state import state_root
from sshd_hosts import sshd_available

pytestmark = [
    pytest.mark.sshd,
    pytest.mark.slow,
    pytest.mark.integration, pytest.mark.skipif(not sshd_available()[0], reason=sshd_available()[1]),
]


def ssh_demo_run(*settings: str) -> tuple[Any, SshHost, Path]:
    args = build_parser().parse_args(["upgrade", "--demo", "--ssh", "--demo-targets", "1", "--keep",
                                      *(item for s in settings for item in ("--set", s))])
    prepared = prepare(args, need_package=True)
    assert prepared.demo_roots is not None and prepared.demo_ssh_hosts is not None and prepared.package
    create_demo(state_root(), prepared.demo_roots, reserved_ports=[h.port for h in prepared.demo_ssh_hosts.values()])
    start_ssh_hosts(prepared.demo_ssh_hosts)
    state = create_run(config=prepared.config.data, config_files=[], plan=prepared.plan,
                       package=package_info(prepared.package),
                       extra={"demo": {"roots": [str(r) for r in prepared.demo_roots.values()], "keep": True}})
    (host,) = prepared.demo_ssh_hosts.values()
    (root,) = prepared.demo_roots.values()
    return state, host, root


def events_of(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_target_gone_when_rollback_is_needed_is_rolled_back_once_it_is_back(
        state_dir: Path, fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """The target's sshd dies the moment rollback is decided and comes back 6 s later: the rollback waits,
    then restores the target, verified, whole at 1.0.0."""
    state, host, root = ssh_demo_run("plugin.dr-database.fault=verify_data:fail", "run.unreachable_wait_s=120")
    restarted = threading.Event()

    def decide(target: str, stage: Any, message: str) -> str:
        host.stop()

        def back() -> None:
            host.start()
            restarted.set()

        threading.Timer(6.0, back).start()
        return "rollback"

    try:
        summary = drive(state, mode="upgrade", decide=decide)
        assert restarted.is_set()
        assert summary.status == "rolled_back", summary
        events = events_of(state.run_dir)
        names = [e["event"] for e in events]
        assert "target.unreachable" in names and "target.reachable" in names
        assert names.index("target.unreachable") < names.index("target.reachable") < names.index("rollback.verified")
        assert whole_version(root, fresh_seed_jobs) == "1.0.0"
    finally:
        restarted.wait(10)
        host.stop()
        stop_demo([root])


def test_target_still_gone_stays_queued_and_drhost_rollback_finishes_it_later(
        state_dir: Path, fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """Still unreachable when the wait runs out: the run ends interrupted with the target queued; once the
    target is back, a rollback of the run restores it."""
    state, host, root = ssh_demo_run("plugin.dr-database.fault=verify_data:fail", "run.unreachable_wait_s=3")

    def decide(target: str, stage: Any, message: str) -> str:
        host.stop()
        return "rollback"

    try:
        summary = drive(state, mode="upgrade", decide=decide)
        assert summary.status == "interrupted" and summary.exit_code == 6
        record = state.get("targets")["dr-demo-1"]
        assert record["status"] == "unreachable" and record["phase"] == "rollback"
        assert "target.rollback_queued" in [e["event"] for e in events_of(state.run_dir)]
        host.start()
        again = drive(state, mode="rollback", decide=lambda *a: "rollback")
        assert again.status == "rolled_back"
        assert whole_version(root, fresh_seed_jobs) == "1.0.0"
    finally:
        host.stop()
        stop_demo([root])
