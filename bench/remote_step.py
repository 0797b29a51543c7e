"""Overhead of one remote step on a warm connection: drhost's SshSession.run vs OpenSSH with ControlMaster.

Run on demand:  python bench/remote_step.py [--runs N] [--write docs/benchmarks.md]

Both sides run `true` on the same loopback sshd host, one after the other in one run. drhost's run is a
detached job (its own process group, output and exit code in files, survives a dropped connection);
`ssh` with a ControlMaster multiplexes a new session over one connection and waits for the exit status.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import machine, publish

from drhost.demo.sshd import start_hosts
from drhost.transport import SshSession, SshTarget


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="drhost-bench-ssh-"))
    host = start_hosts(base, 1)[0]
    try:
        target = SshTarget(name="bench", host=host.host, port=host.port, key_file=str(host.client_key),
                           known_hosts=str(host.known_hosts))
        session = SshSession("bench", target, run_id="bench", work_dir=str(host.root / ".drhost"))
        session.run(["true"])
        drhost_samples = []
        for _ in range(args.runs):
            started = time.perf_counter()
            session.run(["true"])
            drhost_samples.append(time.perf_counter() - started)
        session.close()

        control = base / "cm"
        ssh = ["ssh", "-o", f"UserKnownHostsFile={host.known_hosts}", "-o", "StrictHostKeyChecking=yes",
               "-o", "BatchMode=yes", "-i", str(host.client_key), "-p", str(host.port),
               "-o", f"ControlPath={control}", "-o", "ControlMaster=auto", "-o", "ControlPersist=120",
               f"root@{host.host}"]
        subprocess.run([*ssh, "true"], check=True)
        ssh_samples = []
        for _ in range(args.runs):
            started = time.perf_counter()
            subprocess.run([*ssh, "true"], check=True)
            ssh_samples.append(time.perf_counter() - started)
        subprocess.run([*ssh[:-1], "-O", "exit", ssh[-1]], capture_output=True)
    finally:
        host.stop()
    ours, theirs = median_ms(drhost_samples), median_ms(ssh_samples)
    report = "\n".join([
        f"### Remote step overhead on a warm connection ({time.strftime('%Y-%m-%d')})", "",
        f"Machine: {machine()}  ",
        f"Command: `python bench/remote_step.py --runs {args.runs}`", "",
        "| runner of `true` on a loopback sshd | median ms |", "|---|---|",
        f"| drhost `SshSession.run` (detached job: start, remote wait, output) | {ours:.1f} |",
        f"| OpenSSH `ssh` with ControlMaster reuse | {theirs:.1f} |", "",
        f"- ratio drhost / ssh ControlMaster = {ours / theirs:.2f}", "",
    ])
    publish(report, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
