"""What a host that goes silent costs a call: connection attempts and seconds until the call fails.

Run on demand:  python bench/silent_peer.py [--banner-timeout S] [--reconnects N] [--write docs/benchmarks.md]

A loopback sshd behind a TCP proxy: the session runs one command, then the proxy stops sending anything
back (new connections are accepted, not a byte is returned: a hung host, a half-dead load balancer) and cuts
the connection; the next command needs a new connection.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from _report import machine, publish

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from drhost.demo.sshd import start_hosts
from drhost.transport import SshSession, SshTarget, TransportError
from tcp_proxy import TcpProxy


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--banner-timeout", type=float, default=2.0)
    parser.add_argument("--reconnects", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="drhost-bench-silent-"))
    (host,) = start_hosts(base, 1)
    try:
        with TcpProxy(host.host, host.port) as proxy:
            known = base / "known_hosts"
            public = (host.directory / "host_key.pub").read_text().split()
            known.write_text(f"[{proxy.host}]:{proxy.port} {public[0]} {public[1]}\n")
            target = SshTarget("bench", proxy.host, proxy.port, key_file=str(host.client_key),
                               known_hosts=str(known), banner_timeout_s=args.banner_timeout)
            session = SshSession("bench", target, run_id="bench", work_dir=str(base / "work"),
                                 reconnects=args.reconnects)
            session.run(["true"])
            proxy.blackhole(True, "down")
            proxy.cut()
            before, started = proxy.connections, time.monotonic()
            with contextlib.suppress(TransportError):
                session.run(["true"])
            took, attempts = time.monotonic() - started, proxy.connections - before
            session.close()
    finally:
        host.stop()
    publish("\n".join([
        f"### A host gone silent ({time.strftime('%Y-%m-%d')})", "",
        f"Machine: {machine()}  ",
        f"Command: `python bench/silent_peer.py --banner-timeout {args.banner_timeout:g} "
        f"--reconnects {args.reconnects}`", "",
        "| connection attempts | seconds until the call failed |", "|---|---|",
        f"| {attempts} | {took:.1f} |", "",
    ]), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
