"""Upload throughput: drhost's upload_resumable (paramiko) beside OpenSSH's ``sftp -b``, same cipher and MAC.

Run on demand:  python bench/sftp_upload.py [--size-mib 256] [--runs 3] [--cipher C] [--mac M]
                [--variant CHUNK:WINDOW ...] [--write docs/benchmarks.md] [--split-cores]

One loopback sshd (tests/sshd_hosts.py), one random file. Every row uploads the same file ``--runs`` times
to a fresh remote name and reports the median. Columns:
- transfer MB/s: bytes / seconds from the first write to the last acknowledgement (upload_resumable:
  first to last progress call; paramiko put: its own callback; sftp: process wall time, which also holds
  its ssh connection setup, measured separately as ``sftp -b`` with an empty batch and subtracted).
- end-to-end MB/s (upload_resumable only): the whole call, i.e. transfer plus the target's sha256 of the
  file, the local hash and the rename. The row "+ remote helper" hashes on the target as the bytes arrive
  (drhost's remote helper, ``hash_follow``), as ``SshSession.put`` does on a target with python3: the
  verification overlaps the transfer instead of following it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from drhost.transport._helper import RemoteHelper
from drhost.transport._remote_jobs import DEFAULT_PATH
from drhost.transport._sftp_upload import sha256_command, upload_resumable
from sshd_hosts import SshHost, start_hosts

MiB = 1024 * 1024


def connect(host: SshHost, cipher: str, mac: str) -> paramiko.Transport:
    sock = socket.create_connection((host.host, host.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock)
    options = transport.get_security_options()
    options.ciphers = (cipher,)
    if "gcm" not in cipher:
        options.digests = (mac,)
    transport.start_client(timeout=10)
    transport.auth_publickey("root", paramiko.Ed25519Key.from_private_key_file(str(host.client_key)))
    return transport


def remote_sha256_over(transport: paramiko.Transport) -> Callable[[str, int | None], str]:
    def remote_sha256(path: str, length: int | None) -> str:
        command = sha256_command(path, length)
        channel = transport.open_session(timeout=10)
        channel.exec_command(f"/bin/sh -c {shlex.quote(command)}")
        output = channel.makefile("rb").read().decode()
        channel.recv_exit_status()
        channel.close()
        return output.split()[0]

    return remote_sha256


def hash_while_over(transport: paramiko.Transport) -> Callable[[str, int], Callable[[], str | None]]:
    """What SshSession.put passes: the remote helper hashes the part as it arrives (on its own channel)."""
    return RemoteHelper.start(transport, python="python3", path=DEFAULT_PATH).hash_following


def resumable_run(
    host: SshHost, local: Path, remote: str, cipher: str, mac: str, chunk: int, window: int, helper: bool = False
) -> tuple[float, float]:
    transport = connect(host, cipher, mac)
    try:
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        marks: list[float] = []

        def progress(done: int, total: int) -> None:
            marks.append(time.perf_counter())

        started = time.perf_counter()
        report = upload_resumable(
            sftp,
            str(local),
            remote,
            remote_sha256=remote_sha256_over(transport),
            progress=progress,
            chunk_size=chunk,
            window=window,
            hash_while=hash_while_over(transport) if helper else None,
        )
        ended = time.perf_counter()
        assert report.bytes_sent == report.bytes_total
        return marks[-1] - marks[0], ended - started
    finally:
        transport.close()


def paramiko_put_run(host: SshHost, local: Path, remote: str, cipher: str, mac: str) -> float:
    """paramiko's own SFTPClient.put (pipelined SFTPFile, 32 KiB requests), for reference."""
    transport = connect(host, cipher, mac)
    try:
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        started = time.perf_counter()
        sftp.put(str(local), remote, confirm=True)
        return time.perf_counter() - started
    finally:
        transport.close()


def sftp_argv(host: SshHost, batch: Path, cipher: str, mac: str) -> list[str]:
    argv = [
        "sftp",
        "-q",
        "-b",
        str(batch),
        "-i",
        str(host.client_key),
        "-P",
        str(host.port),
        "-o",
        f"UserKnownHostsFile={host.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"Ciphers={cipher}",
        "-F",
        "/dev/null",
    ]
    if "gcm" not in cipher:
        argv += ["-o", f"MACs={mac}"]
    return [*argv, f"root@{host.host}"]


def sftp_run(host: SshHost, batch_text: str, cipher: str, mac: str, work: Path) -> float:
    batch = work / "batch"
    batch.write_text(batch_text)
    started = time.perf_counter()
    subprocess.run(sftp_argv(host, batch, cipher, mac), check=True, capture_output=True)
    return time.perf_counter() - started


def sftp_verified_run(host: SshHost, local: Path, remote: str, cipher: str, mac: str, work: Path,
                      expected_sha256: str) -> float:
    """``sftp -b`` for the transfer while drhost's helper (on a warm paramiko connection of its own, started
    before the clock) hashes the file on the target as it arrives: what an upload through OpenSSH's client
    with drhost's verification would cost. Seconds from sftp's start to the verified hash."""
    transport = connect(host, cipher, mac)
    try:
        follow = hash_while_over(transport)
        # The helper follows a file that exists (drhost's upload creates its part first); sftp's put opens the
        # same file with O_TRUNC and writes it in order.
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        sftp.open(remote, "w").close()
        batch = work / "batch"
        batch.write_text(f"put {local} {remote}\n")
        started = time.perf_counter()
        wait = follow(remote, local.stat().st_size)
        subprocess.run(sftp_argv(host, batch, cipher, mac), check=True, capture_output=True)
        digest = wait()
        elapsed = time.perf_counter() - started
    finally:
        transport.close()
    if digest != expected_sha256:
        raise SystemExit(f"the target's hash of {remote} is {digest}, expected {expected_sha256}")
    return elapsed


