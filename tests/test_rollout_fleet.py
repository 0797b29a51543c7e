"""Rolling out over real sshd hosts: batches, budgets that stop the rollout, unreachable hosts, approval, groups."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import whole_version
from drhost.cli._inputs import package_info, prepare
from drhost.cli._main import build_parser
from drhost.cli._runs import make_approve
from drhost.demo.environment import create_demo, start_ssh_hosts, stop_demo
from drhost.demo.sshd import SshHost
from drhost.orchestrator import RunSummary, create_run, drive
from drhost.report import build_report
from drhost.state import RunState, state_root
from drhost.status import rollout_summary
from sshd_hosts import sshd_available
from tcp_proxy import TcpProxy

pytestmark = [
    pytest.mark.sshd,
    pytest.mark.slow,
    pytest.mark.integration, pytest.mark.skipif(not sshd_available()[0], reason=sshd_available()[1]),
]


@dataclass
class Fleet:
    state: RunState
    roots: dict[str, Path]
    hosts: dict[str, SshHost]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.state.run_dir / "events.jsonl").read_text().splitlines()]

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == name]

    def touched(self, target: str) -> bool:
        """Whether drhost did anything on the target: an event about it, or its work directory."""
        return any(e.get("target") == target for e in self.events()) or (self.roots[target] / ".drhost").exists()


@contextlib.contextmanager
def fleet(count: int, *settings: str, groups: dict[str, str] | None = None, group_order: str = "",
          blackhole: str | None = None) -> Iterator[Fleet]:
    """``count`` demo targets behind their own sshd, a run created with ``settings``; ``blackhole`` names a target
    reached through a proxy that drops everything (a host that vanished from the network)."""
    args = build_parser().parse_args(["upgrade", "--demo", "--ssh", "--demo-targets", str(count), "--keep",
                                      "--set", "run.kill_grace_s=1",
                                      *(item for s in settings for item in ("--set", s))])
    prepared = prepare(args, need_package=True)
    assert prepared.demo_roots is not None and prepared.demo_ssh_hosts is not None and prepared.package
    create_demo(state_root(), prepared.demo_roots, reserved_ports=[h.port for h in prepared.demo_ssh_hosts.values()])
    start_ssh_hosts(prepared.demo_ssh_hosts)
    proxy: TcpProxy | None = None
    try:
        config = prepared.config.data
        for name, group in (groups or {}).items():
            config["targets"][name]["group"] = group
        config["rollout"]["groups"] = group_order
        if blackhole is not None:
            host = prepared.demo_ssh_hosts[blackhole]
            proxy = TcpProxy("127.0.0.1", host.port).start()
            proxy.blackhole(True)
            config["targets"][blackhole].update(port=proxy.port, connect_timeout_s=2)
        state = create_run(config=config, config_files=[], plan=prepared.plan, package=package_info(prepared.package),
                           extra={"demo": {"roots": [str(r) for r in prepared.demo_roots.values()], "keep": True}})
        yield Fleet(state, dict(prepared.demo_roots), dict(prepared.demo_ssh_hosts))
    finally:
        if proxy is not None:
            proxy.stop()
        for host in prepared.demo_ssh_hosts.values():
            host.stop()
        stop_demo(list(prepared.demo_roots.values()))


def _drive(run: Fleet, **kwargs: Any) -> RunSummary:
    return drive(run.state, mode="upgrade", decide=lambda target, stage, message: "rollback", **kwargs)


def test_failure_budget_stops_the_rollout_and_later_batches_stay_untouched(
        state_dir: Path, fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """max_failed = 0: the failure in batch 2 stops the rollout; batch 3 is never touched; the run says why."""
    # Three one-target batches: the fewest upgrades that still show a batch before, at and after the failure.
    with fleet(3, "rollout.serial=1, 1", "rollout.max_failed=0",
               "plugin.dr-database.fault=upgrade_db_schema:fail@dr-demo-2") as run:
        assert [b["targets"] for b in run.state.get("rollout")["batches"]] == [
            ["dr-demo-1"], ["dr-demo-2"], ["dr-demo-3"]]
        summary = _drive(run)
        assert summary.status == "aborted" and summary.exit_code == 5
        versions = {name: whole_version(root, fresh_seed_jobs) for name, root in run.roots.items()}
        assert versions == {"dr-demo-1": "2.0.0", "dr-demo-2": "1.0.0", "dr-demo-3": "1.0.0"}
        assert summary.targets["dr-demo-2"]["status"] == "rolled_back"
        assert summary.targets["dr-demo-3"]["status"] == "pending"
        assert not run.touched("dr-demo-3")
        (stopped,) = run.named("rollout.stopped")
        assert stopped["data"]["batch"] == 1
        assert stopped["data"]["not_started"] == ["dr-demo-3"]
        assert stopped["data"]["reason"] == ("1 of 1 targets failed in batch 2, more than rollout.max_failed = 0 "
                                             "allows (0)")
        assert [e["data"]["batch"] for e in run.named("rollout.batch_started")] == [0, 1]
        lines = rollout_summary(run.state.snapshot())["lines"]
        assert any(line.startswith("rollout stopped in batch 2: 1 of 1 targets failed") and
                   "not started: dr-demo-3" in line for line in lines), lines
        embedded = re.search(r'<script type="application/json" id="run-data">(.*?)</script>',
                             build_report(run.state.run_dir), re.S)
        assert embedded is not None
        reported = json.loads(embedded.group(1))["rollout"]["stopped"]
        assert (reported["reason"], reported["not_started"]) == (stopped["data"]["reason"], ["dr-demo-3"])


def test_same_failure_within_budget_goes_on_through_every_batch_with_pauses(
        state_dir: Path, fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """max_failed = 1 lets the same failure pass: every batch runs, each after the configured pause."""
    with fleet(3, "rollout.serial=1", "rollout.max_failed=1", "rollout.pause_s=1",
               "plugin.dr-database.fault=upgrade_db_schema:fail@dr-demo-2") as run:
        summary = _drive(run)
        statuses = {name: t["status"] for name, t in summary.targets.items()}
        assert statuses == {"dr-demo-1": "succeeded", "dr-demo-2": "rolled_back", "dr-demo-3": "succeeded"}
        assert summary.status == "rolled_back" and not run.named("rollout.stopped")
        assert whole_version(run.roots["dr-demo-3"], fresh_seed_jobs) == "2.0.0"
        events = run.events()
        pauses = [i for i, e in enumerate(events) if e["event"] == "rollout.paused"]
        assert len(pauses) == 2
        for index in pauses:
            finished = max(e["ts"] for e in events[:index] if e["event"] == "rollout.batch_finished")
            started = min(e["ts"] for e in events[index:] if e["event"] == "rollout.batch_started")
            assert started - finished >= 1.0


def test_unreachable_host_has_its_own_budget(state_dir: Path, fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """A black-holed host counts against max_unreachable, not max_failed: with max_failed = 0 and one unreachable
    allowed, the rollout goes on; the host stays untouched and is reported unreachable."""
    with fleet(3, "rollout.serial=2", "rollout.max_failed=0", "rollout.max_unreachable=1",
               blackhole="dr-demo-2") as run:
        summary = _drive(run)
        statuses = {name: t["status"] for name, t in summary.targets.items()}
        assert statuses == {"dr-demo-1": "succeeded", "dr-demo-2": "unreachable", "dr-demo-3": "succeeded"}
        assert not run.named("rollout.stopped")
        (finished,) = [e for e in run.named("rollout.batch_finished") if e["data"]["batch"] == 0]
        assert finished["data"]["counts"] == {"succeeded": 1, "failed": 0, "unreachable": 1, "not_started": 0}
        assert whole_version(run.roots["dr-demo-2"], fresh_seed_jobs) == "1.0.0"


def test_unreachable_beyond_its_budget_stops_the_rollout(state_dir: Path) -> None:
    """max_unreachable = 0: the black-holed host stops the rollout after its batch; the failure budget is unused."""
    with fleet(3, "rollout.serial=2", "rollout.max_unreachable=0", blackhole="dr-demo-1") as run:
        summary = _drive(run)
        assert summary.status == "aborted"
        (stopped,) = run.named("rollout.stopped")
        assert stopped["data"]["reason"].startswith("1 of 2 targets unreachable in batch 1")
        assert not run.touched("dr-demo-3")


def test_groups_in_order_and_approval_between_batches(state_dir: Path,
                                                      fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """The standby group goes first; the primary batch waits for approval (run resumable, untouched), and a resume
    approves it."""
    with fleet(3, "rollout.serial=100%", "rollout.approve=true",
               groups={"dr-demo-3": "standby", "dr-demo-1": "primary", "dr-demo-2": "primary"},
               group_order="standby, primary") as run:
        assert [(b["group"], b["targets"]) for b in run.state.get("rollout")["batches"]] == [
            ("standby", ["dr-demo-3"]), ("primary", ["dr-demo-1", "dr-demo-2"])]
        first = _drive(run, approve=make_approve(False))
        assert first.status == "interrupted" and first.exit_code == 6
        assert first.targets["dr-demo-3"]["status"] == "succeeded"
        assert not run.touched("dr-demo-1") and not run.touched("dr-demo-2")
        (waiting,) = run.named("rollout.waiting_approval")
        assert waiting["data"]["targets"] == ["dr-demo-1", "dr-demo-2"]
        assert rollout_summary(run.state.snapshot())["waiting"] == 1
        second = _drive(run, approve=make_approve(False, granted=1))
        assert second.status == "succeeded"
        assert {name: whole_version(root, fresh_seed_jobs) for name, root in run.roots.items()} == {
            "dr-demo-1": "2.0.0", "dr-demo-2": "2.0.0", "dr-demo-3": "2.0.0"}
        events = run.events()
        standby_done = max(e["ts"] for e in events if e["event"] == "target.succeeded" and e["target"] == "dr-demo-3")
        primary_start = min(e["ts"] for e in events if e["event"] == "target.started"
                            and e["target"] in ("dr-demo-1", "dr-demo-2"))
        assert standby_done < primary_start
