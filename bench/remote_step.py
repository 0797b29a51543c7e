"""Overhead of one remote step on a warm connection: drhost's SshSession.run vs OpenSSH with ControlMaster.

Run on demand:  python bench/remote_step.py [--runs N] [--write docs/benchmarks.md]

Both sides run `true` on the same loopback sshd host, one after the other in one run. drhost's run is a
detached job (its own process group, output and exit code in files, survives a dropped connection);
`ssh` with a ControlMaster multiplexes a new session over one connection and waits for the exit status.
drhost runs its commands through its remote helper (one process per connection, drhost/transport/_helper.py);
the first pair also runs drhost with ``remote_helper = off`` (an SSH session per command, as before the
helper), and reports drhost's controller CPU per step (this process's user + system time over the runs).
The same again as a non-root login user that becomes root with (passwordless) sudo, on a host that refuses
root login: drhost with ``become = sudo`` beside ``ssh … sudo -n true``; and once more with that host in a
network namespace only a bastion reaches: drhost's ``proxy_jump`` beside ``ssh -J``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _report import machine, publish

from drhost.demo.bastion import build_bastion_network
from drhost.demo.sshd import SshHost, ensure_login_user, remove_login_user, start_hosts
from drhost.transport import Become, SshSession, SshTarget

BECOME_USER = "drhost-bench"


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(call: Callable[[], object], runs: int) -> list[float]:
    call()  # warm: connection up, job directory made
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def drhost_step(target: SshTarget, work: Path, runs: int, become: Become | None, helper: bool) -> tuple[float, float]:
    """drhost's median ms of `true`, and its controller CPU ms per step."""
    session = SshSession("bench", target, run_id="bench", work_dir=str(work), become=become,
                         **({} if helper else {"remote_helper": None}))
    try:
        cpu = time.process_time()
        samples = timed(lambda: session.run(["true"]), runs)
        cpu_ms = (time.process_time() - cpu) / (runs + 1) * 1000
    finally:
        session.close()
    return median_ms(samples), cpu_ms


def pair(host: SshHost, base: Path, runs: int, user: str, become: Become | None,
         bastion: SshHost | None = None) -> tuple[float, float, float]:
    """(drhost, ssh ControlMaster) median ms of `true` on ``host`` as ``user`` (through sudo with ``become``,
    through the jump host ``bastion`` when given), and drhost's controller CPU ms per step."""
    jump = () if bastion is None else (SshTarget("bench (jump host 1)", bastion.host, bastion.port, user=user,
                                                 key_file=str(host.client_key), known_hosts=str(host.known_hosts)),)
    target = SshTarget(name="bench", host=host.host, port=host.port, user=user, key_file=str(host.client_key),
                       known_hosts=str(host.known_hosts), jump=jump)
    work = host.root / ".drhost" if become is not None or user == "root" else Path(f"/home/{user}/.drhost-bench")
    ours, ours_cpu = drhost_step(target, work, runs, become, helper=True)
    control = base / f"cm-{user}-{'jump' if bastion is not None else 'direct'}"
    # A config file, not options: the ssh that -J starts for the jump host reads the file, not our options.
    config = base / f"ssh_config-{user}-{'jump' if bastion is not None else 'direct'}"
    config.write_text(f"Host *\n  IdentityFile {host.client_key}\n  UserKnownHostsFile {host.known_hosts}\n"
                      "  StrictHostKeyChecking yes\n  BatchMode yes\n")
    ssh = ["ssh", "-F", str(config), "-p", str(host.port),
           "-o", f"ControlPath={control}", "-o", "ControlMaster=auto", "-o", "ControlPersist=120",
           *(["-J", f"{user}@{bastion.host}:{bastion.port}"] if bastion is not None else []),
           f"{user}@{host.host}"]
    command = ["sudo", "-n", "true"] if become is not None else ["true"]
    try:
        theirs = timed(lambda: subprocess.run([*ssh, *command], check=True), runs)
    finally:
        subprocess.run([*ssh[:-1], "-O", "exit", ssh[-1]], capture_output=True)
    return ours, median_ms(theirs), ours_cpu


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="drhost-bench-ssh-"))
    ensure_login_user(BECOME_USER)
    host = start_hosts(base, 1)[0]
    become_host = start_hosts(base / "become", 1, login_user=BECOME_USER)[0]
    network = build_bastion_network(base / "net", ["t1"], login_user=BECOME_USER)
    try:
        ours, theirs, ours_cpu = pair(host, base, args.runs, "root", None)
        sessions, sessions_cpu = drhost_step(
            SshTarget(name="bench", host=host.host, port=host.port, user="root", key_file=str(host.client_key),
                      known_hosts=str(host.known_hosts)), host.root / ".drhost", args.runs, None, helper=False)
        ours_sudo, theirs_sudo, sudo_cpu = pair(become_host, base, args.runs, BECOME_USER, Become())
        ours_jump, theirs_jump, jump_cpu = pair(network.targets["t1"], base, args.runs, BECOME_USER, Become(),
                                                network.bastion)
    finally:
        host.stop()
        become_host.stop()
        network.close()
        remove_login_user(BECOME_USER)
    report = "\n".join([
        f"### Remote step overhead on a warm connection ({time.strftime('%Y-%m-%d')})", "",
        f"Machine: {machine()}  ",
        f"Command: `python bench/remote_step.py --runs {args.runs}`", "",
        "| runner of `true` on a loopback sshd | median ms | drhost controller CPU ms per step |", "|---|---|---|",
        f"| drhost `SshSession.run` (detached job: start, remote wait, output), remote helper | {ours:.1f} | "
        f"{ours_cpu:.1f} |",
        f"| drhost, `remote_helper = off` (an SSH session per command) | {sessions:.1f} | {sessions_cpu:.1f} |",
        f"| OpenSSH `ssh` with ControlMaster reuse | {theirs:.1f} | |",
        f"| drhost, login `{BECOME_USER}`, `become = sudo` (NOPASSWD; the helper started through sudo once a "
        f"connection) | {ours_sudo:.1f} | "
        f"{sudo_cpu:.1f} |",
        f"| OpenSSH `ssh {BECOME_USER}@… sudo -n true` with ControlMaster reuse | {theirs_sudo:.1f} | |",
        f"| drhost, `become = sudo`, through a bastion (`proxy_jump`, network namespaces) | {ours_jump:.1f} | "
        f"{jump_cpu:.1f} |",
        f"| OpenSSH `ssh -J {BECOME_USER}@bastion … sudo -n true` with ControlMaster reuse | {theirs_jump:.1f} | |",
        "",
        f"- ratio drhost / ssh ControlMaster = {ours / theirs:.2f} (a session per command: {sessions / theirs:.2f});"
        f" the helper makes a step {sessions / ours:.2f}× faster and costs {ours_cpu / sessions_cpu:.2f}× the "
        "controller CPU",
        f"- with sudo: ratio drhost / ssh ControlMaster = {ours_sudo / theirs_sudo:.2f}; sudo adds "
        f"{ours_sudo - ours:.1f} ms to a drhost step and {theirs_sudo - theirs:.1f} ms to an ssh command",
        f"- through a bastion: ratio drhost / ssh -J ControlMaster = {ours_jump / theirs_jump:.2f}; the hop adds "
        f"{ours_jump - ours_sudo:.1f} ms to a drhost step and {theirs_jump - theirs_sudo:.1f} ms to an ssh command",
        "",
    ])
    publish(report, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
