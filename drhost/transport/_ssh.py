"""The ssh transport: a :class:`TargetSession` on one target over one paramiko connection.

Commands run detached on the target (see :mod:`._remote_jobs`): a dropped connection neither kills them nor
makes us run them twice — after a reconnect the job is found again by its directory and polled. On a deadline
or cancel the job's process group is stopped (TERM, grace, KILL) and confirmed gone before
:class:`CommandStopped` is raised. Files move over one reused SFTP channel; writes are atomic (temp name in
the same directory, then ``posix_rename``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import posixpath
import random
import secrets
import shlex
import stat
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import paramiko

from drhost_hookspecs import RunResult

from ..errors import WordedError, message_phrase, phrase
from ..events import NetworkEventName
from . import _remote_jobs as jobs
from ._base import CommandStopped, ManualReconnect, ProgressCallback, StillRunning, TargetSession, TransportError
from ._become import Become, BecomeHandshake, sftp_server_script
from ._heartbeat import KEEPALIVE_REQUEST, DeadPeer, Heartbeat, HeartbeatSettings, configure_socket, reconnect_delays
from ._helper import DEFAULT_PYTHON, HelperLost, HelperUnavailable, RemoteHelper
from ._sftp_upload import sha256_command, upload_resumable
from ._ssh_connect import AuthError, Connection, HostKeyError, SilentPeer, SshTarget, close_transport, open_connection

log = logging.getLogger(__name__)

T = TypeVar("T")

#: ``on_network(event, message, data)``: what the session saw of the network, for the run's journal and console.
NetworkListener = Callable[[NetworkEventName, str, dict[str, Any]], None]

_CONNECTION_ERRORS = (paramiko.SSHException, EOFError, ConnectionError)
_EXEC_ERRORS = (paramiko.SSHException, EOFError, OSError)
_SHORT_TIMEOUT_S = 30.0
#: The least time left to a bounded call for one more network try; below it the call gives up.
_MIN_TRY_S = 0.1


def _cause(exc: BaseException | None) -> str:
    """An exception's text, never empty: paramiko raises ``EOFError()`` and ``socket.timeout()`` bare; drhost's
    own (worded) error as a phrase, so that a message quoting it is said in the operator's language."""
    if exc is None:
        return phrase("unknown cause")
    if isinstance(exc, WordedError):
        return message_phrase(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f}"


def _staging_path(sftp: paramiko.SFTPClient, run_id: str, final: str) -> str:
    """Where the login user stages an upload for ``final``: a directory of its own home, 0700, refused
    when it is not a real directory of the login user's (a planted symlink would redirect the upload)."""
    home = str(sftp.normalize("."))
    directory = f"{home.rstrip('/')}/.drhost-staging"
    for path in (directory, f"{directory}/{run_id}"):
        with contextlib.suppress(OSError):
            sftp.mkdir(path, 0o700)
        attrs = sftp.lstat(path)
        if attrs.st_mode is None or not stat.S_ISDIR(attrs.st_mode):
            raise TransportError.worded("staging directory {path} on the target is not a directory",
                                        init={"category": "file"}, path=path)
        if attrs.st_mode & 0o077:
            sftp.chmod(path, 0o700)
    name = hashlib.sha256(final.encode()).hexdigest()[:12]
    return f"{directory}/{run_id}/{name}-{posixpath.basename(final) or 'file'}"


class _ConnectionLost(Exception):
    """Internal: the transport died during a call; reconnect and retry the (idempotent) call."""


