"""Heartbeat: a frozen or black-holed SSH peer is found dead within the bound, a healthy one never is.

Real sshd hosts (tests/sshd_hosts.py), real paramiko Transports. Small settings keep it fast: interval 0.5 s,
dead after 2 s (allowed misses 3, bound 2 s + slack).
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from drhost.config import load_config
from drhost.demo.sshd import process_tree, signal_processes
from drhost.transport._heartbeat import (
    TRANSPORT_CLOSED,
    DeadPeer,
    Heartbeat,
    HeartbeatSettings,
    NetworkFailure,
    configure_socket,
    next_probe_delay,
    probe_timeout,
    reconnect_delays,
)
from sshd_hosts import SshHost, make_host, sshd_available, start_hosts

FAST = HeartbeatSettings("control", interval_s=0.5, dead_after_s=2.0, reconnects=3)
SLACK_S = 0.6

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
needs_sshd = pytest.mark.skipif(not sshd_available()[0], reason=sshd_available()[1])


# -- helpers ------------------------------------------------------------------------------------------------
def connect(host: SshHost, settings: HeartbeatSettings | None = None) -> paramiko.Transport:
    sock = socket.create_connection((host.host, host.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if settings is not None:
        configure_socket(sock, settings)
    transport = paramiko.Transport(sock)
    transport.start_client(timeout=10)
    expected = (host.directory / "host_key.pub").read_text().split()[1]
    assert transport.get_remote_server_key().get_base64() == expected
    transport.auth_publickey("root", paramiko.Ed25519Key.from_private_key_file(str(host.client_key)))
    assert transport.is_authenticated()
    return transport


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[float, DeadPeer]] = []
        self.event = threading.Event()

    def __call__(self, evidence: DeadPeer) -> None:
        self.calls.append((time.monotonic(), evidence))
        self.event.set()


def new_session_pid(host: SshHost, before: list[int]) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        new = [pid for pid in host.session_pids() if pid not in before]
        if new:
            return new[0]
        time.sleep(0.02)
    raise AssertionError("no sshd session process appeared")


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHost]:
    if not sshd_available()[0]:
        pytest.skip(sshd_available()[1])
    [server] = start_hosts(tmp_path_factory.mktemp("hb"), 1, prefix="hb")
    yield server
    server.stop()


def assert_detected(recorder: Recorder, since: float, settings: HeartbeatSettings) -> DeadPeer:
    bound = settings.interval_s * (settings.allowed_misses + 1) + SLACK_S
    assert recorder.event.wait(bound + 5), "peer never declared dead"
    at, evidence = recorder.calls[0]
    assert at - since <= bound, f"detected after {at - since:.2f} s, bound {bound:.2f} s: {evidence.describe()}"
    time.sleep(settings.interval_s)
    assert len(recorder.calls) == 1, "on_dead must be called once"
    return evidence


# -- real sshd ----------------------------------------------------------------------------------------------
@pytest.mark.integration
@needs_sshd
@pytest.mark.sshd
def test_healthy_connection_is_never_declared_dead(host: SshHost) -> None:
    transport = connect(host)
    recorder = Recorder()
    try:
        with Heartbeat(transport, FAST, recorder) as heartbeat:
            time.sleep(3.0)
            assert recorder.calls == []
            rtts = heartbeat.rtts
            assert len(rtts) >= 5
            assert all(0 < rtt < 0.5 for rtt in rtts)
            assert heartbeat.misses == 0
            age = heartbeat.last_reply_age()
            assert age is not None and age < 1.0
        assert not heartbeat.running
    finally:
        transport.close()


@pytest.mark.integration
@needs_sshd
@pytest.mark.sshd
def test_frozen_peer_is_declared_dead_within_the_bound(host: SshHost) -> None:
    before = host.session_pids()
    transport = connect(host)
    frozen = process_tree(new_session_pid(host, before))
    recorder = Recorder()
    heartbeat = Heartbeat(transport, FAST, recorder)
    try:
        time.sleep(1.2)  # a few good heartbeats first
        assert heartbeat.rtts
        signal_processes(frozen, signal.SIGSTOP)
        stopped_at = time.monotonic()
        evidence = assert_detected(recorder, stopped_at, FAST)
        assert evidence.connection_type == "control"
        assert evidence.miss_count >= 1
        assert all(miss.waited_s > 0 for miss in evidence.misses)
        assert evidence.rtt_history_s
        assert evidence.last_reply_age_s is not None and evidence.last_reply_age_s >= FAST.interval_s
        assert evidence.last_reply_wall is not None and evidence.last_reply_wall <= time.time()
        assert (evidence.interval_s, evidence.dead_after_s, evidence.allowed_misses) == (0.5, 2.0, 3)
        failure = NetworkFailure(evidence, target="hb1")
        assert failure.category == "network"
        assert failure.as_dict()["evidence"]["misses"]
        assert "missed heartbeat" in str(failure)
    finally:
        heartbeat.stop()
        signal_processes(frozen, signal.SIGCONT)
        transport.close()


@pytest.mark.integration
@needs_sshd
@pytest.mark.sshd
def test_closed_connection_is_reported_at_once(host: SshHost) -> None:
    before = host.session_pids()
    transport = connect(host)
    session = new_session_pid(host, before)
    recorder = Recorder()
    with Heartbeat(transport, FAST, recorder):
        time.sleep(0.7)
        signal_processes(process_tree(session), signal.SIGKILL)
        killed_at = time.monotonic()
        assert recorder.event.wait(FAST.dead_after_s + 2)
        at, evidence = recorder.calls[0]
        assert at - killed_at < FAST.interval_s + SLACK_S
        # One reason however the close is noticed: before a probe, by a probe waiting for its reply, or by a
        # probe whose send fails (test_a_closed_transport_has_one_reason_however_it_is_noticed).
        assert evidence.reason == TRANSPORT_CLOSED
    transport.close()


# -- black hole: an sshd in its own network namespace behind a veth pair ----------------------------------
def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def _free_link_local_block() -> tuple[str, str]:
    used = _ip("-4", "-o", "addr").stdout
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        third, block = rng.randrange(1, 255), rng.randrange(0, 64) * 4
        if f"169.254.{third}.{block + 1}/" not in used and f"169.254.{third}.{block + 2}/" not in used:
            return f"169.254.{third}.{block + 1}", f"169.254.{third}.{block + 2}"
    raise RuntimeError("no free 169.254.x.y/30 block")


@pytest.fixture
def namespaced_host(tmp_path: Path) -> Iterator[tuple[SshHost, str]]:
    ok, why = sshd_available()
    if not ok:
        pytest.skip(why)
    if _ip("netns", "list").returncode != 0:
        pytest.skip("ip netns not available")
    tag = f"{os.getpid() % 100000}{random.randrange(100):02d}"
    namespace, outer, inner = f"drhb{tag}", f"drhb{tag}a", f"drhb{tag}b"
    host_address, ns_address = _free_link_local_block()
    server = make_host(tmp_path, "bh1")
    try:
        steps = [
            ("netns", "add", namespace),
            ("link", "add", outer, "type", "veth", "peer", "name", inner),
            ("link", "set", inner, "netns", namespace),
            ("addr", "add", f"{host_address}/30", "dev", outer),
            ("link", "set", outer, "up"),
            ("-n", namespace, "addr", "add", f"{ns_address}/30", "dev", inner),
            ("-n", namespace, "link", "set", inner, "up"),
            ("-n", namespace, "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot build the namespace (ip {' '.join(step)}): {done.stderr.strip()}")
        server.host, server.port = ns_address, 2222
        server.known_hosts.write_text(server.known_hosts_line())
        argv = [
            "ip", "netns", "exec", namespace, SSHD, "-D", "-e", "-f", "/dev/null",
            "-o", f"Port={server.port}", "-o", f"ListenAddress={ns_address}", "-o", f"HostKey={server.host_key}",
            "-o", f"AuthorizedKeysFile={server.directory / 'authorized_keys'}",
            "-o", f"PidFile={server.directory}/pid", "-o", "StrictModes=no", "-o", "UsePAM=no",
            "-o", "PermitRootLogin=yes", "-o", "LogLevel=ERROR",
        ]
        with open(server.directory / "sshd.log", "ab") as log:
            server.process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((ns_address, server.port), timeout=0.5) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield server, namespace
    finally:
        server.stop()
        _ip("link", "del", outer)
        _ip("netns", "del", namespace)


@pytest.mark.integration
@pytest.mark.sshd
def test_black_holed_peer_is_declared_dead_within_the_bound(namespaced_host: tuple[SshHost, str]) -> None:
    server, namespace = namespaced_host
    transport = connect(server)
    recorder = Recorder()
    heartbeat = Heartbeat(transport, FAST, recorder)
    try:
        time.sleep(1.2)
        assert heartbeat.rtts
        for chain in ("INPUT", "OUTPUT"):
            subprocess.run(["ip", "netns", "exec", namespace, "iptables", "-A", chain, "-p", "tcp", "-j", "DROP"],
                           check=True)
        dropped_at = time.monotonic()
        evidence = assert_detected(recorder, dropped_at, FAST)
        assert evidence.miss_count >= 1
        # Not a race between the two rules: a probe goes out only after the previous reply, and with FAST its
        # timeout (min(interval, 1 s) = 0.5 s) is the interval, so its 4th miss (> 3 allowed) falls at send + 2 s,
        # never before the silence rule's last reply + 2 s; that rule is also checked first on a late wake-up.
        assert evidence.reason.startswith("no reply for "), evidence.reason
    finally:
        heartbeat.stop()
        transport.close()


# -- without sshd -------------------------------------------------------------------------------------------
class HangingTransport:
    """A transport whose peer never answers: global_request blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.requests = 0

    def global_request(self, kind: str, data: object = None, wait: bool = True) -> None:
        assert kind == "keepalive@openssh.com" and wait
        self.requests += 1
        self.release.wait(30)

    def is_active(self) -> bool:
        return True


