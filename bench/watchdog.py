"""What the watchdog costs and how punctual it is; what a timeout's diagnosis costs, local and over SSH.

Run on demand:  python bench/watchdog.py [--watches N] [--runs N] [--write docs/benchmarks.md]

1. Punctuality: N steps watched at once by the one watchdog thread, each with a 3 s budget and 0.5 s
   cadences; how late each 85 %/95 % warning and each progress line came (ms after its moment), and
   the controller CPU the watchdog used meanwhile.
2. Diagnosis: the target sample (two /proc reads 0.5 s apart) and the full target context, through
   drhost's LocalSession and SshSession, side by side with the same constant script run by OpenSSH
   `ssh` (ControlMaster reuse) — the peer an operator would script by hand.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _report import machine, publish

from drhost.demo.sshd import start_hosts
from drhost.transport import LocalSession, SshSession, SshTarget
from drhost.watchdog import Environment
from drhost.watchdog._collect import collect_target_context
from drhost.watchdog._resources import _SAMPLE_SCRIPT, sample_target
from drhost.watchdog._watchdog import Watchdog, WatchdogSettings


def punctuality(watches: int, budget_s: float = 3.0) -> dict[str, float]:
    settings = WatchdogSettings(progress_every_s=0.5, remaining_every_s=100, resources_every_s=100)
    dog = Watchdog(settings)
    late: list[float] = []
    lock = threading.Lock()
    started = time.monotonic()

    def emit_for(start: float) -> Any:
        def emit(name: str, data: dict[str, Any]) -> None:
            now = time.monotonic()
            if name == "watchdog.warning":
                moment = start + budget_s * data["percent"] / 100
            elif name == "watchdog.progress":
                moment = start + round((now - start) / 0.5) * 0.5
            else:
                return
            with lock:
                late.append(now - moment)
        return emit

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    handles = [dog.watch(timeout_s=budget_s, emit=emit_for(started), sample=Environment,
                         estimate=lambda e, f: None, started=started) for _ in range(watches)]
    time.sleep(budget_s + 0.2)
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    for handle in handles:
        dog.release(handle)
    dog.close()
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    ordered = sorted(late)
    return {"events": len(late), "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))], "max_ms": 1000 * ordered[-1],
            "cpu_ms": 1000 * cpu}


def timed(call: Any, runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return 1000 * statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--watches", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    punct = punctuality(args.watches)

    base = Path(tempfile.mkdtemp(prefix="drhost-bench-watchdog-"))
    host = start_hosts(base, 1)[0]
    root = base / "root"
    (root / "log").mkdir(parents=True)
    (root / "log" / "drproductd.log").write_text("".join(f"2026-11-28 INFO line {i}\n" if i % 10 else
                                                          f"2026-11-28 ERROR failure {i}\n" for i in range(20000)))
    try:
        local = LocalSession("bench")
        target = SshTarget(name="bench", host=host.host, port=host.port, key_file=str(host.client_key),
                           known_hosts=str(host.known_hosts))
        ssh_session = SshSession("bench", target, run_id="bench", work_dir=str(host.root / ".drhost"))
        ssh_session.run(["true"])
        results = {
            "sample_local": timed(lambda: sample_target(local), args.runs),
            "sample_ssh": timed(lambda: sample_target(ssh_session), args.runs),
            "context_local": timed(lambda: collect_target_context(local, install_root=str(root)), args.runs),
            "context_ssh": timed(lambda: collect_target_context(ssh_session, install_root=str(root)), args.runs),
        }
        ssh_session.close()
        control = base / "cm"
        ssh = ["ssh", "-o", f"UserKnownHostsFile={host.known_hosts}", "-o", "StrictHostKeyChecking=yes",
               "-o", "BatchMode=yes", "-i", str(host.client_key), "-p", str(host.port),
               "-o", f"ControlPath={control}", "-o", "ControlMaster=auto", "-o", "ControlPersist=120",
               f"root@{host.host}"]
        subprocess.run([*ssh, "true"], check=True, capture_output=True)
        # The same constant script, quoted for the remote shell the way an operator's wrapper would.
        remote = shlex.join(["sh", "-c", _SAMPLE_SCRIPT, "drhost-sample", "0.5"])
        results["sample_openssh"] = timed(lambda: subprocess.run([*ssh, remote], check=True, capture_output=True),
                                          args.runs)
        subprocess.run([*ssh[:-1], "-O", "exit", ssh[-1]], capture_output=True)
    finally:
        host.stop()

    report = "\n".join([
        f"### Watchdog punctuality and timeout diagnosis ({time.strftime('%Y-%m-%d')})", "",
        f"Machine: {machine()}  ",
        f"Command: `python bench/watchdog.py --watches {args.watches} --runs {args.runs}`", "",
        f"{args.watches} steps watched at once (3 s budget, progress every 0.5 s): {punct['events']:.0f} events",
        "", "| lateness after the event's moment | ms |", "|---|---|",
        f"| median | {punct['p50_ms']:.2f} |", f"| p99 | {punct['p99_ms']:.2f} |",
        f"| max | {punct['max_ms']:.2f} |",
        f"| controller CPU used by the watchdog over 3.2 s | {punct['cpu_ms']:.0f} |", "",
        "| diagnosis part (loopback sshd, median) | ms |", "|---|---|",
        f"| target sample via `LocalSession` (two /proc reads, 0.5 s apart) | {results['sample_local']:.0f} |",
        f"| target sample via drhost `SshSession` | {results['sample_ssh']:.0f} |",
        f"| the same script via OpenSSH `ssh` (ControlMaster reuse) | {results['sample_openssh']:.0f} |",
        f"| full target context via `LocalSession` (20 000-line log) | {results['context_local']:.0f} |",
        f"| full target context via `SshSession` | {results['context_ssh']:.0f} |", "",
        f"- ratio drhost SshSession / OpenSSH ssh for the sample = "
        f"{results['sample_ssh'] / results['sample_openssh']:.2f} (both include the 0.5 s between the reads)",
        "",
    ])
    publish(report, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
