"""Opening one SSH connection: our own tuned socket, host-key checking like OpenSSH, key/agent/password auth.

paramiko is used as a protocol library only: the socket is created here (TCP_NODELAY, TCP keepalive,
TCP_USER_TIMEOUT — see DESIGN.md §5), and the server's host key is checked against known_hosts here, so the
refusal messages name host, key type and SHA256 fingerprint the way OpenSSH does. A password is read from
an environment variable or a file at connect time, never stored, logged or put into an exception.

paramiko reports one peer behaviour in different ways depending on which of its timers or threads sees it
first; every failure here is turned into one :class:`TransportError` per cause (silent or too slow: "did not
complete within N s"; closed: "the peer closed the connection ..."), whichever path won.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import paramiko
from paramiko.ssh_exception import IncompatiblePeer

from ..errors import RefusedError, phrase
from ._base import TransportError
from ._secrets import read_secret

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
    #: The jump hosts to go through, first to last (``proxy_jump``); each is a target of its own.
    jump: tuple[SshTarget, ...] = ()

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


class SilentPeer(TransportError):
    """The peer did not answer in time: a TCP connect that timed out, or a server that accepted the connection
    and then sent nothing (or stalled in the key exchange). Another attempt at once would cost the same wait
    again, so a reconnect loop gives up on it at the first, and the run's reachability budget takes over."""


class HostKeyError(RefusedError, TransportError):
    """The server's host key is unknown (and the policy is strict) or has changed: we will not talk to it."""

    def __init__(self, message: str) -> None:
        TransportError.__init__(self, message, category="auth")


class AuthError(RefusedError, TransportError):
    """The server accepted none of our credentials. The message lists what was tried, never a secret."""

    def __init__(self, message: str) -> None:
        TransportError.__init__(self, message, category="auth")


class AlgorithmsRefused(RefusedError, TransportError):
    """The server and drhost have no cipher (or MAC, key exchange, host key type) in common: no attempt will
    do better, so it is not retried; the message says what drhost offers."""

    def __init__(self, message: str) -> None:
        TransportError.__init__(self, message, category="auth")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint (base64, no padding) of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _closed_before_banner(target: SshTarget) -> TransportError:
    return TransportError.worded("SSH handshake with {address} failed: the peer closed the connection before "
                                 "sending an SSH banner (not an SSH server, or sshd turned the connection away: "
                                 "MaxStartups, tcp wrappers, a firewall reset)", init={"category": "network"},
                                 address=target.address)


def _tuned_socket(target: SshTarget) -> socket.socket:
    try:
        sock = socket.create_connection((target.host, target.port), timeout=target.connect_timeout_s)
    except (ConnectionResetError, ConnectionAbortedError):
        # The TCP handshake completed and the peer reset at once; connect() reports that only when the reset
        # arrives before this thread runs again (a loaded machine), otherwise the banner exchange does. Same
        # cause, same message, whichever call sees it.
        raise _closed_before_banner(target) from None
    except TimeoutError:
        raise SilentPeer.worded("cannot connect to {address}: no answer within {seconds} s (a black hole, a "
                                "firewall dropping packets, or the host is down)", init={"category": "network"},
                                address=target.address, seconds=f"{target.connect_timeout_s:g}") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TransportError.worded("cannot connect to {address}: {reason}", init={"category": "network"},
                                    address=target.address, reason=reason) from None
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
            raise HostKeyError.worded("cannot read known_hosts file {path}: {reason}", path=path, reason=str(exc)) \
                from None
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
        # OpenSSH's banner stays as OpenSSH prints it, in every language: operators know it on sight.
        raise HostKeyError.worded(
            "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
            "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
            "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
            "The {key_type} host key of {target} ({entry}) is not the one in {known_hosts}: someone may be "
            "intercepting the connection, or the host was reinstalled.\n  known:   {known}\n  offered: {offered}\n"
            "drhost refuses to connect. If the change is expected, remove the old entry "
            "(ssh-keygen -R '{entry}' -f {known_hosts}) and verify the new key.",
            key_type=key_type, target=target.name, entry=target.host_entry, known_hosts=target.known_hosts_path,
            known=fingerprint(known[key_type]), offered=fingerprint(key))
    if known:
        raise HostKeyError.worded(
            "{target} ({entry}) offered a {key_type} host key {offered}, but {known_hosts} only knows its {types} "
            "key(s): refusing to connect.", target=target.name, entry=target.host_entry, key_type=key_type,
            offered=fingerprint(key), known_hosts=target.known_hosts_path, types=", ".join(sorted(known)))
    if target.host_key_policy == "accept-new":
        _append_known(target, key)
        log.warning("added host key of %s (%s %s) to %s", target.host_entry, key_type, fingerprint(key),
                    target.known_hosts_path)
        return
    raise HostKeyError.worded(
        "the authenticity of {target} ({entry}) can't be established: {key_type} key fingerprint is {offered}, "
        "and it is not in {known_hosts}. Verify it and add it to known_hosts, or set host_key_policy = "
        "\"accept-new\".", target=target.name, entry=target.host_entry, key_type=key_type, offered=fingerprint(key),
        known_hosts=target.known_hosts_path)


