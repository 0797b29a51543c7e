"""Real OpenSSH servers on loopback: the SSH targets of ``drhost upgrade --demo --ssh`` and of the tests.

Each host is its own ``sshd`` process on a free 127.0.0.1 port, with throwaway host and client keys, its
own known_hosts line, and its own install root for the product. Nothing here is a mock: drhost's SSH
transport talks to these servers exactly as it would to a production host.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ._ports import free_port as free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
#: Public keys of the hosts' login users (sshd reads them as the user, who cannot enter the hosts' directories).
LOGIN_KEYS_DIR = Path("/run/drhost-demo-keys")
#: What a login user's name may be (useradd's portable set; no '.', which sudoers.d would skip).
LOGIN_USER = re.compile(r"[a-z_][a-z0-9_-]{0,30}")
#: sudoers drop-ins of the login users made here, one per user.
SUDOERS_DIR = Path("/etc/sudoers.d")


def ensure_login_user(name: str, *, password: str | None = None) -> bool:
    """Make ``name`` a local account that can log in over SSH with a key and become root with sudo:
    passwordless sudo, or with ``password`` asked by sudo. Returns True when it was created. Root only;
    several test workers may ask at once, so the work is done under a lock."""
    if not LOGIN_USER.fullmatch(name):
        raise ValueError(f"login user {name!r}: expected a lower-case account name")
    if shutil.which("sudo") is None:
        raise RuntimeError("sudo is not installed (apt-get install sudo)")
    with open("/run/lock/drhost-demo-users.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        created = subprocess.run(["id", "-u", name], capture_output=True).returncode != 0
        if created:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True,
                           capture_output=True)
        if password is None:
            # "*": no password, but not locked ("!"): sshd without PAM refuses a locked account's key login.
            subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
            rule = f"{name} ALL=(ALL:ALL) NOPASSWD: ALL\n"
        else:
            subprocess.run(["chpasswd"], input=f"{name}:{password}".encode(), check=True, capture_output=True)
            rule = f"{name} ALL=(ALL:ALL) ALL\n"
        sudoers = SUDOERS_DIR / f"drhost-demo-{name}"
        if not sudoers.exists() or sudoers.read_text() != rule:
            staged = sudoers.with_name(f".{sudoers.name}.tmp")
            staged.write_text(rule)
            staged.chmod(0o440)
            subprocess.run(["visudo", "-c", "-q", "-f", str(staged)], check=True, capture_output=True)
            staged.replace(sudoers)
        return created


def remove_login_user(name: str) -> None:
    """Remove an account :func:`ensure_login_user` made: its sudoers drop-in, the account and its home (a
    test removes what it created; the demo leaves its login user for the next demo)."""
    if not LOGIN_USER.fullmatch(name):
        raise ValueError(f"login user {name!r}: expected a lower-case account name")
    with open("/run/lock/drhost-demo-users.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (SUDOERS_DIR / f"drhost-demo-{name}").unlink(missing_ok=True)
        if subprocess.run(["id", "-u", name], capture_output=True).returncode == 0:
            subprocess.run(["userdel", "--force", "--remove", name], check=True, capture_output=True)


def sshd_available() -> tuple[bool, str]:
    if not Path(SSHD).exists():
        return False, "OpenSSH server not installed (apt-get install openssh-server)"
    if os.geteuid() != 0:
        return False, "sshd test hosts need root (they log in as root on loopback)"
    return True, SSHD


@dataclass
class SshHost:
    """One simulated host: its sshd, its keys and its install root."""

    name: str
    directory: Path
    port: int
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None
    #: The only account that may log in (root login refused); None: root logs in, as on the classic demo.
    login_user: str | None = None
    #: The network namespace the server runs in (a host behind a bastion); None: this machine's.
    netns: str | None = None
    #: More ``sshd -o`` settings (``"Ciphers=aes256-ctr"``): a test's server that differs from the default.
    sshd_options: tuple[str, ...] = ()

    @property
    def host_key(self) -> Path:
        return self.directory / "host_key"

    @property
    def client_key(self) -> Path:
        return self.directory / "client_key"

    @property
    def authorized_keys(self) -> Path:
        """sshd reads a user's keys as that user: a login user's copy sits where it can read it."""
        if self.login_user is None:
            return self.directory / "authorized_keys"
        # Unique per host directory: hosts of parallel demos and tests share names and ports (each bastion
        # network's "bastion" listens on 2222), never directories.
        return LOGIN_KEYS_DIR / f"{self.name}-{self.port}-{_directory_tag(self.directory)}"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    @property
    def root(self) -> Path:
        """The product's install root on this host (a directory of this machine, reached over SSH)."""
        return self.directory / "root" / "opt" / "drproduct"

    def known_hosts_line(self) -> str:
        public = (self.directory / "host_key.pub").read_text().split()
        return f"[{self.host}]:{self.port} {public[0]} {public[1]}\n"

    def start(self) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)
        if self.login_user is not None:
            LOGIN_KEYS_DIR.mkdir(mode=0o755, exist_ok=True)
            self.authorized_keys.write_bytes((self.directory / "authorized_keys").read_bytes())
            self.authorized_keys.chmod(0o644)
        argv = [
            SSHD, "-D", "-e", "-f", "/dev/null",
            "-o", f"Port={self.port}", "-o", f"ListenAddress={self.host}", "-o", f"HostKey={self.host_key}",
            "-o", f"AuthorizedKeysFile={self.authorized_keys}", "-o", f"PidFile={self.directory}/pid",
            "-o", "StrictModes=no", "-o", "UsePAM=no",
            "-o", f"PermitRootLogin={'no' if self.login_user else 'yes'}",
            "-o", "Subsystem=sftp internal-sftp", "-o", "MaxStartups=100", "-o", "MaxSessions=100",
            "-o", "LogLevel=ERROR",
            # bash runs ~/.bashrc for a command from sshd only as a top-level shell (SHLVL below 2): the demo's
            # hosts are fresh hosts, not the operator's account, whose rc files (pyenv's init: about 100 ms of
            # CPU) would otherwise run before every command drhost sends.
            "-o", "SetEnv=SHLVL=1",
            *(word for option in self.sshd_options for word in ("-o", option)),
        ]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        log = open(self.directory / "sshd.log", "ab")  # noqa: SIM115 - kept open for the server's lifetime
        self.process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # An sshd that could not bind exits; the banner would then be another server's.
            if self._answers() and self.process.poll() is None:
                return
            time.sleep(0.05)
            if self.process.poll() is not None:
                break
        raise RuntimeError(f"sshd for {self.name} did not start: {(self.directory / 'sshd.log').read_text()}")

    def _answers(self) -> bool:
        """Whether an SSH banner comes from host:port, seen from the server's own network namespace."""
        if self.netns is None:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                    return sock.recv(4).startswith(b"SSH-")
            except OSError:
                return False
        check = ("import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=0.5)\n"
                 "sys.exit(0 if s.recv(4).startswith(b'SSH-') else 1)")
        return subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-I", "-S", "-c", check, self.host,
                               str(self.port)], capture_output=True, timeout=10).returncode == 0

    def session_pids(self) -> list[int]:
        """Per-connection sshd processes (children of the listener) — what a frozen-peer test stops."""
        if self.process is None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    def listener_pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid
        try:
            return int((self.directory / "pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop the server and its sessions (also one started by an earlier drhost, through its pid file)."""
        pid = self.listener_pid()
        if pid is None:
            return
        children = Path(f"/proc/{pid}/task/{pid}/children")
        sessions = [int(p) for p in children.read_text().split()] if children.exists() else []
        for pid_ in [*sessions, pid]:
            try:
                os.kill(pid_, signal.SIGCONT)
                os.killpg(pid_, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        self.process = None
        if self.login_user is not None:
            self.authorized_keys.unlink(missing_ok=True)


def _directory_tag(directory: Path) -> str:
    return hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:12]


def login_keys_under(state: Path) -> list[Path]:
    """The login users' key files of every demo host under a state directory: what a kept (or killed) demo
    leaves in ``LOGIN_KEYS_DIR`` once its servers are gone."""
    tags = {_directory_tag(directory) for pattern in ("demo/*/*/sshd", "demo/*/bastion-net/*")
            for directory in state.glob(pattern) if directory.is_dir()}
    return [path for path in LOGIN_KEYS_DIR.glob("*") if path.name.rsplit("-", 1)[-1] in tags]


def make_host(base: Path, name: str, port: int | None = None, *, login_user: str | None = None) -> SshHost:
    """Create keys and directories for host ``name`` under ``base`` (not started)."""
    host = SshHost(name, base / name, port or free_port(), login_user=login_user)
    create_keys(host)
    host.root.mkdir(parents=True)
    return host


def create_keys(host: SshHost) -> None:
    """Throwaway host and client keys, authorized_keys and a known_hosts line for ``host``."""
    host.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"drhost-{host.name}", "-f",
                        str(host.directory / key)], check=True)
    shutil.copy(host.directory / "client_key.pub", host.directory / "authorized_keys")
    host.known_hosts.write_text(host.known_hosts_line())
    host.known_hosts.chmod(0o600)


def start_hosts(base: Path, count: int, prefix: str = "host", *, login_user: str | None = None) -> list[SshHost]:
    hosts = [make_host(base, f"{prefix}{index + 1}", login_user=login_user) for index in range(count)]
    try:
        for host in hosts:
            host.start()
    except BaseException:
        for host in hosts:
            host.stop()
        raise
    return hosts


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (an sshd session is a monitor plus its privilege-separated child)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in (task / "children").read_text().split())
    return found


def signal_processes(pids: list[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each pid that still exists (freeze, thaw or kill a session tree in drills)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
