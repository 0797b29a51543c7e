"""Opening one SSH connection: our own tuned socket, host-key checking like OpenSSH, key/agent/password auth.

paramiko is used as a protocol library only: the socket is created here (TCP_NODELAY, TCP keepalive,
TCP_USER_TIMEOUT — see DESIGN.md §5), and the server's host key is checked against known_hosts here, so the
refusal messages name host, key type and SHA256 fingerprint the way OpenSSH does. A password is read from
an environment variable or a file at connect time, never stored, logged or put into an exception.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import paramiko

from ..errors import RefusedError
from ._base import TransportError

log = logging.getLogger(__name__)

HostKeyPolicy = Literal["strict", "accept-new"]

# TCP keepalive: first probe after 15 s idle, then every 5 s, dead after 4 unanswered probes; unacknowledged
# data fails the connection after 30 s (TCP_USER_TIMEOUT, ms). These catch a vanished peer at the TCP layer.
_KEEPIDLE_S, _KEEPINTVL_S, _KEEPCNT, _USER_TIMEOUT_MS = 15, 5, 4, 30_000

# A known_hosts "ssh-rsa" entry also covers the SHA-2 signature algorithms of the same key.
_RSA_ALGORITHMS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


@dataclass(frozen=True)
class SshTarget:
    """How to reach one target. Secrets are named (env var, file), never held."""

    name: str
    host: str
    port: int = 22
    user: str = "root"
    key_file: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    known_hosts: str | None = None
    host_key_policy: HostKeyPolicy = "strict"
    connect_timeout_s: float = 10.0
    banner_timeout_s: float = 15.0
    auth_timeout_s: float = 15.0

    @property
    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts) if self.known_hosts else Path.home() / ".ssh" / "known_hosts"

    @property
    def host_entry(self) -> str:
        """The known_hosts name of this target: ``host`` on port 22, ``[host]:port`` otherwise."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


class HostKeyError(RefusedError, TransportError):
    """The server's host key is unknown (and the policy is strict) or has changed: we will not talk to it."""

    def __init__(self, message: str) -> None:
        TransportError.__init__(self, message, category="auth")


class AuthError(RefusedError, TransportError):
    """The server accepted none of our credentials. The message lists what was tried, never a secret."""

    def __init__(self, message: str) -> None:
        TransportError.__init__(self, message, category="auth")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint (base64, no padding) of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _tuned_socket(target: SshTarget) -> socket.socket:
    try:
        sock = socket.create_connection((target.host, target.port), timeout=target.connect_timeout_s)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TransportError(f"cannot connect to {target.address}: {reason}", category="network") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", _KEEPIDLE_S), ("TCP_KEEPINTVL", _KEEPINTVL_S), ("TCP_KEEPCNT", _KEEPCNT),
                        ("TCP_USER_TIMEOUT", _USER_TIMEOUT_MS)):
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    return sock


def _known_types(known: Mapping[str, paramiko.PKey] | None) -> list[str]:
    types: list[str] = []
    for key_type in known or {}:
        types.extend(_RSA_ALGORITHMS if key_type == "ssh-rsa" else (key_type,))
    return types


def _load_known(target: SshTarget) -> paramiko.HostKeys:
    host_keys = paramiko.HostKeys()
    path = target.known_hosts_path
    if path.exists():
        try:
            host_keys.load(str(path))
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyError(f"cannot read known_hosts file {path}: {exc}") from None
    return host_keys


