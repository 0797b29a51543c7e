"""Privilege escalation on an SSH target (``become = sudo``): every remote effect runs as ``become_user``.

The login user is who sshd lets in; the work (commands, detached jobs, their polls and stops, file reads and
writes, locks) runs as the become user through ``sudo``. Each remote command line is wrapped so that the
shell sudo starts first prints a marker on stdout and on stderr, and only then runs the command:

    exec sudo -H -S -p '<prompt>' -u USER -- /bin/sh -c 'echo MARK; echo MARK >&2; <command>'

Nothing is sent on the channel until the markers arrive: when sudo prompts (on stderr, with our own prompt
text), the password is sent once on stdin — never on a command line, never logged. A second prompt means the
password was refused, which is a clear error and never retried. What sudo printed before the markers (its
lecture, "Sorry, try again") is not the command's output and is dropped.
"""

from __future__ import annotations

import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import RefusedError, phrase
from ._base import TransportError
from ._secrets import read_secret

__all__ = ["Become", "BecomeError", "BecomeHandshake", "sftp_server_script"]

#: Where OpenSSH's sftp-server lives on the distributions drhost targets (Debian, RHEL, SUSE, Arch, Alpine).
_SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/lib/ssh/sftp-server",
                 "/usr/libexec/sftp-server", "/usr/lib/sftp-server")
_NOT_FOUND = 127


class BecomeError(RefusedError, TransportError):
    """sudo on the target would not run our command as the become user: no sudo, not allowed, no password
    configured, or the password refused. Never retried: the next try would fail the same way."""

    def __init__(self, message: str) -> None:
        TransportError.__init__(self, message, category="auth")


@dataclass(frozen=True)
class Become:
    """How to become ``user`` on a target. The password is named (env var, file), never held."""

    user: str = "root"
    method: str = "sudo"
    password_env: str | None = None
    password_file: str | None = None

    def password(self) -> tuple[str | None, str]:
        """(password, where it came from). The description is safe to show; the password is not."""
        value, where = read_secret(self.password_env, self.password_file)
        if value is not None:
            return value, phrase("the become password from {where}", where=where)
        if self.password_env:
            return None, phrase("become_password_env {where}", where=where)
        if self.password_file:
            return None, phrase("become_password_file {where}", where=where)
        return None, phrase("no become_password_env or become_password_file")

    @property
    def home(self) -> str:
        return "/root" if self.user == "root" else f"/home/{self.user}"


class _Channel(Protocol):
    """The part of a paramiko channel the handshake uses."""

    closed: bool
    eof_received: int  # paramiko keeps it as 0 or 1

    def recv_ready(self) -> bool: ...
    def recv(self, nbytes: int) -> bytes: ...
    def recv_stderr_ready(self) -> bool: ...
    def recv_stderr(self, nbytes: int) -> bytes: ...
    def sendall(self, s: bytes) -> None: ...
    def exit_status_ready(self) -> bool: ...
    def recv_exit_status(self) -> int: ...


@dataclass
class BecomeHandshake:
    """One wrapped command: its command line, then :meth:`wait` until sudo has let it run."""

    become: Become
    target: str  # the target's name, for messages
    token: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def prompt(self) -> str:
        return f"[drhost sudo {self.token}] password: "

    @property
    def marker(self) -> bytes:
        return f"DRHOST-BECOME-{self.token}\n".encode("ascii")

    def command(self, command: str) -> str:
        """``command`` (a line for the login shell) run by ``/bin/sh`` as the become user, after the markers."""
        mark = f"DRHOST-BECOME-{self.token}"
        inner = f"echo {mark}; echo {mark} >&2; {command}"
        return (f"exec sudo -H -S -p {shlex.quote(self.prompt)} -u {shlex.quote(self.become.user)} -- "
                f"/bin/sh -c {shlex.quote(inner)}")

    def wait(self, channel: _Channel, deadline: float, alive: Callable[[], bool]) -> tuple[bytes, bytes]:
        """Answer sudo's prompt and wait for both markers. Returns what came after them on stdout and stderr
        (the command's own first bytes). ``alive()`` says whether the connection still stands; a lost or
        overdue one raises ``ConnectionError`` (the caller's reconnect path)."""
        out, err = bytearray(), bytearray()
        answered = False
        while True:
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            out_at, err_at = out.find(self.marker), err.find(self.marker)
            if out_at >= 0 and err_at >= 0:
                return bytes(out[out_at + len(self.marker):]), bytes(err[err_at + len(self.marker):])
            prompts = err.count(self.prompt.encode())
            if prompts > 1:  # asked again after our answer: "Sorry, try again."
                raise BecomeError.worded("{target}: sudo refused {source} for becoming {user} (wrong password?); "
                                         "not retried", target=self.target, source=self.become.password()[1],
                                         user=self.become.user)
            if prompts and not answered:
                password, source = self.become.password()
                if password is None:
                    raise BecomeError.worded(
                        "{target}: sudo asks for a password to become {user}, and there is none: {source}. Set "
                        "become_password_env or become_password_file, or allow the login user NOPASSWD sudo",
                        target=self.target, user=self.become.user, source=source)
                channel.sendall(password.encode("utf-8") + b"\n")
                answered = True
            if channel.exit_status_ready() and (channel.eof_received or channel.closed):
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                raise self._refusal(channel.recv_exit_status(), bytes(err))
            if channel.closed or not alive():
                raise ConnectionError("connection lost while sudo was starting the command")
            if time.monotonic() > deadline:
                # Like any unanswered short command: the peer is frozen or gone.
                raise ConnectionError("no answer while sudo was starting the command")
            time.sleep(0.002)

    def _refusal(self, status: int, err: bytes) -> BecomeError:
        said = err.replace(self.prompt.encode(), b"").decode("utf-8", "replace").strip().splitlines()
        reason = "; ".join(line.strip() for line in said if line.strip())[-500:] or phrase("no message")
        if status == _NOT_FOUND and "sudo" in reason:
            return BecomeError.worded("{target}: become = sudo, but sudo is not installed on the target ({reason})",
                                      target=self.target, reason=reason)
        return BecomeError.worded("{target}: sudo would not run the command as {user} (exit {status}): {reason}",
                                  target=self.target, user=self.become.user, status=status, reason=reason)


def sftp_server_script() -> str:
    """A ``/bin/sh`` line that runs the target's OpenSSH sftp-server (found where distributions put it)."""
    tries = " ".join(shlex.quote(path) for path in _SFTP_SERVERS)
    return (f"for s in {tries}; do [ -x \"$s\" ] && exec \"$s\"; done; "
            "echo 'no sftp-server found on the target' >&2; exit 127")
