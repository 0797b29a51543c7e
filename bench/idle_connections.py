"""What idle SSH connections cost the controller: paramiko's reader thread wakes every tick to look whether its
transport was closed.

Run on demand:  python bench/idle_connections.py [--connections 100] [--ticks 0.1 10 30] [--seconds 10]

Opens N authenticated paramiko connections to 4 real loopback sshd (drhost/demo/sshd.py, host keys checked)
the way drhost does (drhost.transport._ssh_connect.open_connection), sets the socket timeout of each to the
tick measured (paramiko's own is 0.1 s; drhost's IDLE_TICK_S after login), leaves them idle, and reports this
process's CPU (getrusage) per second of idleness, in all and per connection.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from drhost.demo.sshd import start_hosts  # noqa: E402
from drhost.transport._ssh_connect import SshTarget, open_connection  # noqa: E402


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--ticks", type=float, nargs="+", default=[0.1, 10.0, 30.0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drhost-bench-idle-") as tmp:
        hosts = start_hosts(Path(tmp), 4, prefix="idle")
        try:
            for tick in args.ticks:
                connections = []
                for index in range(args.connections):
                    host = hosts[index % len(hosts)]
                    connections.append(open_connection(SshTarget(
                        host.name, host.host, host.port, key_file=str(host.client_key),
                        known_hosts=str(host.known_hosts))))
                for connection in connections:
                    connection.transport.sock.settimeout(tick)
                time.sleep(1.0)  # each reader's last recv began with the old timeout
                before = cpu_s()
                time.sleep(args.seconds)
                spent = cpu_s() - before
                for connection in connections:
                    connection.close()
                print(f"tick {tick:g} s, {args.connections} idle connections: "
                      f"{spent / args.seconds * 1000:.1f} ms of CPU a second, "
                      f"{spent / args.seconds / args.connections * 1e6:.1f} us a second per connection")
        finally:
            for host in hosts:
                host.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