def size_of(text: str) -> int:
    number = int(text.rstrip("KkMm"))
    return number * (1024 if text[-1] in "Kk" else MiB if text[-1] in "Mm" else 1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cipher", default="aes128-ctr")
    parser.add_argument("--mac", default="hmac-sha2-256")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="upload_resumable chunk:window, e.g. 256K:32 (repeatable; default 256K:32)",
    )
    parser.add_argument("--no-paramiko-put", action="store_true", help="skip paramiko's own SFTPClient.put")
    parser.add_argument("--write", type=Path, help="append the results to this markdown file")
    parser.add_argument("--split-cores", action="store_true",
                        help="the target's side (sshd and all it starts) on CPU 1, this process and its sftp/ssh "
                        "clients on CPU 0: two machines' worth of CPU, one each, instead of two shared cores")
    args = parser.parse_args()
    variants = [(size_of(c), int(w)) for c, w in (v.split(":") for v in (args.variant or ["256K:32"]))]

    work = Path(tempfile.mkdtemp(prefix="drhost-bench-sftp-"))
    (host,) = start_hosts(work, 1, prefix="bench")
    if args.split_cores:
        # sshd forks a process per connection, and those start the sftp server and the helper: all inherit it.
        assert host.process is not None
        os.sched_setaffinity(host.process.pid, {1})
        os.sched_setaffinity(0, {0})
    local = work / "package.bin"
    with open(local, "wb") as handle:
        for _ in range(args.size_mib):
            handle.write(os.urandom(MiB))
    size = local.stat().st_size
    rows: list[tuple[str, str, str, str]] = []
    counter = iter(range(10**6))

    def remote() -> str:
        path = host.root / f"upload-{next(counter)}.bin"
        return str(path)

    def clean() -> None:
        for path in host.root.glob("upload-*"):
            path.unlink()

    def mbps(seconds: list[float]) -> str:
        return f"{size / statistics.median(seconds) / 1e6:.1f}"

    try:
        setup = [sftp_run(host, "", args.cipher, args.mac, work) for _ in range(args.runs)]
        sftp_times = []
        for _ in range(args.runs):
            sftp_times.append(
                sftp_run(host, f"put {local} {remote()}\n", args.cipher, args.mac, work) - statistics.median(setup)
            )
            clean()
        rows.append(
            (
                "OpenSSH `sftp -b` (defaults: 32 KiB requests, 64 in flight)",
                mbps(sftp_times),
                "—",
                f"setup {statistics.median(setup) * 1000:.0f} ms subtracted",
            )
        )
        expected = hashlib.sha256(local.read_bytes()).hexdigest()
        verified = []
        for _ in range(args.runs):
            verified.append(sftp_verified_run(host, local, remote(), args.cipher, args.mac, work, expected)
                            - statistics.median(setup))
            clean()
        rows.append(
            (
                "OpenSSH `sftp -b` + drhost's helper hashing as bytes arrive (verified)",
                "—",
                mbps(verified),
                "sftp's setup subtracted; the helper's connection warm, as drhost's plugin_exec one is",
            )
        )
        for (chunk, window), helper in [*((v, False) for v in variants), (variants[0], True)]:
            transfer, whole = [], []
            for _ in range(args.runs):
                t, w = resumable_run(host, local, remote(), args.cipher, args.mac, chunk, window, helper)
                transfer.append(t)
                whole.append(w)
                clean()
            rows.append(
                (
                    f"upload_resumable chunk {chunk // 1024} KiB, window {window}"
                    + (" + remote helper hashing as bytes arrive" if helper else ""),
                    mbps(transfer),
                    mbps(whole),
                    "end-to-end includes the target's hash, overlapped" if helper
                    else "end-to-end includes remote sha256sum + rename",
                )
            )
        if not args.no_paramiko_put:
            put = []
            for _ in range(args.runs):
                put.append(paramiko_put_run(host, local, remote(), args.cipher, args.mac))
                clean()
            rows.append(("paramiko `SFTPClient.put` (pipelined, 32 KiB requests)", mbps(put), "—", "reference"))
    finally:
        host.stop()

    base = float(rows[0][1])
    lines = [
        "| uploader | transfer MB/s (median) | end-to-end MB/s | note |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
    ]
    ratios = [(f"{name}: {float(speed) / base:.2f} × sftp" if speed != "—" else f"{name}:")
              + (f" (end-to-end, verified: {float(whole) / base:.2f} × sftp's transfer)" if whole != "—" else "")
              for name, speed, whole, _ in rows[1:]]
    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    machine = (
        f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()},"
        f" paramiko {paramiko.__version__}, {ssh_version}"
    )
    cipher = args.cipher if "gcm" in args.cipher else f"{args.cipher} + {args.mac}"
    command = (
        f"python bench/sftp_upload.py --size-mib {args.size_mib} --runs {args.runs} --cipher {args.cipher}"
        + ("" if "gcm" in args.cipher else f" --mac {args.mac}")
        + "".join(f" --variant {v}" for v in args.variant)
        + (" --no-paramiko-put" if args.no_paramiko_put else "")
        + (" --split-cores" if args.split_cores else "")
    )
    report = "\n".join(
        [
            f"### SFTP upload, {args.size_mib} MiB, {cipher}"
            + (", client and target on a core each" if args.split_cores else "")
            + f" ({time.strftime('%Y-%m-%d')})",
            "",
            f"Machine: {machine}  ",
            f"Command: `{command}`",
            "",
            *lines,
            "",
            *(f"- {r}" for r in ratios),
            "",
        ]
    )
    print(report)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as out:
            out.write("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
