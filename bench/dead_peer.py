"""How fast a frozen SSH peer is found dead: drhost's Heartbeat beside OpenSSH's ServerAlive, in one run.

Run on demand:  python bench/dead_peer.py [--interval I] [--count N] [--runs R] [--settle S] [--append FILE]

One loopback sshd (drhost.demo.sshd). Each run opens a connection, lets it idle for ``--settle`` seconds with
heartbeats flowing, then freezes the sshd session (SIGSTOP of the session process and its children: the
kernel still ACKs, sshd answers nothing) and measures the time from SIGSTOP to detection:

* drhost: ``Heartbeat`` with interval I and dead-after I × (N + 1) (= N allowed misses), until ``on_dead``;
* OpenSSH: ``ssh -o ServerAliveInterval=I -o ServerAliveCountMax=N … 'echo ready; exec sleep 1000'``,
  until the ssh process exits ("Timeout, server … not responding").

Both declare the peer dead (N + 1) × I after the last packet it sent, so the expected time from SIGSTOP is
(N + 1) × I minus how far into its current interval the freeze fell.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import paramiko

from drhost.demo.sshd import SshHost, process_tree, signal_processes, start_hosts
from drhost.transport._heartbeat import DeadPeer, Heartbeat, HeartbeatSettings


def new_session(host: SshHost, before: list[int]) -> list[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        new = [pid for pid in host.session_pids() if pid not in before]
        if new:
            time.sleep(0.2)  # let the privilege-separated child appear
            return process_tree(new[0])
        time.sleep(0.02)
    raise RuntimeError("no sshd session process appeared")


def run_drhost(host: SshHost, interval: float, count: int, settle: float) -> tuple[float, str]:
    settings = HeartbeatSettings("control", interval, interval * (count + 1), 0)
    before = host.session_pids()
    sock = socket.create_connection((host.host, host.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock)
    transport.start_client(timeout=10)
    transport.auth_publickey("root", paramiko.Ed25519Key.from_private_key_file(str(host.client_key)))
    session = new_session(host, before)
    found: list[tuple[float, DeadPeer]] = []
    done = threading.Event()

    def on_dead(evidence: DeadPeer) -> None:
        found.append((time.monotonic(), evidence))
        done.set()

    heartbeat = Heartbeat(transport, settings, on_dead)
    try:
        time.sleep(settle)
        signal_processes(session, signal.SIGSTOP)
        stopped = time.monotonic()
        if not done.wait(settings.dead_after_s * 3 + 10):
            raise RuntimeError("drhost heartbeat never declared the peer dead")
        at, evidence = found[0]
        return at - stopped, f"{evidence.miss_count} misses, {evidence.reason}"
    finally:
        heartbeat.stop()
        signal_processes(session, signal.SIGCONT)
        transport.close()
        signal_processes(session, signal.SIGKILL)


def run_openssh(host: SshHost, interval: float, count: int, settle: float) -> tuple[float, str]:
    before = host.session_pids()
    argv = ["ssh", "-F", "/dev/null", "-T", "-p", str(host.port), "-i", str(host.client_key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={host.known_hosts}",
            "-o", f"ServerAliveInterval={interval:g}", "-o", f"ServerAliveCountMax={count}",
            f"root@{host.host}", "echo ready; exec sleep 1000"]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    session: list[int] = []
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"ssh did not connect: {process.communicate(timeout=5)[1]}")
        session = new_session(host, before)
        time.sleep(settle)
        signal_processes(session, signal.SIGSTOP)
        stopped = time.monotonic()
        process.wait(timeout=interval * (count + 1) * 3 + 10)
        took = time.monotonic() - stopped
        assert process.stderr is not None
        message = process.stderr.read().strip().splitlines()
        return took, f"exit {process.returncode}: {message[-1] if message else ''}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        signal_processes(session, signal.SIGCONT)
        signal_processes(session, signal.SIGKILL)


def ssh_version() -> str:
    return subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--interval", type=float, default=1.0, help="heartbeat / ServerAliveInterval, s")
    parser.add_argument("--count", type=int, default=3, help="allowed misses / ServerAliveCountMax")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=2.5, help="idle seconds before the freeze")
    parser.add_argument("--append", type=Path, help="append the markdown section to this file")
    args = parser.parse_args(argv)
    expected = args.interval * (args.count + 1)
    rows: list[tuple[str, list[float], str]] = []
    with tempfile.TemporaryDirectory(prefix="drhost-bench-") as base:
        [host] = start_hosts(Path(base), 1, prefix="bench")
        try:
            for name, runner in (("drhost Heartbeat", run_drhost), ("OpenSSH ServerAlive", run_openssh)):
                times, notes = [], []
                for index in range(args.runs):
                    took, note = runner(host, args.interval, args.count, args.settle)
                    print(f"{name} run {index + 1}: {took:.2f} s ({note})", file=sys.stderr)
                    times.append(took)
                    notes.append(note)
                rows.append((name, times, notes[-1]))
        finally:
            host.stop()
    command = " ".join(["python", "bench/dead_peer.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        f"### Frozen-peer detection ({date.today().isoformat()})",
        "",
        f"Machine: vm: {os.cpu_count()} cores, {platform.platform()}, Python "
        f"{platform.python_version()}, paramiko {paramiko.__version__}, {ssh_version()}  ",
        f"Command: `{command}`",
        "",
        f"Interval {args.interval:g} s, {args.count} allowed misses (drhost dead-after {expected:g} s; OpenSSH "
        f"`ServerAliveInterval={args.interval:g} ServerAliveCountMax={args.count}`), freeze after "
        f"{args.settle:g} s idle; time from SIGSTOP of the sshd session to detection.",
        "",
        "| detector | runs, s | median, s | max, s | how it ended (last run) |",
        "|---|---|---|---|---|",
    ]
    for name, times, note in rows:
        lines.append(f"| {name} | {', '.join(f'{t:.2f}' for t in times)} | {statistics.median(times):.2f} | "
                     f"{max(times):.2f} | {note} |")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.append:
        with args.append.open("a") as out:
            out.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
