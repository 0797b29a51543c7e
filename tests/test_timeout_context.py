"""The context saved when a step times out (drhost/watchdog/_collect.py), read from real targets and this machine."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from drhost.transport import LocalSession, SshSession, SshTarget, TargetSession
from drhost.watchdog._collect import (
    collect_controller_context,
    collect_target_context,
    decode_address,
)
from sshd_hosts import sshd_available, start_hosts

ssh_available, ssh_why = sshd_available()
pytestmark = pytest.mark.integration

TARGET_KEYS = {"target", "install_root", "collected_at", "environment", "loadavg", "memory", "top_processes",
               "connections", "log_lines", "errors"}


@pytest.fixture(params=["local", pytest.param("ssh", marks=[pytest.mark.sshd,
                                                        pytest.mark.skipif(not ssh_available, reason=ssh_why)])])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TargetSession]:
    """The same checks through both transports: both reach this machine, so what the test starts is on the target."""
    if request.param == "local":
        yield LocalSession("local", kill_grace_s=0.5)
        return
    (host,) = start_hosts(tmp_path / "sshd", 1)
    target = SshTarget(host.name, host.host, host.port, key_file=str(host.client_key),
                       known_hosts=str(host.known_hosts))
    ssh = SshSession(host.name, target, run_id="run1", work_dir=str(tmp_path / "work"), kill_grace_s=1.0,
                     poll_interval_s=0.05)
    try:
        yield ssh
    finally:
        ssh.close()
        host.stop()


def write_log(root: Path) -> list[str]:
    """A product log with 120 lines of mixed levels; returns the lines the context must keep (last 50 matches)."""
    (root / "log").mkdir(parents=True)
    lines, matching = [], []
    for i in range(120):
        level = ("INFO", "WARNING", "ERROR", "DEBUG", "CRITICAL")[i % 5]
        line = f"2026-11-28 10:{i // 60:02d}:{i % 60:02d} {level} drproductd: event {i}"
        if i == 117:
            line = f"2026-11-28 10:01:57 INFO worker: Traceback (most recent call last): event {i}"
        lines.append(line)
        if level in ("WARNING", "ERROR", "CRITICAL") or i == 117:
            matching.append(line)
    (root / "log" / "drproductd.log").write_text("\n".join(lines) + "\n")
    # Not a *.log file: rotated logs are not searched.
    (root / "log" / "drproductd.log.1").write_text("ERROR in the rotated log\n")
    return matching[-50:]


@pytest.fixture
def memory_holder() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A child holding 256 MB resident under an awkward comm (spaces and parentheses) and a unique marker argv."""
    marker = f"drhost-marker-{secrets.token_hex(4)}"
    code = ("import sys, time\n"
            "open('/proc/self/comm', 'w').write('hog) (x y')\n"
            "block = b'x' * (256 << 20)\n"
            "print('ready', flush=True)\n"
            "time.sleep(300)\n")
    child = subprocess.Popen([sys.executable, "-c", code, marker], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        yield child, marker
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def listener() -> Iterator[tuple[int, socket.socket, socket.socket]]:
    """A LISTEN socket on 127.0.0.1 with one ESTABLISHED connection to it: (port, client, accepted)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        yield server.getsockname()[1], client, accepted
    finally:
        for sock in (client, accepted, server):
            sock.close()


def test_target_context_has_every_part(session: TargetSession, tmp_path: Path,
                                       memory_holder: tuple[subprocess.Popen[bytes], str],
                                       listener: tuple[int, socket.socket, socket.socket]) -> None:
    """One collection carries the environment, loadavg, memory, the test's process, its sockets and the log's
    error/warning lines (last 50, no INFO), with no errors."""
    root = tmp_path / "opt" / "drproduct"
    expected_lines = write_log(root)
    child, marker = memory_holder
    port, client, _ = listener
    context = collect_target_context(session, install_root=str(root))

    assert set(context) == TARGET_KEYS
    assert context["errors"] == []
    env = context["environment"]
    assert set(env) == {"cpu_percent", "memory_percent", "disk_io_percent"}
    assert 0 <= env["cpu_percent"] <= 100 and 0 < env["memory_percent"] <= 100

    load = context["loadavg"]
    assert all(isinstance(load[k], float) and load[k] >= 0 for k in ("load1", "load5", "load15"))
    assert 1 <= load["running"] <= load["total"]

    memory = context["memory"]
    assert memory["mem_total_kb"] == psutil.virtual_memory().total // 1024
    assert 0 < memory["mem_available_kb"] <= memory["mem_total_kb"]
    assert {"swap_total_kb", "swap_free_kb"} <= set(memory)

    by_rss = context["top_processes"]["by_rss"]
    assert len(by_rss) == 15 or len(by_rss) == len(psutil.pids())
    mine = next(p for p in by_rss if p["pid"] == child.pid)
    assert mine["comm"] == "hog) (x y"  # split at the last ')', spaces kept
    assert mine["ppid"] == os.getpid()
    assert mine["state"] in ("S", "R")
    assert mine["rss_kb"] >= 256 * 1024
    assert mine["cmdline"].startswith(sys.executable) and mine["cmdline"].rstrip().endswith(marker)
    assert len(mine["cmdline"]) <= 300
    assert [p["rss_kb"] for p in by_rss] == sorted((p["rss_kb"] for p in by_rss), reverse=True)
    by_cpu = context["top_processes"]["by_cpu_time"]
    assert [p["cpu_time_s"] for p in by_cpu] == sorted((p["cpu_time_s"] for p in by_cpu), reverse=True)
    assert all(p["cpu_time_s"] >= 0 and p["cmdline"] is not None for p in by_cpu)

    connections = context["connections"]
    entries = connections["entries"]
    assert {"local": f"127.0.0.1:{port}", "remote": "0.0.0.0:0", "state": "LISTEN"} in entries
    client_port = client.getsockname()[1]
    established = {"local": f"127.0.0.1:{client_port}", "remote": f"127.0.0.1:{port}", "state": "ESTABLISHED"}
    # Listeners come first; on a busy machine the cap of 50 may leave this connection out, counted only.
    assert established in entries or len(entries) == 50
    assert connections["states"]["LISTEN"] >= 1 and connections["states"]["ESTABLISHED"] >= 2
    assert connections["total"] == sum(connections["states"].values())
    assert len(entries) <= 50

    log_file = str(root / "log" / "drproductd.log")
    assert context["log_lines"] == [{"file": log_file, "line": line} for line in expected_lines]


def test_ipv6_sockets_are_decoded(session: TargetSession, tmp_path: Path) -> None:
    """An IPv6 listener on ::1 shows as [::1]:port (tcp6 words decoded)."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = socket.socket(socket.AF_INET6)
    try:
        server.bind(("::1", 0))
    except OSError as exc:
        server.close()
        pytest.skip(f"no IPv6 loopback: {exc}")
    with server:
        server.listen()
        port = server.getsockname()[1]
        context = collect_target_context(session, install_root=str(tmp_path))
    assert {"local": f"[::1]:{port}", "remote": "[::]:0", "state": "LISTEN"} in context["connections"]["entries"]


def test_missing_log_directory_is_an_error_not_a_failure(session: TargetSession, tmp_path: Path) -> None:
    """An install root without a log directory: log_lines is None with a reason; every other part is collected."""
    context = collect_target_context(session, install_root=str(tmp_path / "nowhere"))
    assert context["log_lines"] is None
    assert [e for e in context["errors"] if e.startswith("log_lines:")] == context["errors"]
    assert len(context["errors"]) == 1
    assert context["loadavg"] is not None and context["top_processes"] is not None


def test_install_root_is_data_not_shell(session: TargetSession, tmp_path: Path) -> None:
    """An install root with spaces, quotes, $(...), backticks and ';' is used verbatim and nothing in it runs."""
    cwd = session.run(["pwd"]).stdout.strip()
    canaries = [Path(cwd) / "pwned", tmp_path / "pwned"]
    nasty = tmp_path / "it's a \"root\" $(touch pwned) `touch pwned`; touch pwned"
    (nasty / "log").mkdir(parents=True)
    (nasty / "log" / "my product.log").write_text("INFO fine\nERROR disk on fire\n")
    context = collect_target_context(session, install_root=str(nasty))
    assert context["errors"] == []
    assert context["log_lines"] == [{"file": str(nasty / "log" / "my product.log"), "line": "ERROR disk on fire"}]
    assert not any(canary.exists() for canary in canaries)


def test_dead_target_gives_errors_not_exceptions(tmp_path: Path) -> None:
    """A target that cannot run /bin/sh at all: every part is None with its reason in errors, nothing raises."""
    # A PATH-less session still runs "/bin/sh" by absolute path, so break the command itself: a cwd that is gone.
    class GoneDirSession(LocalSession):
        def run(self, argv: Any, **kwargs: Any) -> Any:
            return super().run(argv, **{**kwargs, "cwd": str(tmp_path / "gone")})

    context = collect_target_context(GoneDirSession("gone"), install_root=str(tmp_path))
    assert set(context) == TARGET_KEYS
    for key in ("loadavg", "memory", "top_processes", "connections", "log_lines"):
        assert context[key] is None
        assert any(e.startswith(f"{key}: ") for e in context["errors"])
    assert context["environment"] == {"cpu_percent": None, "memory_percent": None, "disk_io_percent": None}


def test_collection_respects_its_budget(tmp_path: Path) -> None:
    """With a budget shorter than the resource sample, collection stops at the budget and says what is missing."""
    started = time.monotonic()
    context = collect_target_context(LocalSession("local", kill_grace_s=0.2), install_root=str(tmp_path),
                                     timeout_s=0.2)
    assert time.monotonic() - started < 5
    assert context["loadavg"] is None
    assert any(e.startswith("loadavg: ") for e in context["errors"])


@pytest.mark.parametrize(("text", "expected"), [
    ("0100007F:1F90", "127.0.0.1:8080"),
    ("00000000:0016", "0.0.0.0:22"),
    ("0500A8C0:C350", "192.168.0.5:50000"),
    ("00000000000000000000000001000000:0050", "[::1]:80"),
    ("B80D0120000000000000000001000000:01BB", "[2001:db8::1]:443"),
    ("0000000000000000FFFF00000100007F:0CEA", "[::ffff:127.0.0.1]:3306"),
])
def test_proc_net_addresses_decode(text: str, expected: str) -> None:
    """/proc/net/tcp addresses are host-order 32-bit words (little-endian here) and a hex port."""
    assert decode_address(text) == expected


# ---------------------------------------------------------------------------- the controller


def test_controller_context_lists_its_own_process_tree() -> None:
    """The controller tree holds this process and its children (recursively), with the other parts collected."""
    child = subprocess.Popen(["sleep", "300"])
    try:
        context = collect_controller_context()
    finally:
        child.kill()
        child.wait()
    assert context["errors"] == []
    assert set(context) == {"collected_at", "environment", "loadavg", "memory", "top_processes", "controller_tree",
                            "disk", "errors"}
    tree = {p["pid"]: p for p in context["controller_tree"]}
    assert tree[os.getpid()]["name"] == psutil.Process().name()
    assert tree[child.pid]["ppid"] == os.getpid() and tree[child.pid]["name"] == "sleep"
    assert all(p["rss_kb"] >= 0 and p["cpu_percent"] >= 0 and p["status"] for p in tree.values())
    assert 0 <= context["environment"]["cpu_percent"] <= 100
    assert context["disk"]["path"] == "/" and context["disk"]["total_bytes"] > 0
    assert len(context["top_processes"]["by_rss"]) <= 15
    assert {"load1", "load5", "load15"} <= set(context["loadavg"])
    assert context["memory"]["mem_total_kb"] > 0
