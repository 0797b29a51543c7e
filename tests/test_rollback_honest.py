"""Rollback and resume never claim what they did not do; a changed host key is a refusal, not an outage.

Real sshd targets of the SSH demo, reached through a fault-injecting TCP proxy (tests/tcp_proxy.py); what each
test asserts about the target is read from the target's own files.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import whole_version
from demo_proxy import demo_behind_proxy, network_events_of
from drhost.demo.sshd import SshHost
from drhost.orchestrator import drive
from drhost.orchestrator._rollout import Amount, Batch, Budget
from drhost.state import RunState
from sshd_hosts import sshd_available
from tcp_proxy import TcpProxy

#: Short waits and bounds: each test stays within seconds of its real work.
_SETTINGS = ("run.unreachable_wait_s=3", "ssh.plugin_exec.reconnects=0", "ssh.plugin_exec.heartbeat_s=1",
             "ssh.plugin_exec.dead_after_s=3", "ssh.transfer.heartbeat_s=1", "ssh.transfer.dead_after_s=3",
             "run.lock_stale_after_s=60")
_BANNER = "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!"


@dataclass
class SshRun:
    state: RunState
    host: SshHost
    proxy: TcpProxy
    root: Path


def never(*_: Any) -> str:
    raise AssertionError("no decision is needed in this test")


@pytest.fixture
def ssh_run(state_dir: Path) -> Iterator[SshRun]:
    """A one-target SSH demo run whose target is reached only through a TCP proxy in front of its sshd."""
    with demo_behind_proxy(*_SETTINGS) as (state, host, root, proxy, _remote):
        yield SshRun(state, host, proxy, root)


def events_of(state: RunState) -> list[dict[str, Any]]:
    return network_events_of(state.run_dir)


def target(state: RunState) -> dict[str, Any]:
    record: dict[str, Any] = state.get("targets")["dr-demo-1"]
    return record


def new_host_key(host: SshHost) -> None:
    """The host is reinstalled: its sshd restarts with a new host key (known_hosts still has the old one)."""
    host.stop()
    for name in ("host_key", "host_key.pub"):
        (host.directory / name).unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.host_key)], check=True)
    host.start()


@pytest.mark.sshd
@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not sshd_available()[0], reason=sshd_available()[1])
def test_rollback_of_a_succeeded_run_to_a_black_holed_target_is_queued_not_claimed(
        ssh_run: SshRun, fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """A rollback that cannot reach a succeeded target waits run.unreachable_wait_s, queues the rollback
    (unreachable, exit 6) with the target still at 2.0.0; once the link heals the rollback restores 1.0.0."""
    state, proxy, root = ssh_run.state, ssh_run.proxy, ssh_run.root
    assert drive(state, mode="upgrade", decide=never).status == "succeeded"
    assert whole_version(root, fresh_seed_jobs) == "2.0.0"

    proxy.blackhole(True)
    started = time.monotonic()
    summary = drive(state, mode="rollback", decide=never)
    took = time.monotonic() - started
    assert (summary.status, summary.exit_code) == ("interrupted", 6), summary
    record = target(state)
    assert (record["status"], record["phase"]) == ("unreachable", "rollback")
    assert "cannot reach dr-demo-1" in record["errors"][-1]["message"]
    names = [e["event"] for e in events_of(state)]
    this_drive = names[len(names) - 1 - names[::-1].index("run.started"):]
    assert this_drive.index("target.unreachable") < this_drive.index("target.rollback_queued")
    assert "rollback.started" not in this_drive  # nothing was started on a target it could not lock
    # It waited run.unreachable_wait_s (3 s) after its first look, and no look hung on the black hole.
    assert 3 <= took < 90, took
    assert whole_version(root, fresh_seed_jobs) == "2.0.0"  # nothing was done, and nothing is claimed

    proxy.reset()
    summary = drive(state, mode="rollback", decide=never)
    assert (summary.status, summary.exit_code) == ("rolled_back", 3), summary
    assert target(state)["status"] == "rolled_back"
    assert whole_version(root, fresh_seed_jobs) == "1.0.0"


@pytest.mark.sshd
@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not sshd_available()[0], reason=sshd_available()[1])
def test_changed_host_key_refuses_rollback_and_resume_at_once_and_touches_nothing(
        ssh_run: SshRun, fresh_seed_jobs: list[tuple[Any, ...]]) -> None:
    """A changed host key is a refusal: rollback and resume end refused (exit 7) with OpenSSH's banner, after
    one connection (no retry, no unreachable wait); the target stays at 2.0.0 until the key is fixed."""
    state, host, proxy, root = ssh_run.state, ssh_run.host, ssh_run.proxy, ssh_run.root
    assert drive(state, mode="upgrade", decide=never).status == "succeeded"
    with state.mutate() as body:
        body["config"]["run"]["unreachable_wait_s"] = 600  # waited for as if unreachable, the test would time out
    old_key = (host.directory / "host_key").read_bytes(), (host.directory / "host_key.pub").read_bytes()
    new_host_key(host)

    for mode in ("rollback", "resume"):
        connections = proxy.connections
        started = time.monotonic()
        summary = drive(state, mode=mode, decide=never)
        assert (summary.status, summary.exit_code) == ("refused", 7), (mode, summary)
        assert time.monotonic() - started < 60, mode
        assert proxy.connections - connections == 1, mode  # one look, never retried
        record = target(state)
        assert (record["status"], record["phase"]) == ("refused", "rollback"), mode
        assert _BANNER in record["errors"][-1]["message"]
        refused = [e for e in events_of(state) if e["event"] == "target.refused"]
        assert refused and _BANNER in refused[-1]["message"] and "offered: SHA256:" in refused[-1]["message"]
        assert "target.unreachable" not in [e["event"] for e in events_of(state)]
        assert whole_version(root, fresh_seed_jobs) == "2.0.0"
        assert not (root / ".drhost" / "lock").exists()  # not even locked

    # The operator restores the known key: the queued rollback now runs and is verified.
    host.stop()
    (host.directory / "host_key").write_bytes(old_key[0])
    (host.directory / "host_key.pub").write_bytes(old_key[1])
    host.start()
    summary = drive(state, mode="rollback", decide=never)
    assert (summary.status, summary.exit_code) == ("rolled_back", 3), summary
    assert whole_version(root, fresh_seed_jobs) == "1.0.0"


def test_refused_counts_against_the_failure_budget_not_the_unreachable_one() -> None:
    """A refused target uses up max_failed, never max_unreachable: an impostor is not an outage."""
    budget = Budget(Amount(0, False), Amount(100, True), Amount(100, True), Amount(100, True))
    batch = Batch(0, None, ("a", "b"))
    assert budget.exceeded(batch, {"a": "refused"}, 2) is not None
    assert "failed" in str(budget.exceeded(batch, {"a": "refused"}, 2))
    lenient = Budget(Amount(100, True), Amount(100, True), Amount(0, False), Amount(0, False))
    assert lenient.exceeded(batch, {"a": "refused", "b": "refused"}, 2) is None
    assert lenient.exceeded(batch, {"a": "unreachable"}, 2) is not None
