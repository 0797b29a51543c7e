"""The controller's side of the remote helper (drhost/transport/remote_helper.py): one long-lived process per
SSH connection that runs drhost's commands on the target without a new SSH session and login shell each.

Started over one exec channel with the target's ``python3``: a one-line bootstrap reads the helper's text from
the channel (its length first) and runs it, so nothing is installed on the target. Calls from several threads
share the channel, and one of the calls waiting reads it for all (no reader thread of its own: an answer that
went through one costs a hand-over of the GIL more, measured at 0.15 ms of controller CPU a remote step at 50
targets). Anything that goes wrong with a started helper (the channel closes, an answer does not come in time,
garbage instead of JSON) is :class:`HelperLost`, which the session treats like a dropped connection: reconnect,
start a new helper, retry the (idempotent) call. A helper that cannot start (no python3, a refused channel) is
:class:`HelperUnavailable`, with the reason: the session then sends each command as an exec request of its own,
as it did before the helper existed, and says so (``drhost doctor --target``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import importlib.resources
import itertools
import json
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paramiko

from ._become import Become, BecomeError, BecomeHandshake
from ._remote_jobs import DEFAULT_PYTHON, HelperRefused

__all__ = ["DEFAULT_PYTHON", "HelperLost", "HelperUnavailable", "RemoteHelper"]

#: How long the helper may take to say it is ready: a python3 start on a loaded target.
START_TIMEOUT_S = 15.0
#: Reads the helper's text (its length in bytes on the first line) from stdin and runs it as __main__.
_BOOTSTRAP = "import sys; s=sys.stdin.buffer; exec(s.read(int(s.readline())))"


class HelperLost(Exception):
    """Internal: a started helper stopped answering; the session handles it like a dropped connection."""


class HelperUnavailable(Exception):
    """The helper could not be started on this target (the message says why)."""


@functools.cache
def helper_source() -> bytes:
    return importlib.resources.files("drhost.transport").joinpath("remote_helper.py").read_bytes()


def start_command(python: str, path: str) -> str:
    """The exec request that starts the helper: a clean environment (as every drhost command has), no login
    shell's rc files in what runs. ``-I -S``: nothing of the target's site-packages, .pth files or user site
    runs in it (the helper needs the standard library only), which also spares ~15 ms of start-up a
    connection."""
    return (f'exec env -i PATH={path} HOME="$HOME" LC_ALL=C {shlex.quote(python)} -u -I -S -c '
            f"{shlex.quote(_BOOTSTRAP)}")


@dataclass
class _Waiting:
    answer: dict[str, Any] | None = None


class RemoteHelper:
    """A started helper on one channel. Thread-safe: :meth:`call` may be used by several threads at once."""

    def __init__(self, channel: paramiko.Channel, python_version: str, pid: int, pending: bytes = b"") -> None:
        self._channel = channel
        #: The helper's process id on the target.
        self.pid = pid
        self.python_version = python_version
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        #: Woken when an answer is handed out, when the reading call stops reading, and when the helper is lost.
        self._changed = threading.Condition(self._lock)
        self._waiting: dict[int, _Waiting] = {}
        self._lost: str | None = None
        #: Whether a waiting call is reading the channel (only one does at a time); what it read past a line.
        self._reading = False
        self._buffer = bytearray(pending)

    @classmethod
    def start(cls, transport: paramiko.Transport, *, python: str, path: str, become: Become | None = None,
              target: str = "", timeout_s: float = START_TIMEOUT_S) -> RemoteHelper:
        """Start the helper over a new channel of ``transport``; HelperUnavailable saying why it did not.

        With ``become`` the helper itself is started through sudo (one handshake, the password if sudo asks for
        it), so every command it runs afterwards runs as the become user without a sudo of its own. sudo's
        refusal is BecomeError, as for any command; a connection lost meanwhile is HelperLost."""
        try:
            channel = transport.open_session(timeout=timeout_s)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HelperUnavailable(f"no channel for it: {exc or type(exc).__name__}") from None
        deadline = time.monotonic() + timeout_s
        try:
            channel.settimeout(timeout_s)
            early = b""
            if become is None:
                channel.exec_command(start_command(python, path))
            else:
                handshake = BecomeHandshake(become, target)
                channel.exec_command(handshake.command(start_command(python, path)))
                try:
                    early, _ = handshake.wait(channel, deadline, transport.is_active)
                except ConnectionError as exc:
                    raise HelperLost(str(exc)) from None
            source = helper_source()
            channel.sendall(str(len(source)).encode("ascii") + b"\n" + source)
            first, rest = _read_line(channel, deadline, early)
            try:
                ready = json.loads(first)
            except ValueError:
                ready = None
            if not isinstance(ready, dict) or ready.get("ready") != 1:
                err = channel.recv_stderr(4096).decode("utf-8", "replace").strip() if channel.recv_stderr_ready() \
                    else ""
                status = channel.recv_exit_status() if channel.exit_status_ready() else None
                why = err or (f"exit status {status}" if status is not None else repr(first[:200]))
                raise HelperUnavailable(f"{python} did not start it: {why}")
        except (HelperUnavailable, BecomeError):
            channel.close()
            raise
        except HelperLost:
            channel.close()
            if not transport.is_active():
                raise
            raise HelperUnavailable(f"{python} did not start it: no ready message in {timeout_s:.0f} s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            channel.close()
            if not transport.is_active():
                raise HelperLost(str(exc) or type(exc).__name__) from None
            raise HelperUnavailable(f"{python} did not start it: {exc or type(exc).__name__}") from None
        channel.settimeout(None)
        return cls(channel, str(ready.get("python", "?")), int(ready.get("pid") or 0), rest)

    @property
    def alive(self) -> bool:
        return self._lost is None and not self._channel.closed

    def call(self, command: str, stdin: bytes | None, timeout_s: float) -> tuple[int, bytes, bytes]:
        """Run ``command`` (an exec request's command line) on the target: its exit status, stdout, stderr.
        HelperLost when the helper is gone or does not answer within ``timeout_s``."""
        answer = self._ask({"command": command, "stdin": base64.b64encode(stdin or b"").decode("ascii")}, timeout_s)
        if "error" in answer:
            raise HelperLost(f"the helper could not run the command: {answer['error']}")
        try:
            return int(answer["rc"]), base64.b64decode(answer["out"]), base64.b64decode(answer["err"])
        except (KeyError, TypeError, ValueError, binascii.Error):
            self._lose(f"an answer that is not one: {str(answer)[:200]}")
            raise HelperLost(self._lost or "") from None

    def request(self, operation: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """One of the helper's own operations (``op``: job_start, job_poll, job_output); its answer. HelperLost
        as for :meth:`call`; HelperRefused when the helper says it could not do it (a missing job directory)."""
        answer = self._ask(operation, timeout_s)
        if "error" in answer:
            raise HelperRefused(str(answer["error"]))
        return answer

    def hash_following(self, path: str, size: int, *, idle_s: float = 30.0) -> Callable[[], str | None]:
        """Start hashing ``path`` on the target as its first ``size`` bytes arrive (an upload writing it);
        returns the wait for that sha256, None when the helper could not give it (then hash the file anew)."""
        found: list[str | None] = [None]

        def follow() -> None:
            with contextlib.suppress(HelperLost, HelperRefused):
                # No deadline of its own: the helper gives up when the upload stops bringing bytes.
                answer = self.request({"op": "hash_follow", "path": path, "size": size, "idle_s": idle_s},
                                      timeout_s=86400)
                found[0] = str(answer.get("sha256") or "") or None

        thread = threading.Thread(target=follow, name="drhost-helper-hash", daemon=True)
        thread.start()

        def wait() -> str | None:
            thread.join(timeout=120)
            return found[0]

        return wait

    def close(self) -> None:
        """End the helper: its stdin closes, and it exits (commands it started go on)."""
        self._lose("closed")
        self._channel.close()

    def _ask(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send ``request`` and wait for its answer, reading the channel meanwhile unless another call does."""
        ident = next(self._ids)
        waiting = _Waiting()
        with self._lock:
            if self._lost is not None:
                raise HelperLost(self._lost)
            self._waiting[ident] = waiting
        try:
            with self._send_lock:
                self._send_all(json.dumps({**request, "id": ident}, separators=(",", ":")).encode("utf-8") + b"\n")
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._lose(f"cannot send to the helper: {exc or type(exc).__name__}")
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while waiting.answer is None and self._lost is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if self._reading:
                    self._changed.wait(left)
                    continue
                self._reading = True
                self._changed.release()
                try:
                    self._read_until(waiting, deadline)
                finally:
                    self._changed.acquire()
                    self._reading = False
                    # Another call still waiting takes over the reading.
                    self._changed.notify_all()
            answer, lost = waiting.answer, self._lost
        if answer is not None:
            return answer
        if lost is None:
            self._lose(f"no answer within {timeout_s:.0f} s")
        raise HelperLost(self._lost or "the helper ended")

    def _send_all(self, data: bytes) -> None:
        """``sendall`` that waits for the channel's window as long as it takes, as it did with no timeout set: the
        channel's timeout is the reading call's deadline (:meth:`_read_until`), not this request's."""
        while data:
            try:
                sent = self._channel.send(data)
            except TimeoutError:
                time.sleep(0.01)  # the reader's timeout may be tiny: no spinning on it while the window is shut
                continue
            if not sent:  # paramiko's word for a closed channel (or one whose end was sent)
                raise OSError("the helper's channel is closed")
            data = data[sent:]

    def _lose(self, why: str) -> None:
        """Mark the helper gone and wake every waiting call (they raise HelperLost)."""
        with self._changed:
            if self._lost is None:
                self._lost = why
            self._waiting = {}
            self._changed.notify_all()
        if why != "closed":
            self._channel.close()

    def _read_until(self, waiting: _Waiting, deadline: float) -> None:
        """Read answers off the channel, handing each to its call, until ``waiting`` has its own, the deadline
        passes or the helper is lost (call as the one reading call, without the lock)."""
        buffer = self._buffer
        scanned = 0
        while True:
            while (end := buffer.find(b"\n", scanned)) >= 0:
                line = bytes(buffer[:end])
                del buffer[:end + 1]
                scanned = 0
                try:
                    answer = json.loads(line)
                    ident = answer["id"]
                except (ValueError, KeyError, TypeError):
                    self._lose(f"an answer that is not JSON: {line[:200]!r}")
                    return
                with self._changed:
                    entry = self._waiting.pop(ident, None)
                    if entry is not None:
                        entry.answer = answer
                        if entry is not waiting:
                            self._changed.notify_all()
            scanned = len(buffer)
            if waiting.answer is not None:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                self._channel.settimeout(left)
                chunk = self._channel.recv(65536)
            except TimeoutError:
                return
            except Exception as exc:  # whatever ends the channel ends the helper; never an unseen failure
                self._lose(f"the channel failed: {exc or type(exc).__name__}")
                return
            if not chunk:
                self._lose("the helper ended (its channel closed)")
                return
            buffer += chunk


def _read_line(channel: paramiko.Channel, deadline: float, data: bytes = b"") -> tuple[bytes, bytes]:
    """The first line the helper writes (its ready message), or what came before the channel ended; and what
    came after it. ``data``: what already arrived."""
    while b"\n" not in data:
        if time.monotonic() > deadline:
            raise HelperLost("no ready message in time")
        try:
            chunk = channel.recv(4096)
        except TimeoutError:
            raise HelperLost("no ready message in time") from None
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line, rest
