"""drproductctl: start/stop/status/health/register of the drproductd service registered under R."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time

from .common import (
    Failure,
    Parser,
    Release,
    Root,
    emit,
    pid_alive,
    pid_cmdline,
    read_pid,
    run_tool,
    write_atomic,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

EXIT_NOT_RUNNING = 3


class Unreachable(Exception):
    pass


def get_health(root: Root, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    # One HTTP/1.0 GET to our own daemon, which closes the connection after its answer: urllib would cost more
    # start-up time (http.client, email, ssl) than the whole probe, and health is asked many times per upgrade.
    port = root.port()
    url = f"http://127.0.0.1:{port}/health"
    chunks: list[bytes] = []
    try:
        # socket() + connect() rather than create_connection(), whose getaddrinfo loads the idna codec.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError as exc:
        raise Unreachable(f"{url} not reachable: {exc}") from None
    head, blank, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not blank or len(status) < 2 or not status[0].startswith(b"HTTP/") or not status[1].isdigit():
        raise Unreachable(f"{url} answered without an HTTP status line: {head[:80]!r}")
    code = int(status[1])
    try:
        # 503 degraded still carries the JSON body that explains why.
        return code, json.loads(body.decode("utf-8"))
    except ValueError:
        raise Unreachable(f"{url} answered HTTP {code} without JSON") from None


def registration(root: Root) -> dict[str, Any]:
    try:
        with open(root.service_path, encoding="utf-8") as fh:
            reg = json.load(fh)
    except FileNotFoundError:
        raise Failure(f"no service registered: {root.service_path} missing (run drproductctl register)") from None
    except (OSError, ValueError) as exc:
        raise Failure(f"{root.service_path} unreadable: {exc}") from None
    if not isinstance(reg, dict) or not isinstance(reg.get("exec"), list) or not reg["exec"]:
        raise Failure(f"{root.service_path}: expected {{name, version, exec: [argv], pid_file}}")
    return reg


def running_pid(root: Root) -> int | None:
    """Pid of our live daemon, or None. Checks /proc so a recycled pid is not mistaken for ours."""
    pid = read_pid(root.pid_path)
    if pid is None or not pid_alive(pid):
        return None
    cmd = pid_cmdline(pid)
    if cmd and not any("drproductd" in a for a in cmd):
        return None
    return pid


def _log_tail(root: Root, lines: int = 3) -> str:
    try:
        with open(root.log_path, encoding="utf-8", errors="replace") as fh:
            tail = [ln.strip() for ln in fh.readlines()[-lines:]]
    except OSError:
        return f"no log at {root.log_path}"
    return " | ".join(tail)


def start(root: Root, timeout: float) -> int:
    began = time.monotonic()
    pid = running_pid(root)
    if pid is None:
        if os.path.exists(root.pid_path):
            os.unlink(root.pid_path)  # stale: its process is gone
        reg = registration(root)
        import subprocess  # only start spawns anything

        proc = subprocess.run([str(a) for a in reg["exec"]], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=False)
        if proc.returncode != 0:
            reason = proc.stderr.decode("utf-8", "replace").strip() or _log_tail(root)
            raise Failure(f"start failed (exit {proc.returncode}): {reason}")
        pid = read_pid(root.pid_path)
        if pid is None:
            raise Failure(f"daemon reported ready but wrote no pid file {root.pid_path}")
    deadline = began + timeout
    last = ""
    while True:
        if not pid_alive(pid):
            raise Failure(f"daemon pid {pid} died before answering /health: {_log_tail(root)}")
        try:
            _code, body = get_health(root, timeout=1.0)
            emit({"running": True, "pid": pid, "status": body.get("status"), "version": body.get("version"),
                  "seconds": round(time.monotonic() - began, 3)})
            return 0
        except Unreachable as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise Failure(f"daemon pid {pid} did not answer /health within {timeout:.1f}s: {last}")
        time.sleep(0.05)


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def stop(root: Root, timeout: float) -> int:
    pid = running_pid(root)
    if pid is None:
        if os.path.exists(root.pid_path):
            os.unlink(root.pid_path)
        emit({"stopped": False, "was_running": False})
        return 0
    how = "SIGTERM"
    try:
        os.kill(pid, signal.SIGTERM)
        # A SIGSTOPped daemon would keep SIGTERM pending forever; let it run to handle it.
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    if not _wait_gone(pid, timeout):
        how = "SIGKILL"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, 5.0):
            raise Failure(f"pid {pid} still alive after SIGKILL")
    if os.path.exists(root.pid_path) and read_pid(root.pid_path) in (pid, None):
        os.unlink(root.pid_path)
    emit({"stopped": True, "was_running": True, "pid": pid, "signal": how})
    return 0


def _main(argv: list[str], release_dir: str) -> int:
    parser = Parser(prog="drproductctl")
    parser.add_argument("--root", required=True)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, default in (("start", 15.0), ("stop", 10.0)):
        sp = sub.add_parser(name)
        sp.add_argument("--timeout", type=float, default=default)
    for name in ("status", "health", "register"):
        sub.add_parser(name)
    args = parser.parse_args(argv)
    root = Root(args.root)

    if args.cmd == "start":
        return start(root, args.timeout)
    if args.cmd == "stop":
        return stop(root, args.timeout)
    if args.cmd == "register":
        release = Release(release_dir)
        reg = {"name": "drproductd", "version": release.version,
               "exec": [os.path.join(release.dir, "bin", "drproductd"), "--root", root.path],
               "pid_file": root.pid_path}
        write_atomic(root.service_path, (json.dumps(reg, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        emit(reg)
        return 0
    if args.cmd == "status":
        pid = running_pid(root)
        version: str | None = None
        if pid is not None:
            with contextlib.suppress(Unreachable):
                version = get_health(root)[1].get("version")
        if version is None and os.path.exists(root.service_path):
            version = registration(root).get("version")
        port: int | None
        try:
            port = root.port()
        except Failure:
            port = None
        emit({"running": pid is not None, "pid": pid, "port": port, "version": version})
        return 0 if pid is not None else EXIT_NOT_RUNNING
    # health
    try:
        _code, body = get_health(root)
    except Unreachable as exc:
        emit({"status": "unreachable", "error": str(exc)})
        sys.stderr.write(f"drproductctl: {exc}\n")
        return EXIT_NOT_RUNNING
    emit(body)
    return 0 if body.get("status") == "ok" else 1


def main(argv: list[str], release_dir: str) -> int:
    return run_tool("drproductctl", _main, argv, release_dir)
