"""How long a reachability probe takes on a black-holed link: drhost's ``SshSession.probe`` beside OpenSSH.

Run on demand:  python bench/black_hole_probe.py [--bound S] [--runs R] [--write docs/benchmarks.md]

One loopback sshd (drhost.demo.sshd) behind the fault proxy of the tests (tests/tcp_proxy.py), which reads
and drops every byte once black-holed (a silently dropping firewall: connections open, nothing answers).
Each run measures, with the same bound S:

* drhost, established: a session that answered a probe, then the link is black-holed; ``probe(S)``;
* drhost, new: a session never connected, the link already black-holed; ``probe(S)``;
* OpenSSH: ``ssh -o ConnectTimeout=S -o ServerAliveInterval=… true`` through the black-holed proxy.

The issue this answers: a 15 s probe took 31 s on a black-holed link (a channel timeout, then a reconnect's
banner wait on top). The bound is now one deadline for everything the probe does.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _report import machine, publish

from drhost.demo.sshd import SshHost, start_hosts
from drhost.transport import SshSession, SshTarget, TransportError
from tcp_proxy import TcpProxy


def session(proxy: TcpProxy, host: SshHost, known: Path) -> SshSession:
    target = SshTarget(name="h", host=proxy.host, port=proxy.port, key_file=str(host.client_key),
                       known_hosts=str(known))
    return SshSession("h", target, run_id="bench", work_dir=str(host.root / ".drhost"), reconnects=1)


def timed_probe(probe: SshSession, bound: float) -> tuple[float, str]:
    started = time.monotonic()
    try:
        probe.probe(bound)
    except TransportError as exc:
        return time.monotonic() - started, str(exc)
    raise RuntimeError("the probe answered through a black hole")


def openssh(proxy: TcpProxy, host: SshHost, known: Path, bound: float) -> float:
    started = time.monotonic()
    subprocess.run(["ssh", "-p", str(proxy.port), "-i", str(host.client_key), "-o", "BatchMode=yes",
                    "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                    "-o", f"ConnectTimeout={bound:g}", "-o", "ServerAliveInterval=1",
                    "-o", f"ServerAliveCountMax={max(1, int(bound))}", f"root@{proxy.host}", "true"],
                   capture_output=True, timeout=bound * 10, check=False)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bound", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    # paramiko logs the black-holed handshake's traceback from its own thread: the outcome is measured here.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    times: dict[str, list[float]] = {"drhost, established session": [], "drhost, new session": [],
                                     "OpenSSH `ssh` (ConnectTimeout, ServerAlive)": []}
    messages: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        [host] = start_hosts(Path(scratch) / "hosts", 1)
        try:
            with TcpProxy(host.host, host.port).start() as proxy:
                known = Path(scratch) / "known_hosts"
                key_type, key = (host.directory / "host_key.pub").read_text().split()[:2]
                known.write_text(f"[{proxy.host}]:{proxy.port} {key_type} {key}\n")
                for _ in range(args.runs):
                    proxy.blackhole(False)
                    live = session(proxy, host, known)
                    live.probe(args.bound)
                    fresh = session(proxy, host, known)
                    proxy.blackhole(True)
                    for name, probe in (("drhost, established session", live), ("drhost, new session", fresh)):
                        took, messages[name] = timed_probe(probe, args.bound)
                        times[name].append(took)
                        probe.close()
                    times["OpenSSH `ssh` (ConnectTimeout, ServerAlive)"].append(
                        openssh(proxy, host, known, args.bound))
                    proxy.cut()
        finally:
            host.stop()
    peer = statistics.median(times["OpenSSH `ssh` (ConnectTimeout, ServerAlive)"])
    rows = "\n".join(f"| {name} | {min(v):.2f}–{max(v):.2f} s, median {statistics.median(v):.2f} s | "
                     f"{statistics.median(v) / peer:.2f}× |" for name, v in times.items())
    said = "\n".join(f"- {name}: `{text}`" for name, text in messages.items())
    report = f"""### Reachability probe on a black-holed link, bound {args.bound:g} s ({date.today()})

Machine: {machine()}{'  '}
Command: `python bench/black_hole_probe.py --bound {args.bound:g} --runs {args.runs}`

| probe | took | vs OpenSSH |
|---|---|---|
{rows}

What drhost said:
{said}
"""
    publish(report, args.write)


if __name__ == "__main__":
    main()
