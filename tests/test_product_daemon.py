"""The drproduct daemon and drproductctl: real processes, real ports, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from drhost.demo import install
from product_helpers import add_release, build_all, daemon_pids, proc_gone, product_root, switch_current, tool

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("packages"))


@pytest.fixture
def root1(tmp_path: Path, packages: dict[str, Path]) -> Iterator[Path]:
    with product_root(tmp_path, packages["1.0.0"]) as root:
        yield root


@pytest.fixture
def root2(tmp_path: Path, packages: dict[str, Path]) -> Iterator[Path]:
    with product_root(tmp_path, packages["2.0.0"]) as root:
        yield root


def _pid(root: Path) -> int:
    return int((root / "run" / "drproductd.pid").read_text())


def _http_health(root: Path) -> tuple[int, dict[str, object]]:
    port = install_port(root)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def install_port(root: Path) -> int:
    for line in (root / "etc" / "drproduct.ini").read_text().splitlines():
        if line.replace(" ", "").startswith("port="):
            return int(line.split("=", 1)[1])
    raise AssertionError("no port in ini")


def test_fresh_install_starts_healthy(root1: Path) -> None:
    """install_fresh + start gives a healthy 1.0.0 daemon at schema 1 serving the 200 seeded jobs."""
    t0 = time.monotonic()
    install.start(root1)
    elapsed = time.monotonic() - t0
    body = install.health(root1)
    assert body["status"] == "ok"
    assert (body["version"], body["schema"], body["jobs"]) == ("1.0.0", 1, 200)
    assert body["pid"] == _pid(root1)
    assert install.installed_version(root1) == "1.0.0"
    assert elapsed < 10, f"start took {elapsed:.2f}s"


def test_daemon_is_detached(root1: Path) -> None:
    """The daemon is double-forked: new session, not its leader, not our child; it logs to R/log."""
    install.start(root1)
    pid = _pid(root1)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ppid, sid = int(stat[1]), int(stat[3])
    assert ppid != os.getpid()
    assert sid != os.getsid(0), "setsid: the daemon must not share our session"
    assert sid != pid, "second fork: the daemon must not be a session leader (could grab a terminal)"
    assert "serving on 127.0.0.1" in (root1 / "log" / "drproductd.log").read_text()


def test_start_is_idempotent_and_status_reports(root1: Path) -> None:
    """A second start keeps the running daemon; status exits 0 when running and 3 when not."""
    stopped = tool(root1, "drproductctl", "status")
    assert stopped.returncode == 3 and json.loads(stopped.stdout)["running"] is False
    install.start(root1)
    pid = _pid(root1)
    install.start(root1)
    assert _pid(root1) == pid and daemon_pids(root1) == [pid]
    running = tool(root1, "drproductctl", "status")
    assert running.returncode == 0
    assert json.loads(running.stdout) == {"running": True, "pid": pid, "port": install_port(root1),
                                          "version": "1.0.0"}


def test_stop_leaves_no_process(root1: Path) -> None:
    """stop sends SIGTERM, the daemon exits cleanly, /proc shows nothing and the pid file is gone."""
    install.start(root1)
    pid = _pid(root1)
    out = json.loads(tool(root1, "drproductctl", "stop").stdout)
    assert out["signal"] == "SIGTERM"
    assert proc_gone(pid)
    assert daemon_pids(root1) == []
    assert not (root1 / "run" / "drproductd.pid").exists()
    assert "stopped cleanly" in (root1 / "log" / "drproductd.log").read_text()
    with pytest.raises(install.ProductUnreachable):
        install.health(root1)
    assert tool(root1, "drproductctl", "stop").returncode == 0, "stop when not running is fine"


def test_stop_sigstopped_daemon(root1: Path) -> None:
    """A SIGSTOPped daemon is still stopped by drproductctl stop, and no process is left."""
    install.start(root1)
    pid = _pid(root1)
    os.kill(pid, signal.SIGSTOP)
    proc = tool(root1, "drproductctl", "stop", "--timeout", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc_gone(pid)
    assert daemon_pids(root1) == []


def test_sigterm_removes_pid_file(root1: Path) -> None:
    """SIGTERM sent directly makes the daemon exit and remove its own pid file."""
    install.start(root1)
    pid = _pid(root1)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not proc_gone(pid):
        time.sleep(0.05)
    assert proc_gone(pid)
    assert not (root1 / "run" / "drproductd.pid").exists()


def test_2x_under_1x_licence_is_degraded(root2: Path) -> None:
    """A 2.0.0 daemon under a 1.x licence starts but reports 503 degraded naming the licence."""
    assert tool(root2, "drproduct-license", "issue", "--series", "1.x").returncode == 0
    install.start(root2)
    code, body = _http_health(root2)
    assert code == 503
    assert body["status"] == "degraded" and body["version"] == "2.0.0"
    assert any("licence series 1.x" in p for p in body["problems"])  # type: ignore[union-attr]
    assert tool(root2, "drproductctl", "health").returncode == 1


def test_2x_start_fails_without_replication_mode(root2: Path) -> None:
    """2.x refuses to start when the ini lacks [replication] mode: exit 1, reason on stderr and in the log."""
    ini = root2 / "etc" / "drproduct.ini"
    ini.write_text(ini.read_text().split("[replication]")[0])
    proc = tool(root2, "drproductctl", "start", "--timeout", "5")
    assert proc.returncode == 1
    assert "[replication] mode" in proc.stderr and "Traceback" not in proc.stderr
    assert "[replication] mode" in (root2 / "log" / "drproductd.log").read_text()
    assert daemon_pids(root2) == []


def test_start_runs_registered_exec_not_current(root1: Path, packages: dict[str, Path]) -> None:
    """Switching current without re-registering still starts the old release; register switches it."""
    add_release(root1, packages["2.0.0"])
    switch_current(root1, "2.0.0")
    install.start(root1)
    assert install.health(root1)["version"] == "1.0.0"
    install.stop(root1)
    with (root1 / "etc" / "drproduct.ini").open("a") as ini:
        ini.write("\n[replication]\nmode = sync\n")
    assert tool(root1, "drproductctl", "register").returncode == 0
    install.start(root1)
    body = install.health(root1)
    assert body["version"] == "2.0.0" and body["status"] == "degraded"
    assert any("schema 1" in p for p in body["problems"])


def test_start_reports_busy_port(root1: Path) -> None:
    """start fails with a clear reason when the port is already taken, leaving no daemon behind."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", install_port(root1)))
        sock.listen()
        proc = tool(root1, "drproductctl", "start", "--timeout", "3")
    assert proc.returncode == 1
    assert "cannot listen" in proc.stderr
    assert daemon_pids(root1) == []