def _read_password(target: SshTarget) -> tuple[str | None, str]:
    """(password, where it came from). The description is safe to show; the password is not."""
    value, where = read_secret(target.password_env, target.password_file)
    if value is not None:
        return value, f"password from {where}"
    if target.password_env:
        return None, f"password env var {where}"
    return None, f"password file {where}" if target.password_file else ""


def _describe(exc: BaseException) -> str:
    """An exception as text that is never empty: paramiko raises ``EOFError()`` and ``socket.timeout()``
    without a message."""
    return str(exc) or type(exc).__name__


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and what it was raised from or during: paramiko wraps the socket's error of a banner read in an
    ``SSHException`` raised inside the ``except`` block, so only ``__context__`` keeps the real cause."""
    found: list[BaseException] = []
    while exc is not None and exc not in found:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


def _peer_closed(exc: BaseException) -> bool:
    # A peer that closes shows up as EOF on a read, a reset or a broken pipe on a write, whichever the kernel
    # delivers first (a close with our banner still unread in its buffer is a reset): one condition.
    return isinstance(exc, (EOFError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError))


def _handshake_failure(target: SshTarget, transport: paramiko.Transport, exc: BaseException | None) -> \
        TransportError:
    """One :class:`TransportError` per cause for a key exchange that did not finish, whichever of paramiko's
    paths reported it.

    A peer that accepts and then stays silent (or too slow) is reported by ``start_client`` returning without
    an error at its timeout, *or* by the transport thread: ``SSHException("Error reading SSH protocol
    banner")`` from ``socket.timeout`` before the banner, ``EOFError`` from the handshake timer after it. Both
    timers have the same bound, so which one fires first is chance. A peer that closes is EOF, a reset or a
    broken pipe, wrapped or not, again by chance. ``exc`` is what ``start_client`` raised, or None when it
    returned with the exchange unfinished.
    """
    if exc is None and not transport.is_active():
        # The thread died between start_client's last look and ours: its saved exception is the cause.
        exc = transport.get_exception()
    chain = _chain(exc)
    banner = transport.remote_version[:100]  # "" until a whole banner line arrived; the peer chose its length
    log.debug("SSH handshake with %s ended: %s", target.address,
              " <- ".join(f"{type(e).__name__}({e})" for e in chain) or "start_client timed out")
    silent = (exc is None and transport.is_active()) or transport.packetizer.handshake_timed_out() or \
        any(isinstance(e, TimeoutError) for e in chain)
    if silent:
        what = (phrase("sent its banner {banner} and then stalled in the key exchange", banner=banner) if banner
                else phrase("accepted the connection and then sent no SSH banner"))
        return SilentPeer.worded("SSH handshake with {address} did not complete within {seconds} s (the peer "
                                 "{what}: it is silent or too slow, e.g. a black hole, a firewall dropping packets "
                                 "or an overloaded server)", init={"category": "network"}, address=target.address,
                                 seconds=f"{target.banner_timeout_s:g}", what=what)
    # "Negotiation failed." is start_client's word for a thread that ended without an error of its own: the
    # peer sent SSH_MSG_DISCONNECT, which is the peer closing the connection.
    disconnected = exc is None or (isinstance(exc, paramiko.SSHException) and len(chain) == 1
                                   and str(exc) == "Negotiation failed.")
    if disconnected or any(_peer_closed(e) for e in chain):
        if banner:
            return TransportError.worded("SSH handshake with {address} failed: the peer ({banner}) closed the "
                                         "connection during the key exchange", init={"category": "network"},
                                         address=target.address, banner=banner)
        return _closed_before_banner(target)
    assert exc is not None
    # paramiko: "Incompatible ssh server (no acceptable ciphers)" (or macs, kex algorithms, host key).
    if isinstance(exc, IncompatiblePeer) and "cipher" in str(exc):
        return AlgorithmsRefused.worded("SSH handshake with {address} failed: the server offers none of the ciphers "
                                        "drhost uses ({ciphers}); enable one of them in its sshd_config",
                                        address=target.address, ciphers=", ".join(CIPHERS))
    if isinstance(exc, IncompatiblePeer):
        return AlgorithmsRefused.worded("SSH handshake with {address} failed: {reason}", address=target.address,
                                        reason=_describe(exc))
    return TransportError.worded("SSH handshake with {address} failed: {reason}", init={"category": "network"},
                                 address=target.address, reason=_describe(exc))


def _handshake(target: SshTarget, transport: paramiko.Transport) -> paramiko.PKey:
    """Run the key exchange; the server's host key, or the one :class:`TransportError` of its cause."""
    try:
        transport.start_client(timeout=target.banner_timeout_s)
    except Exception as exc:  # whatever the transport thread saved is re-raised here, not only SSHException
        raise _handshake_failure(target, transport, exc) from None
    try:
        # start_client also returns, without an error, when its timeout passes before the key exchange is done;
        # this raises ("No existing session") until it is done, and when the peer closed right after it.
        return transport.get_remote_server_key()
    except paramiko.SSHException:
        raise _handshake_failure(target, transport, None) from None


def _auth_attempt(target: SshTarget, transport: paramiko.Transport, tried: list[str],
                  attempt: Callable[[], object]) -> bool:
    """True when the server accepted, False when it refused; a peer that closes or stops answering is a
    :class:`TransportError` (category ``network``), whichever of paramiko's paths reports it.

    paramiko reports a peer that closes during auth as ``SSHException("No existing session")`` when the close
    was seen before the request, as ``AuthenticationException("... transport shut down or saw EOF")`` when it
    was seen during the wait, or re-raises the transport thread's socket error; a silent peer as
    ``AuthenticationException("Authentication timeout.")``. Taken as refusals, the first would be a network
    failure and the others an :class:`AuthError` that is never retried, by chance.
    """
    started = time.monotonic()
    try:
        attempt()
        return True
    except paramiko.AuthenticationException as exc:
        # The refusal of a live peer. The elapsed-time test does not depend on paramiko's wording: its wait
        # raises the timeout only once auth_timeout has passed.
        timed_out = time.monotonic() - started >= target.auth_timeout_s or str(exc) == "Authentication timeout."
        if transport.is_active() and not timed_out:
            return False
        problem: BaseException = exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        problem = exc
    raise _auth_failure(target, transport, problem, tried)


def _auth_failure(target: SshTarget, transport: paramiko.Transport, problem: BaseException, tried: list[str]) -> \
        TransportError:
    so_far = phrase(" (tried so far: {tried})", tried=", ".join(tried)) if tried else ""
    log.debug("SSH authentication with %s ended: %s: %s", target.address, type(problem).__name__, problem)
    if not transport.is_active():
        return TransportError.worded(
            "SSH authentication with {address} broke off: the peer closed the connection during "
            "authentication{so_far}; sshd does this after MaxAuthTries failed attempts or when LoginGraceTime "
            "ran out", init={"category": "network"}, address=target.address, so_far=so_far)
    if isinstance(problem, paramiko.AuthenticationException):
        return TransportError.worded(
            "SSH authentication with {address} did not complete within {seconds} s (the peer stopped answering "
            "during authentication{so_far})", init={"category": "network"}, address=target.address,
            seconds=f"{target.auth_timeout_s:g}", so_far=so_far)
    return TransportError.worded("SSH authentication with {address} broke off: {reason}",
                                 init={"category": "network"}, address=target.address, reason=_describe(problem))


def _authenticate(target: SshTarget, transport: paramiko.Transport) -> None:
    tried: list[str] = []
    if target.key_file:
        try:
            key = paramiko.PKey.from_path(target.key_file)
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise AuthError.worded("cannot load key file {path} for {address}: {reason}", path=target.key_file,
                                   address=target.address, reason=str(exc)) from None
        if _auth_attempt(target, transport, tried, functools.partial(transport.auth_publickey, target.user, key)):
            return
        tried.append(f"key file {target.key_file} ({key.get_name()} {fingerprint(key)})")
    try:
        agent_keys = paramiko.Agent().get_keys()
    except paramiko.SSHException:
        agent_keys = ()
    for number, agent_key in enumerate(agent_keys):
        so_far = [*tried, f"{number} agent key(s)"] if number else tried
        if _auth_attempt(target, transport, so_far,
                         functools.partial(transport.auth_publickey, target.user, agent_key)):
            return
    if agent_keys:
        tried.append(f"{len(agent_keys)} agent key(s)")
    password, source = _read_password(target)
    if password is not None:
        try:
            if _auth_attempt(target, transport, tried,
                             functools.partial(transport.auth_password, target.user, password)):
                return
        finally:
            del password
    if source:
        tried.append(source)
    raise AuthError.worded("authentication as {address} ({target}) failed; tried: {tried}", address=target.address,
                           target=target.name, tried=", ".join(tried) or "nothing")


@dataclass
class Connection:
    """An authenticated transport to a target and the jump-host transports it travels through (outermost
    first). Closing it closes the whole chain."""

    transport: paramiko.Transport
    hops: tuple[paramiko.Transport, ...] = ()

    def close(self) -> None:
        for transport in (self.transport, *reversed(self.hops)):
            close_transport(transport)


#: How long paramiko's reader thread of an established connection waits in ``recv`` between looks at whether
#: its transport was closed. paramiko's own 0.1 s wakes every idle connection ten times a second: measured
#: 109-133 us of controller CPU a second per connection against 15 us at 10 s (bench/idle_connections.py, 100
#: idle loopback connections), a third of a core at 1,000 targets with three connections each. The tick bounds
#: nothing an operator waits for: :func:`close_transport` wakes the reader at once, dead peers are the heartbeat's and
#: TCP_USER_TIMEOUT's to find, and the key exchange and login still run on paramiko's 0.1 s.
IDLE_TICK_S = 10.0


def close_transport(transport: paramiko.Transport) -> None:
    """Close ``transport`` and end its reader thread now.

    A socket closed under a thread blocked in ``recv`` on it does not wake that thread (Linux): shutting it
    down first does, so the reader sees end of file instead of sleeping out its tick. Never raises."""
    sock = transport.sock
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        transport.close()


def connect(target: SshTarget) -> paramiko.Transport:
    """An authenticated transport straight to ``target``, or :class:`HostKeyError` / :class:`AuthError` /
    :class:`TransportError` (category ``network``). A target behind jump hosts needs :func:`open_connection`."""
    if target.jump:
        raise ValueError(f"{target.name} is behind jump hosts: use open_connection")
    return _establish(target, _tuned_socket(target))


def _forwarded(through: paramiko.Transport, via: SshTarget, target: SshTarget) -> paramiko.Channel:
    """A ``direct-tcpip`` channel from jump host ``via`` to ``target``: the next hop's socket."""
    try:
        return through.open_channel("direct-tcpip", (target.host, target.port), ("127.0.0.1", 0),
                                    timeout=target.connect_timeout_s)
    except paramiko.ChannelException as exc:
        # The jump host tried and failed (refused, unreachable) or is not allowed to forward (code 1).
        reason = exc.text or f"code {exc.code}"
        raise TransportError.worded("cannot connect to {address} through jump host {via}: {reason}",
                                    init={"category": "network"}, address=target.address, via=via.address,
                                    reason=reason) from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise TransportError.worded("cannot connect to {address} through jump host {via}: {reason}",
                                    init={"category": "network"}, address=target.address, via=via.address,
                                    reason=str(exc) or type(exc).__name__) from None


def open_connection(target: SshTarget) -> Connection:
    """An authenticated transport to ``target`` through its jump hosts (if any), each of them checked and
    authenticated like a target; a failure names the hop it happened at."""
    hops: list[paramiko.Transport] = []
    chain = (*target.jump, target)
    try:
        for number, hop in enumerate(chain):
            sock: socket.socket | paramiko.Channel = _tuned_socket(hop) if number == 0 else \
                _forwarded(hops[-1], chain[number - 1], hop)
            hops.append(_establish(hop, sock))
    except BaseException:
        for transport in reversed(hops):
            close_transport(transport)
        raise
    return Connection(hops[-1], tuple(hops[:-1]))


#: The ciphers drhost offers, best first. AES-GCM first: an AEAD needs no separate MAC, which paramiko computes
#: in Python for every packet, so a GCM connection costs both ends less CPU per byte (measured: a verified upload
#: of 256 MiB, 215 -> 298 MB/s, bench/sftp_upload.py). Every OpenSSH since 6.2 offers it; CTR stays for servers
#: that do not. No CBC and no 3DES, which OpenSSH itself no longer offers.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr")


def _establish(target: SshTarget, sock: socket.socket | paramiko.Channel) -> paramiko.Transport:
    """Key exchange, host key check and authentication over ``sock`` (a socket, or a channel of a jump host)."""
    host_keys = _load_known(target)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = target.banner_timeout_s
        transport.handshake_timeout = target.banner_timeout_s
        transport.auth_timeout = target.auth_timeout_s
        options = transport.get_security_options()
        options.ciphers = tuple(cipher for cipher in CIPHERS if cipher in options.ciphers)
        preferred = _known_types(host_keys.lookup(target.host_entry))
        if preferred:
            available = list(options.key_types)
            options.key_types = [t for t in preferred if t in available] + \
                [t for t in available if t not in preferred]
        server_key = _handshake(target, transport)
        _check_host_key(target, host_keys, server_key)
        _authenticate(target, transport)
        sock.settimeout(IDLE_TICK_S)
    except BaseException:
        close_transport(transport)
        sock.close()
        raise
    return transport