class SshSession(TargetSession):
    """One target reached over SSH. ``work_dir`` is a directory on the target for drhost's own files;
    command jobs live in ``{work_dir}/jobs/{run_id}/``."""

    def __init__(
        self,
        name: str,
        target: SshTarget,
        *,
        run_id: str,
        work_dir: str,
        kill_grace_s: float = 3.0,
        poll_interval_s: float = 0.2,
        reconnects: int = 3,
        heartbeat: HeartbeatSettings | None = None,
        transfer_heartbeat: HeartbeatSettings | None = None,
        on_network: NetworkListener | None = None,
        become: Become | None = None,
        manual_reconnect: bool = False,
        remote_helper: str | None = DEFAULT_PYTHON,
    ) -> None:
        self.name = name
        self.target = target
        #: With ``become``, every command and file operation runs as ``become.user`` through sudo.
        self.become = become
        self.run_id = run_id
        self.work_dir = work_dir.rstrip("/") or "/"
        self.job_dir = f"{self.work_dir}/jobs/{run_id}"
        self._grace = kill_grace_s
        self._poll_interval = poll_interval_s
        self._reconnects = reconnects
        self._lock = threading.RLock()
        self._transport: paramiko.Transport | None = None
        # The jump hosts' transports of the current connection and their heartbeats (outermost first).
        self._hops: Connection | None = None
        self._hop_heartbeats: list[Heartbeat] = []
        self._sftp: paramiko.SFTPClient | None = None
        self._closed = False
        # One heartbeat per connection; by default the [ssh.plugin_exec] defaults.
        self._heartbeat_settings = heartbeat or HeartbeatSettings.from_config({}, "plugin_exec")
        self._heartbeat: Heartbeat | None = None
        # Uploads get a connection of their own, with the [ssh.transfer] heartbeat and reconnect count.
        self._transfer_settings = transfer_heartbeat or HeartbeatSettings.from_config({}, "transfer")
        self.dead_peer: DeadPeer | None = None  # evidence from the last heartbeat that declared the peer dead
        self.connections = 0  # how many times a connection was opened (1 + reconnects)
        self._on_network = on_network
        # Manual reconnect (the status-check connection): once lost, the connection stays down until the operator
        # says so (reconnect_now); the cause it was lost with, while it waits.
        self._manual = manual_reconnect
        self._lost_waiting: str | None = None
        self._operator_said = False
        # The remote helper (drhost/transport/_helper.py): the interpreter that runs it (None: never start one),
        # the one of the current connection, and why it could not be started on this target (then every
        # command is an exec request of its own, as without a helper).
        self._helper_python = remote_helper
        self._helper: RemoteHelper | None = None
        self.helper_unavailable: str | None = None
        # A bounded call (the reachability probe) sets its deadline here: every connect, channel and retry
        # of that call shares it, so the call as a whole ends within its bound (per thread: calls overlap).
        self._bound = threading.local()

    def _notify(self, event: NetworkEventName, message: str, **data: Any) -> None:
        """Tell the run what the network did; a listener that fails must never break the connection."""
        if self._on_network is not None:
            data.setdefault("connection", self._heartbeat_settings.connection_type)
            with contextlib.suppress(Exception):
                self._on_network(event, message, data)

    def _deadline(self) -> float | None:
        deadline: float | None = getattr(self._bound, "deadline", None)
        return deadline

    def _left(self) -> float | None:
        """Seconds left to the current bounded call, or None when the call is not bounded."""
        deadline = self._deadline()
        return None if deadline is None else deadline - time.monotonic()

    def _bounded_target(self) -> SshTarget:
        """The target with every connect timer (TCP, banner and key exchange, each auth try) cut to the time
        left: each alone respects its bound, but in sequence they add up (a 15 s probe took 31 s)."""
        left = self._left()
        if left is None:
            return self.target
        left = max(_MIN_TRY_S, left)

        def bounded(target: SshTarget) -> SshTarget:
            return dataclasses.replace(target, connect_timeout_s=min(target.connect_timeout_s, left),
                                       banner_timeout_s=min(target.banner_timeout_s, left),
                                       auth_timeout_s=min(target.auth_timeout_s, left))

        return dataclasses.replace(bounded(self.target), jump=tuple(bounded(hop) for hop in self.target.jump))

    # -- connection -------------------------------------------------------------------------------------

    def _on_connected(self, connection: Connection) -> None:
        """Called once per new connection: starts its heartbeat (when configured), and one per jump host, any
        of which closes the whole chain when its peer stops answering, so the next remote call reconnects
        (the whole chain) and re-attaches."""
        settings = self._heartbeat_settings
        outer = connection.hops[0] if connection.hops else connection.transport
        configure_socket(outer.sock, settings)  # type: ignore[arg-type]  # the one real TCP socket

        def on_dead(where: str, evidence: DeadPeer) -> None:
            self.dead_peer = evidence
            log.warning("%s: %s declared dead: %s", self.name, where, evidence.describe())
            self._notify("network.peer_dead", phrase("{where} declared dead: {evidence}", where=where,
                                                     evidence=evidence.describe()),
                         connection=settings.connection_type, evidence=evidence.describe())
            connection.close()

        self._heartbeat = Heartbeat(connection.transport, settings, functools.partial(on_dead, phrase("peer")))
        self._hops = connection if connection.hops else None
        self._hop_heartbeats = [
            Heartbeat(hop, settings, functools.partial(on_dead, phrase("jump host {address}", address=jump.address)))
            for hop, jump in zip(connection.hops, self.target.jump, strict=True)]

    def _connect_once(self) -> paramiko.Transport:
        connection = open_connection(self._bounded_target())
        self.connections += 1
        self._on_connected(connection)
        return connection.transport

    def _ensure(self) -> paramiko.Transport:
        left = self._left()
        if not self._lock.acquire(timeout=-1 if left is None else max(0.0, left)):
            raise TransportError.worded("{target}: no connection within the bound (another call holds the session "
                                        "while it connects)", init={"category": "network"}, target=self.name)
        try:
            if self._closed:
                raise TransportError.worded("session to {target} is closed", target=self.name)
            if self._transport is not None and self._transport.is_active():
                return self._transport
            first = self._transport is None and self.connections == 0
            if self._transport is not None:
                # Lost while no call was waiting on it (idle, or between calls): said here, before the reconnect.
                cause = _cause(self._transport.get_exception()) if self._transport.get_exception() else \
                    (phrase("peer declared dead: {evidence}", evidence=self.dead_peer.describe()) if self.dead_peer
                     else phrase("connection closed"))
                log.warning("%s: connection lost while idle: %s", self.name, cause)
                self._notify("network.connection_lost", phrase("connection lost: {cause}", cause=cause),
                             during="idle", cause=str(cause))
                if self._manual:
                    self._wait_for_operator(cause)
            self._drop()
            if self._lost_waiting is not None and not self._operator_said:
                raise self._manual_error()
            attempts = 1 if first else self._reconnects
            last: TransportError | None = None
            for attempt in range(max(1, attempts)):
                if attempt:
                    delay = min(0.25 * 2 ** (attempt - 1), 10.0) * random.uniform(0.5, 1.5)
                    left = self._left()
                    if left is not None and left < delay + _MIN_TRY_S:
                        break  # no time for another try within the call's bound: the last error stands
                    time.sleep(delay)
                try:
                    self._transport = self._connect_once()
                    self._lost_waiting, self._operator_said = None, False
                    if not first:
                        log.info("%s: reconnected to %s", self.name, self.target.address)
                        self._notify("network.reconnected",
                                     phrase("reconnected to {address} (connection {number})",
                                            address=self.target.address, number=self.connections),
                                     attempt=attempt + 1, connections=self.connections)
                    return self._transport
                except (HostKeyError, AuthError):
                    raise
                except SilentPeer as exc:
                    # One wait for a silent peer, not one per reconnect: the next would wait as long again.
                    log.warning("%s: connect attempt %d: the peer is silent; no further attempt: %s", self.name,
                                attempt + 1, exc)
                    raise
                except TransportError as exc:
                    last = exc
                    log.warning("%s: connect attempt %d failed: %s", self.name, attempt + 1, exc)
            assert last is not None
            raise last
        finally:
            self._lock.release()

    def _wait_for_operator(self, cause: str) -> None:
        if self._lost_waiting is None:
            self._lost_waiting, self._operator_said = cause, False
            log.warning("%s: %s connection lost (%s); it reconnects only on the operator's word", self.name,
                        self._heartbeat_settings.connection_type, cause)

    def _manual_error(self) -> ManualReconnect:
        kind = self._heartbeat_settings.connection_type
        cause = self._lost_waiting or phrase("connection lost")
        return ManualReconnect.worded("{target}: the {kind} connection was lost ({cause}); it reconnects only on "
                                      "the operator's word", init={"connection": kind, "cause": str(cause)},
                                      target=self.name, kind=kind, cause=cause)

    def waiting_for_operator(self) -> str | None:
        return self._lost_waiting

    @property
    def heartbeat_settings(self) -> HeartbeatSettings:
        """The heartbeat of this session's connection: the ``[ssh:TYPE]`` row it was opened for."""
        return self._heartbeat_settings

    def reconnect_now(self) -> None:
        with self._lock:
            self._operator_said = True
        self._ensure()

    def _drop(self) -> None:
        """Forget the current connection (it is dead or being replaced), with its jump hosts."""
        sftp, transport, heartbeat, hops = self._sftp, self._transport, self._heartbeat, self._hops
        self._sftp = self._transport = self._heartbeat = self._hops = None
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.close()
        hop_heartbeats, self._hop_heartbeats = self._hop_heartbeats, []
        for beat in [*hop_heartbeats, *([heartbeat] if heartbeat is not None else [])]:
            beat.stop(timeout=1.0)
        if hops is not None:
            hops.close()
        if sftp is not None:
            with contextlib.suppress(Exception):
                sftp.close()
        if transport is not None:
            close_transport(transport)

    def _retrying(self, call: Callable[[], T], what: str) -> T:
        """Run an idempotent remote call; if the connection is lost, reconnect (with backoff) and retry."""
        for attempt in range(self._reconnects + 1):
            try:
                return call()
            except _ConnectionLost as exc:
                log.warning("%s: connection lost during %s: %s", self.name, what, exc)
                self._notify("network.connection_lost",
                             phrase("connection lost during {what}: {cause}", what=what, cause=_cause(exc)),
                             during=str(what), cause=str(_cause(exc)))
                with self._lock:
                    self._drop()
                    if self._manual:
                        self._wait_for_operator(_cause(exc))
                        raise self._manual_error() from None
                evidence = f"; {self.dead_peer.describe()}" if self.dead_peer is not None else ""
                left = self._left()
                if left is not None and left < _MIN_TRY_S:
                    raise TransportError.worded(
                        "network failure: {target}: connection lost during {what} ({cause}); no time left for a "
                        "reconnect within the call's bound{evidence}", init={"category": "network"},
                        target=self.name, what=what, cause=_cause(exc), evidence=evidence) from None
                if attempt == self._reconnects:
                    raise TransportError.worded(
                        "network failure: {target}: connection lost during {what} ({cause}); gave up after "
                        "{reconnects} reconnects{evidence}", init={"category": "network"}, target=self.name,
                        what=what, cause=_cause(exc), reconnects=self._reconnects, evidence=evidence) from None
        raise AssertionError("unreachable")

    def _exec(self, command: str, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
        """Run one short command line on the target and collect its exit status and output: through the
        connection's remote helper when there is one, else as an exec request of its own."""
        transport = self._ensure()
        left = self._left()
        if left is not None:
            timeout = max(_MIN_TRY_S, min(timeout, left))
        helper = self._helper_of(transport, timeout)
        if helper is not None:
            try:
                return helper.call(command, stdin, timeout)
            except HelperLost as exc:
                # Like a dropped connection: the retry reconnects and starts a new helper.
                raise _ConnectionLost(f"remote helper: {exc}") from None
        try:
            channel = transport.open_session(timeout=timeout)
        except _EXEC_ERRORS as exc:
            raise _ConnectionLost(f"cannot open a channel: {str(exc) or type(exc).__name__}") from None
        deadline = time.monotonic() + timeout
        out, err = bytearray(), bytearray()
        try:
            if self.become is None:
                channel.exec_command(command)
            else:
                handshake = BecomeHandshake(self.become, self.name)
                channel.exec_command(handshake.command(command))
                first_out, first_err = handshake.wait(channel, deadline, transport.is_active)
                out += first_out
                err += first_err
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            while True:
                got = False
                if channel.recv_ready():
                    out += channel.recv(65536)
                    got = True
                if channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                    got = True
                if got:
                    continue
                if channel.exit_status_ready() and channel.eof_received:
                    # Data, EOF and the exit status can all land between the two readiness checks above:
                    # after EOF everything is buffered here, so drain it before leaving.
                    while channel.recv_ready():
                        out += channel.recv(65536)
                    while channel.recv_stderr_ready():
                        err += channel.recv_stderr(65536)
                    break
                if channel.closed or not transport.is_active():
                    if channel.exit_status_ready():
                        break
                    raise _ConnectionLost("channel closed before the command finished")
                if time.monotonic() > deadline:
                    # An unanswered short command: the peer is frozen or gone. Treat the connection as dead.
                    raise _ConnectionLost(f"no answer within {timeout:.0f} s")
                channel.status_event.wait(0.005)
            status = channel.recv_exit_status()
            if status == -1 and not transport.is_active():
                raise _ConnectionLost("connection closed before the command reported its exit status")
            return status, bytes(out), bytes(err)
        except _EXEC_ERRORS as exc:
            raise _ConnectionLost(str(exc) or type(exc).__name__) from None
        finally:
            channel.close()

    def _job_call(self, via_helper: Callable[[jobs.HelperFn], T], via_shell: Callable[[], T]) -> T:
        """A step of the detached-job protocol: done by the connection's remote helper when there is one, else
        by a shell script in an exec request of its own."""
        transport = self._ensure()
        helper = self._helper_of(transport, _SHORT_TIMEOUT_S)
        if helper is None:
            return via_shell()

        def ask(request: dict[str, object], timeout: float) -> dict[str, object]:
            left = self._left()
            if left is not None:
                timeout = max(_MIN_TRY_S, min(timeout, left))
            try:
                return helper.request(request, timeout)
            except HelperLost as exc:
                raise _ConnectionLost(f"remote helper: {exc}") from None

        return via_helper(ask)

    def _helper_of(self, transport: paramiko.Transport, timeout: float) -> RemoteHelper | None:
        """The helper of the current connection, started on first use; None when it cannot run here."""
        if self._helper_python is None:
            return None
        with self._lock:
            if self._helper is not None and self._helper.alive and self._transport is transport:
                return self._helper
            if not transport.is_active():
                return None
            try:
                self._helper = RemoteHelper.start(transport, python=self._helper_python, path=jobs.DEFAULT_PATH,
                                                  become=self.become, target=self.name,
                                                  timeout_s=max(_MIN_TRY_S, min(timeout, 15.0)))
            except HelperLost as exc:
                raise _ConnectionLost(f"remote helper: {exc}") from None
            except HelperUnavailable as exc:
                if not transport.is_active():
                    raise _ConnectionLost(f"remote helper: {exc}") from None
                # Python missing or unusable on this target: a session per command from now on, said once.
                self._helper_python = None
                self.helper_unavailable = str(exc)
                log.warning("%s: remote helper not available (%s); a session per command", self.name, exc)
                return None
            log.debug("%s: remote helper started (python %s)", self.name, self._helper.python_version)
            return self._helper

    def remote_helper(self) -> str | None:
        """How commands reach this target: the helper's python, or why each command is a session of its own."""
        if self._helper is not None and self._helper.alive:
            return f"remote helper running (python {self._helper.python_version}, pid {self._helper.pid})"
        if self.helper_unavailable is not None:
            return f"no remote helper ({self.helper_unavailable}); a session per command"
        return None

    def _sftp_client(self) -> paramiko.SFTPClient:
        with self._lock:
            transport = self._ensure()
            if self._sftp is None:
                try:
                    self._sftp = paramiko.SFTPClient.from_transport(transport) if self.become is None \
                        else self._become_sftp(transport)
                except _CONNECTION_ERRORS as exc:
                    raise _ConnectionLost(f"cannot open SFTP: {str(exc) or type(exc).__name__}") from None
                if self._sftp is None:
                    raise _ConnectionLost("cannot open SFTP")
            return self._sftp

    def _become_sftp(self, transport: paramiko.Transport) -> paramiko.SFTPClient:
        """An SFTP client whose server runs as the become user: the target's sftp-server started through sudo
        on an exec channel, so every file operation has the become user's rights and ownership."""
        assert self.become is not None
        channel = transport.open_session(timeout=_SHORT_TIMEOUT_S)
        try:
            handshake = BecomeHandshake(self.become, self.name)
            channel.exec_command(handshake.command(jobs.shell_command(sftp_server_script())))
            handshake.wait(channel, time.monotonic() + _SHORT_TIMEOUT_S, transport.is_active)
            return paramiko.SFTPClient(channel)
        except BaseException:
            channel.close()
            raise

    def _file_call(self, call: Callable[[paramiko.SFTPClient], T], what: str) -> T:
        def attempt() -> T:
            sftp = self._sftp_client()
            try:
                return call(sftp)
            except _CONNECTION_ERRORS as exc:
                raise _ConnectionLost(str(exc) or type(exc).__name__) from None
            except OSError as exc:
                if self._transport is None or not self._transport.is_active():
                    raise _ConnectionLost(str(exc) or type(exc).__name__) from None
                raise TransportError.worded("cannot {what}: {reason}", init={"category": "file"}, what=what,
                                            reason=exc.strerror or _cause(exc)) from None

        return self._retrying(attempt, what)

    def shell(self, script: str, *, stdin: bytes | None = None, timeout: float = _SHORT_TIMEOUT_S) -> tuple[
            int, bytes, bytes]:
        """Run a short /bin/sh script with the minimal environment (not detached; for quick helper commands)."""
        return self._retrying(lambda: self._exec(jobs.shell_command(script), stdin, timeout),
                              phrase("a remote command"))

    def still_running(self) -> StillRunning:
        status, out, err = self.shell(jobs.running_jobs_script(self.job_dir))
        running = jobs.parse_running_jobs(out) if status == 0 else None
        if running is None:
            return StillRunning(unknown=phrase("exit {status}: {stderr}", status=status,
                                               stderr=err.decode("utf-8", "replace").strip() or phrase("no message")))
        return StillRunning(tuple(job.describe() for job in running))

    def probe(self, timeout_s: float) -> None:
        """Whether the target answers, within ``timeout_s`` in all: the connects, the channel and any retry
        share that one deadline (each connect timer alone would respect its bound, but they add up)."""
        self._bound.deadline = time.monotonic() + timeout_s
        try:
            status, _, err = self.shell("true", timeout=timeout_s)
        finally:
            self._bound.deadline = None
        if status != 0:
            raise TransportError.worded("{target}: the probe command failed (exit {status}): {output}",
                                        init={"category": "network"}, target=self.name, status=status,
                                        output=err.decode("utf-8", "replace").strip() or phrase("no output"))

    # -- commands ----------------------------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        home = self.become.home if self.become is not None else \
            "/root" if self.target.user == "root" else f"/home/{self.target.user}"
        return {"PATH": jobs.DEFAULT_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": home}

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        input: str | None = None,
        cancel: threading.Event | None = None,
    ) -> RunResult:
        full_env = self._base_env()
        full_env.update(env or {})
        jobs.command_line(argv, full_env, cwd)  # validates argv and env before anything happens remotely
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        job_id = jobs.new_job_id()
        # Short commands finish within the start's own wait: one remote session in all.
        first_wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
        start = self._retrying(
            lambda: self._job_call(
                lambda ask: jobs.start_and_wait_helper(ask, self.job_dir, argv, full_env, cwd, input, job_id=job_id,
                                                       wait_s=first_wait),
                lambda: jobs.start_and_wait(self._exec, self.job_dir, argv, full_env, cwd, input, job_id=job_id,
                                            wait_s=first_wait)),
            phrase("start of {command}", command=argv[0]),
        )
        if start.returncode is not None:
            return RunResult(argv=tuple(argv), returncode=start.returncode,
                             stdout=start.stdout.decode("utf-8", "replace"),
                             stderr=start.stderr.decode("utf-8", "replace"), duration_s=time.monotonic() - started)
        starting_since: float | None = None
        while True:
            if cancel is not None and cancel.is_set():
                self._stop(job_id, argv)
                raise CommandStopped.worded("{command} stopped: step cancelled", init={"timed_out": False},
                                            command=argv[0])
            if deadline is not None and time.monotonic() > deadline:
                self._stop(job_id, argv)
                raise CommandStopped.worded("{command} stopped after {seconds} s", init={"timed_out": True},
                                            command=argv[0], seconds=f"{timeout:.0f}")
            # The target waits for the job (up to a second, never past the deadline): one call, not many.
            wait_remote = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            status = self._retrying(
                lambda wait=wait_remote: self._job_call(  # type: ignore[misc]
                    lambda ask: jobs.poll_helper(ask, self.job_dir, job_id, wait_s=wait),
                    lambda: jobs.poll(self._exec, self.job_dir, job_id, wait_s=wait)),
                phrase("poll of {command}", command=argv[0]))
            if status.state == "exited":
                break
            if status.state in ("gone", "missing"):
                raise TransportError.worded("{command} on {target} ended without an exit code (job {job} {state})",
                                            init={"category": "plugin"}, command=argv[0], target=self.name,
                                            job=job_id, state=status.state)
            if status.state == "starting":
                starting_since = starting_since or time.monotonic()
                if time.monotonic() - starting_since > 10:
                    raise TransportError.worded("{command} on {target} did not start (job {job})",
                                                command=argv[0], target=self.name, job=job_id)
            wait = 0.0 if wait_remote >= 0.5 else self._poll_interval
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            if cancel is not None:
                cancel.wait(wait)
            else:
                time.sleep(wait)
        out, err = self._retrying(
            lambda: self._job_call(lambda ask: jobs.read_output_helper(ask, self.job_dir, job_id, remove=True),
                                   lambda: jobs.read_output(self._exec, self.job_dir, job_id, remove=True)),
            phrase("output of {command}", command=argv[0]))
        assert status.returncode is not None
        return RunResult(
            argv=tuple(argv), returncode=status.returncode,
            stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
            duration_s=time.monotonic() - started,
        )

    def stop_leftover_commands(self) -> list[str]:
        # Jobs of this run still running on the target were started by a controller that is gone: this one
        # never waits for them, so they are stopped (TERM, grace, KILL, confirmed) before anything else.
        _, out, _ = self._retrying(
            lambda: self._exec(jobs.shell_command(f"ls -1 -- {shlex.quote(self.job_dir)} 2>/dev/null"), None, 30),
            phrase("list of jobs"))
        stopped: list[str] = []
        for job_id in out.decode("utf-8", "replace").split():
            status = self._retrying(lambda j=job_id: jobs.poll(self._exec, self.job_dir, j),  # type: ignore[misc]
                                    phrase("poll of job {job}", job=job_id))
            if status.state != "running":
                continue
            result = self._retrying(lambda j=job_id: jobs.stop_job(self._exec, self.job_dir, j, self._grace),  # type: ignore[misc]
                                    phrase("stop of job {job}", job=job_id))
            if not result.confirmed:
                # Never claimed stopped: the caller must not compensate next to what survived.
                raise TransportError.worded("{target}: job {job}: processes {pids} survived SIGKILL",
                                            init={"category": "plugin"}, target=self.name, job=job_id,
                                            pids=str(list(result.remaining)))
            stopped.append(phrase("job {job} ({how})", job=job_id, how=result.how))
        return stopped

    def _stop(self, job_id: str, argv: Sequence[str]) -> None:
        result = self._retrying(lambda: jobs.stop_job(self._exec, self.job_dir, job_id, self._grace),
                                phrase("stop of {command}", command=argv[0]))
        if not result.confirmed:
            raise TransportError.worded("{command} on {target}: processes {pids} of job {job} survived SIGKILL",
                                        init={"category": "plugin"}, command=argv[0], target=self.name,
                                        pids=str(list(result.remaining)), job=job_id)
        log.info("%s: job %s (%s) stopped: %s", self.name, job_id, argv[0], result.how)

    # -- files -------------------------------------------------------------------------------------------

    def _mkdir_parent(self, path: str) -> None:
        parent = os.path.dirname(path) or "/"
        status, _, err = self.shell(f"mkdir -p -- {shlex.quote(parent)}")
        if status != 0:
            raise TransportError.worded("cannot create {path}: {stderr}", init={"category": "file"}, path=parent,
                                        stderr=err.decode("utf-8", "replace").strip())

    @staticmethod
    def _temp_name(path: str) -> str:
        directory, base = os.path.split(path)
        return os.path.join(directory, f".{base}.{secrets.token_hex(4)}.part")

    def put(self, local_path: str, remote_path: str, progress: ProgressCallback | None = None) -> None:
        """Resumable, pipelined, sha256-verified upload through ``remote_path.part`` (see _sftp_upload); a
        dropped connection resumes after the verified prefix of the part."""
        self._mkdir_parent(remote_path)

        final_path = remote_path

        def hash_while(path: str, size: int) -> Callable[[], str | None]:
            """The target's helper hashes the part as it arrives (None from the waiter: hash it afterwards)."""
            try:
                transport = self._ensure()
                helper = self._helper_of(transport, _SHORT_TIMEOUT_S)
            except (_ConnectionLost, TransportError):
                helper = None
            return (lambda: None) if helper is None else helper.hash_following(path, size)

        def remote_sha256(path: str, length: int | None) -> str:
            status, out, err = self._retrying(
                lambda: self._exec(jobs.shell_command(sha256_command(path, length)), None, 300.0),
                phrase("sha256 of {path}", path=path))
            if status != 0:
                raise TransportError.worded("cannot hash {path}: {stderr}", init={"category": "file"}, path=path,
                                            stderr=err.decode("utf-8", "replace").strip())
            return out.decode("ascii", "replace").split()[0] if out.split() else ""

        settings = self._transfer_settings
        delays = reconnect_delays(settings)
        dead: list[DeadPeer] = []
        last: BaseException | None = None
        total = os.path.getsize(local_path)
        # What the target acknowledged: the furthest offset reached and where each connection started.
        moved = {"on_target": 0, "started_at": -1}

        def seen(done: int, size: int) -> None:
            if moved["started_at"] < 0:
                moved["started_at"] = done  # the first report of a connection is the verified prefix kept
                if attempt:
                    self._notify("network.upload_resumed",
                                 phrase("upload of {file} resumed at {done} of {total} MiB (connection {number})",
                                        file=os.path.basename(local_path), done=_mib(done), total=_mib(size),
                                        number=attempt + 1),
                                 connection=attempt + 1, offset=done, total=size)
            moved["on_target"] = max(moved["on_target"], done)
            if progress is not None:
                progress(done, size)

        connections = 0
        for attempt in range(settings.reconnects + 1):
            if attempt:
                time.sleep(next(delays, 1.0))
            connection: Connection | None = None
            heartbeats: list[Heartbeat] = []
            moved["started_at"] = -1
            try:
                connection = open_connection(self.target)
                transport = connection.transport
                connections += 1
                heartbeats = [Heartbeat(watched, settings, functools.partial(self._upload_peer_dead, dead, connection))
                              for watched in (transport, *connection.hops)]
                sftp = paramiko.SFTPClient.from_transport(transport)
                if sftp is None:
                    raise TransportError.worded("{target}: no SFTP subsystem", init={"category": "network"},
                                                target=self.name)
                if self.become is not None:
                    # As the login user into a private staging directory, then into place as the become user.
                    remote_path = _staging_path(sftp, self.run_id, final_path)
                # A retry resumes after the verified prefix of the .part file: only the rest is sent again.
                report = upload_resumable(sftp, local_path, remote_path, remote_sha256=remote_sha256,
                                          progress=seen, hash_while=hash_while)
                if self.become is not None:
                    # The hash the target verified the staged copy against: the file as it was sent.
                    self._install_staged(remote_path, final_path, report.sha256)
                return
            except (HostKeyError, AuthError):
                raise
            except (*_CONNECTION_ERRORS, OSError, TransportError) as exc:
                if isinstance(exc, TransportError) and exc.category == "file":
                    raise
                if isinstance(exc, SilentPeer):
                    raise TransportError.worded("network failure: upload of {path} to {target}: {cause}",
                                                init={"category": "network"}, path=local_path, target=self.name,
                                                cause=message_phrase(exc)) from None
                last = exc
                log.warning("%s: upload connection lost (attempt %d): %s", self.name, attempt + 1, _cause(exc))
                self._notify("network.upload_lost",
                             phrase("upload connection {number} of {file} lost at {moved} of {total} MiB: {cause}",
                                    number=attempt + 1, file=os.path.basename(local_path),
                                    moved=_mib(moved["on_target"]), total=_mib(total), cause=_cause(exc)),
                             connection=attempt + 1, cause=str(_cause(exc)), moved=moved["on_target"], total=total,
                             reconnects_left=settings.reconnects - attempt)
            finally:
                for beat in heartbeats:
                    beat.stop(timeout=1.0)
                if connection is not None:
                    connection.close()
        evidence = f"; {dead[-1].describe()}" if dead else ""
        # Which error ends an attempt depends on what saw the cut first; paramiko's EOFError has no text.
        raise TransportError.worded(
            "network failure: upload of {path} to {target} lost its connection ({cause}); gave up after "
            "{reconnects} reconnects ({attempts} connection attempts, {made} made; {moved} of {total} MiB "
            "moved){evidence}", init={"category": "network"}, path=local_path, target=self.name, cause=_cause(last),
            reconnects=settings.reconnects, attempts=settings.reconnects + 1, made=connections,
            moved=_mib(moved["on_target"]), total=_mib(total), evidence=evidence)

    def _install_staged(self, staged: str, final: str, sha256: str) -> None:
        """Copy a verified staged upload into place as the become user (owner theirs, mode 0644, atomic
        rename in the destination directory), remove the staged copy (and the run's staging directory once
        empty), and check the result's sha256."""
        q = shlex.quote
        part = self._temp_name(final)
        script = (f"umask 022 && cp -- {q(staged)} {q(part)} && chmod 0644 -- {q(part)} && "
                  f"mv -f -- {q(part)} {q(final)} && rm -f -- {q(staged)} && "
                  f"{{ rmdir -- {q(posixpath.dirname(staged))} 2>/dev/null || :; }} && sha256sum < {q(final)} || "
                  f"{{ rc=$?; rm -f -- {q(part)}; exit $rc; }}")
        status, out, err = self.shell(script, timeout=600)
        if status != 0:
            raise TransportError.worded("cannot move the upload into {path} as {user}: {reason}",
                                        init={"category": "file"}, path=final,
                                        user=self.become.user if self.become else "?",
                                        reason=err.decode("utf-8", "replace").strip()
                                        or phrase("exit {status}", status=status))
        got = out.decode("ascii", "replace").split()[:1]
        if got != [sha256]:
            raise TransportError.worded("{path}: sha256 after the move is {found}, expected {expected}",
                                        init={"category": "file"}, path=final,
                                        found=got[0] if got else phrase("unknown"), expected=sha256)

    def _upload_peer_dead(self, sink: list[DeadPeer], connection: Connection, evidence: DeadPeer) -> None:
        """An upload connection's heartbeat (of the target or of a jump host) found the peer dead: reported,
        then the whole chain closed like the session's."""
        self._notify("network.peer_dead", phrase("peer declared dead (upload connection): {evidence}",
                                                 evidence=evidence.describe()),
                     connection=self._transfer_settings.connection_type, evidence=evidence.describe())
        sink.append(evidence)
        connection.close()

    def get(self, remote_path: str, local_path: str) -> None:
        self._file_call(lambda sftp: sftp.get(remote_path, local_path), phrase("download {path}", path=remote_path))

    def read_text(self, path: str) -> str:
        def read(sftp: paramiko.SFTPClient) -> str:
            with sftp.open(path, "rb") as handle:
                return bytes(handle.read()).decode("utf-8")

        return self._file_call(read, phrase("read {path}", path=path))

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        data = text.encode("utf-8")

        def write(sftp: paramiko.SFTPClient) -> None:
            tmp = self._temp_name(path)
            try:
                with sftp.open(tmp, "wb") as handle:
                    handle.set_pipelined(True)
                    handle.write(data)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    sftp.remove(tmp)
                raise

        what = phrase("write {path}", path=path)
        try:
            self._file_call(write, what)
        except TransportError as exc:
            if exc.category != "file":
                raise
            self._mkdir_parent(path)
            self._file_call(write, what)

    def _lstat(self, path: str) -> paramiko.SFTPAttributes | None:
        def lstat(sftp: paramiko.SFTPClient) -> paramiko.SFTPAttributes | None:
            try:
                return sftp.lstat(path)
            except FileNotFoundError:
                return None

        return self._file_call(lstat, phrase("stat {path}", path=path))

    def exists(self, path: str) -> bool:
        return self._lstat(path) is not None

    def realpath(self, path: str) -> str:
        """The server's realpath (SFTP ``normalize``) of the deepest existing ancestor, the rest appended."""
        def resolve(sftp: paramiko.SFTPClient) -> str:
            head, tail = path, ""
            while True:
                try:
                    resolved = str(sftp.normalize(head))
                    return resolved.rstrip("/") + "/" + tail if tail else resolved
                except OSError:
                    # Missing, or not a directory: try its parent; a lost connection is not that.
                    if self._transport is None or not self._transport.is_active() or head in ("/", ""):
                        raise
                    head, name = posixpath.split(head)
                    tail = f"{name}/{tail}" if tail else name

        return self._file_call(resolve, phrase("resolve {path}", path=path))

    def remove(self, path: str, recursive: bool = False) -> None:
        attrs = self._lstat(path)
        if attrs is None:
            return
        if attrs.st_mode is not None and stat.S_ISDIR(attrs.st_mode):
            if not recursive:
                raise TransportError.worded("{path} is a directory; pass recursive=True", init={"category": "file"},
                                            path=path)
            status, _, err = self.shell(f"rm -rf -- {shlex.quote(path)}", timeout=300)
            if status != 0:
                raise TransportError.worded("cannot remove {path}: {reason}", init={"category": "file"}, path=path,
                                            reason=err.decode("utf-8", "replace").strip())
            return

        def unlink(sftp: paramiko.SFTPClient) -> None:
            with contextlib.suppress(FileNotFoundError):
                sftp.remove(path)

        self._file_call(unlink, phrase("remove {path}", path=path))

    def latency_ms(self) -> float | None:
        """The median of the heartbeat's recent round trips; with none yet, one keepalive request timed now."""
        heartbeat = self._heartbeat
        rtts = list(heartbeat.rtts) if heartbeat is not None else []
        if rtts:
            return round(statistics.median(rtts) * 1000, 1)
        transport = self._transport
        if transport is None or not transport.is_active():
            return None
        answered = threading.Event()

        def ask() -> None:
            with contextlib.suppress(Exception):
                transport.global_request(KEEPALIVE_REQUEST, wait=True)
                answered.set()

        started = time.monotonic()
        threading.Thread(target=ask, name=f"latency-{self.name}", daemon=True).start()
        # A dead or frozen peer must not hold up a diagnosis: not measurable within 5 s means unknown.
        if not answered.wait(5.0):
            return None
        return round((time.monotonic() - started) * 1000, 1)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()