@pytest.mark.parametrize("name", ["drproductd", "drproductctl", "drproduct-db", "drproduct-license"])
def test_unknown_root_is_one_line_error(root1: Path, name: str) -> None:
    """Every tool rejects an unknown root with exit 2 and one stderr line, no traceback."""
    args = {"drproductd": [], "drproductctl": ["status"], "drproduct-db": ["version"],
            "drproduct-license": ["show"]}[name]
    exe = root1 / "current" / "bin" / name
    proc = subprocess.run([str(exe), "--root", "/nonexistent/root", *args], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown root /nonexistent/root" in proc.stderr


def _answer_once(sock: socket.socket, reply: bytes) -> None:
    conn, _ = sock.accept()
    with conn:
        conn.recv(4096)
        conn.sendall(reply)


@pytest.mark.parametrize(("reply", "exit_code", "said"), [
    (None, 3, "not reachable"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", 3, "without an HTTP status line"),
    (b"HTTP/1.0 200 OK\r\n\r\n<html>hi</html>", 3, "answered HTTP 200 without JSON"),
    (b'HTTP/1.0 503 Service Unavailable\r\n\r\n{"status": "degraded", "problems": ["x"]}', 1, ""),
])
def test_health_names_what_answered_on_the_port(root1: Path, reply: bytes | None, exit_code: int, said: str) -> None:
    """health reads its daemon's answer itself: nothing listening, a stranger or a page without JSON is named
    as unreachable (exit 3); a 503 with a JSON body is the daemon's degraded answer (exit 1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", install_port(root1)))
        if reply is not None:
            sock.listen()
            threading.Thread(target=_answer_once, args=(sock, reply), daemon=True).start()
        proc = tool(root1, "drproductctl", "health")
    assert proc.returncode == exit_code, proc.stderr
    assert said in proc.stderr and proc.stderr.count("\n") <= 1
    body = json.loads(proc.stdout)
    assert body["status"] == ("degraded" if exit_code == 1 else "unreachable")