def test_a_request_that_never_returns_does_not_block_detection() -> None:
    transport, recorder = HangingTransport(), Recorder()
    settings = HeartbeatSettings("transfer", 0.2, 0.8, 2)
    started = time.monotonic()
    with Heartbeat(transport, settings, recorder):
        assert recorder.event.wait(3)
    transport.release.set()
    at, evidence = recorder.calls[0]
    assert at - started <= 0.8 + 0.3
    assert transport.requests == 1  # one outstanding probe, never a queue of them
    assert evidence.last_reply_age_s is None and evidence.miss_count >= 1


class ClosedTransport:
    """A transport whose peer has closed, noticed the way ``path`` names: ``before-probe`` (paramiko already
    knows), ``reply-wait`` (the reader sees the EOF while a probe waits) or ``send-fails`` (the probe's send hits
    the reset socket first: paramiko's write_all raises EOFError while the transport still looks active)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.active = path != "before-probe"

    def global_request(self, kind: str, data: object = None, wait: bool = True) -> None:
        if self.path == "send-fails":
            raise EOFError()
        self.active = False

    def is_active(self) -> bool:
        return self.active


@pytest.mark.parametrize("path", ["before-probe", "reply-wait", "send-fails"])
def test_a_closed_transport_has_one_reason_however_it_is_noticed(path: str) -> None:
    """A closed connection is declared dead once, with the reason "transport closed", whichever path sees it."""
    transport, recorder = ClosedTransport(path), Recorder()
    with Heartbeat(transport, HeartbeatSettings("control", 0.2, 0.8, 3), recorder):
        assert recorder.event.wait(3)
    ((_, evidence),) = recorder.calls
    assert evidence.reason == TRANSPORT_CLOSED


def test_stop_before_death_means_no_call() -> None:
    transport, recorder = HangingTransport(), Recorder()
    heartbeat = Heartbeat(transport, HeartbeatSettings("control", 0.2, 0.8, 3), recorder)
    time.sleep(0.3)
    heartbeat.stop()
    time.sleep(0.8)
    transport.release.set()
    assert recorder.calls == [] and not heartbeat.running


def test_reconnect_delays_count_growth_and_cap() -> None:
    def settings(reconnects: int) -> HeartbeatSettings:
        return HeartbeatSettings("control", 60, 180, reconnects)

    assert list(reconnect_delays(settings(0))) == []
    assert len(list(reconnect_delays(settings(3)))) == 3
    draws = [list(reconnect_delays(settings(8), base_s=0.5, cap_s=10, rng=random.Random(seed))) for seed in range(300)]
    for attempt in range(8):
        ceiling = min(10, 0.5 * 2 ** attempt)
        values = [draw[attempt] for draw in draws]
        assert all(0 <= value <= ceiling for value in values)
        assert max(values) > 0.8 * ceiling  # full jitter reaches the ceiling
        assert len(set(values)) > 250  # and is jitter, not a constant
    means = [sum(draw[attempt] for draw in draws) / len(draws) for attempt in range(5)]  # ceilings 0.5 … 8
    assert all(later > 1.5 * earlier for earlier, later in itertools.pairwise(means))


def test_from_config_reads_the_design_table() -> None:
    config = load_config()
    table = {name: HeartbeatSettings.from_config(config, name)
             for name in ("control", "transfer", "plugin exec", "status-check")}
    rows = {s.connection_type: (s.interval_s, s.dead_after_s, s.reconnects) for s in table.values()}
    assert rows == {"control": (60, 180, 3), "transfer": (30, 120, 2), "plugin_exec": (45, 150, 1),
                    "status_check": (90, 300, 0)}
    assert [s.allowed_misses for s in table.values()] == [2, 3, 2, 2]
    assert table["status-check"].manual and not table["control"].manual
    override = HeartbeatSettings.from_config({"ssh": {"transfer": {"heartbeat_s": 5}}}, "transfer")
    assert (override.interval_s, override.dead_after_s, override.reconnects) == (5, 120, 2)
    with pytest.raises(ValueError, match="unknown SSH connection type"):
        HeartbeatSettings.from_config(config, "bulk")


def test_adaptive_timeout_and_sooner_probe() -> None:
    assert probe_timeout([], 60) == 1.0
    assert probe_timeout([0.001] * 10, 60) == 1.0
    assert probe_timeout([0.5] * 10, 60) == pytest.approx(2.0)
    assert probe_timeout([0.5] * 10, 1.5) == 1.5  # never beyond the interval
    steady = [0.02] * 10
    assert next_probe_delay(steady, 60) == 60
    assert next_probe_delay([*steady, 0.021], 60) == 60
    assert next_probe_delay([*steady, 0.4], 60) == 15
    assert next_probe_delay([0.0003] * 10 + [0.002], 60) == 60  # loopback jitter is not a rise
    assert next_probe_delay(steady, 60, late=True) == 15


def test_configure_socket_sets_keepalive_and_user_timeout() -> None:
    with socket.socket() as sock:
        configure_socket(sock, HeartbeatSettings("control", 60, 180, 3))
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 180_000