def _append_known(target: SshTarget, key: paramiko.PKey) -> None:
    path = target.known_hosts_path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = f"{target.host_entry} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size and not path.read_bytes().endswith(b"\n"):
            line = "\n" + line
        os.write(fd, line.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def _check_host_key(target: SshTarget, host_keys: paramiko.HostKeys, key: paramiko.PKey) -> None:
    known = host_keys.lookup(target.host_entry)
    key_type = key.get_name()
    if known is not None and key_type in known:
        if known[key_type] == key:
            return
        raise HostKeyError(
            "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
            "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
            "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
            f"The {key_type} host key of {target.name} ({target.host_entry}) is not the one in "
            f"{target.known_hosts_path}: someone may be intercepting the connection, or the host was "
            f"reinstalled.\n  known:   {fingerprint(known[key_type])}\n  offered: {fingerprint(key)}\n"
            "drhost refuses to connect. If the change is expected, remove the old entry "
            f"(ssh-keygen -R '{target.host_entry}' -f {target.known_hosts_path}) and verify the new key."
        )
    if known:
        raise HostKeyError(
            f"{target.name} ({target.host_entry}) offered a {key_type} host key {fingerprint(key)}, but "
            f"{target.known_hosts_path} only knows its {', '.join(sorted(known))} key(s): refusing to connect."
        )
    if target.host_key_policy == "accept-new":
        _append_known(target, key)
        log.warning("added host key of %s (%s %s) to %s", target.host_entry, key_type, fingerprint(key),
                    target.known_hosts_path)
        return
    raise HostKeyError(
        f"the authenticity of {target.name} ({target.host_entry}) can't be established: "
        f"{key_type} key fingerprint is {fingerprint(key)}, and it is not in {target.known_hosts_path}. "
        "Verify it and add it to known_hosts, or set host_key_policy = \"accept-new\"."
    )


def _read_password(target: SshTarget) -> tuple[str | None, str]:
    """(password, where it came from). The description is safe to show; the password is not."""
    if target.password_env:
        value = os.environ.get(target.password_env)
        if value is not None:
            return value, f"password from ${target.password_env}"
        return None, f"password env var ${target.password_env} (not set)"
    if target.password_file:
        try:
            return Path(target.password_file).read_text("utf-8").rstrip("\r\n"), \
                f"password from {target.password_file}"
        except OSError as exc:
            return None, f"password file {target.password_file} ({exc.strerror})"
    return None, ""


def _authenticate(target: SshTarget, transport: paramiko.Transport) -> None:
    tried: list[str] = []
    if target.key_file:
        try:
            key = paramiko.PKey.from_path(target.key_file)
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise AuthError(f"cannot load key file {target.key_file} for {target.address}: {exc}") from None
        try:
            transport.auth_publickey(target.user, key)
            return
        except paramiko.AuthenticationException:
            tried.append(f"key file {target.key_file} ({key.get_name()} {fingerprint(key)})")
    try:
        agent_keys = paramiko.Agent().get_keys()
    except paramiko.SSHException:
        agent_keys = ()
    for agent_key in agent_keys:
        try:
            transport.auth_publickey(target.user, agent_key)
            return
        except paramiko.AuthenticationException:
            continue
    if agent_keys:
        tried.append(f"{len(agent_keys)} agent key(s)")
    password, source = _read_password(target)
    if password is not None:
        try:
            transport.auth_password(target.user, password)
            return
        except paramiko.AuthenticationException:
            pass
        finally:
            del password
    if source:
        tried.append(source)
    raise AuthError(
        f"authentication as {target.address} ({target.name}) failed; tried: {', '.join(tried) or 'nothing'}"
    )


def connect(target: SshTarget) -> paramiko.Transport:
    """An authenticated transport to ``target``, or :class:`HostKeyError` / :class:`AuthError` /
    :class:`TransportError` (category ``network``)."""
    host_keys = _load_known(target)
    sock = _tuned_socket(target)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = target.banner_timeout_s
        transport.handshake_timeout = target.banner_timeout_s
        transport.auth_timeout = target.auth_timeout_s
        preferred = _known_types(host_keys.lookup(target.host_entry))
        if preferred:
            options = transport.get_security_options()
            available = list(options.key_types)
            options.key_types = [t for t in preferred if t in available] + \
                [t for t in available if t not in preferred]
        try:
            transport.start_client(timeout=target.banner_timeout_s)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"SSH handshake with {target.address} failed: {exc}", category="network") \
                from None
        # start_client returns, without an error, when its timeout passes before the key exchange is done (a
        # peer that accepts the connection and then says nothing): that is a network failure, not a bad key.
        if not transport.is_active() or transport.host_key is None:
            raise TransportError(f"SSH handshake with {target.address} did not complete within "
                                 f"{target.banner_timeout_s:g} s (the peer accepted the connection and then "
                                 f"said nothing)", category="network")
        _check_host_key(target, host_keys, transport.get_remote_server_key())
        try:
            _authenticate(target, transport)
        except paramiko.SSHException as exc:
            # Not an auth refusal: the connection broke during auth.
            raise TransportError(f"SSH authentication with {target.address} broke off: {exc}",
                                 category="network") from None
    except BaseException:
        transport.close()
        sock.close()
        raise
    return transport
