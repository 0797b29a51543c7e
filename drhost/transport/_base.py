"""The interface every transport implements: one session to one target."""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from drhost_hookspecs import RunResult

from ..errors import WordedError

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class StillRunning:
    """What a session can tell of this run's commands on the target."""

    #: Each command still running, described.
    commands: tuple[str, ...] = ()
    #: Why the commands could not be read, or None when they were.
    unknown: str | None = None
    #: Whether commands can outlive their call here (detached jobs); when not, none can still run.
    detached: bool = True


class TransportError(WordedError):
    """The transport could not do what was asked; ``category`` says which kind of failure."""

    def __init__(self, message: str, *, category: str = "network") -> None:
        super().__init__(message)
        self.category = category


class ManualReconnect(TransportError):
    """A connection that reconnects only on the operator's word (``[ssh:status_check]``, the design's "manual
    reconnect") was lost: nothing is reconnected until :meth:`TargetSession.reconnect_now` is called."""

    def __init__(self, message: str, *, connection: str, cause: str) -> None:
        super().__init__(message, category="network")
        self.connection = connection
        self.cause = cause


class CommandStopped(TransportError):
    """A command was stopped before it finished (deadline or cancel); its process group is gone."""

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message, category="plugin")
        self.timed_out = timed_out


class TargetSession(abc.ABC):
    """Run commands and move files on one target. Paths are paths on the target."""

    name: str

    @abc.abstractmethod
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
        """Run ``argv`` (no shell) and wait. On timeout or cancel the whole process group is
        ended (TERM, grace, KILL) and :class:`CommandStopped` is raised."""

    @abc.abstractmethod
    def put(self, local_path: str, remote_path: str, progress: ProgressCallback | None = None) -> None:
        """Copy a controller file to the target atomically."""

    @abc.abstractmethod
    def get(self, remote_path: str, local_path: str) -> None:
        """Copy a target file to the controller."""

    @abc.abstractmethod
    def read_text(self, path: str) -> str: ...

    @abc.abstractmethod
    def write_text(self, path: str, text: str, mode: int = 0o644) -> None: ...

    @abc.abstractmethod
    def exists(self, path: str) -> bool: ...

    @abc.abstractmethod
    def remove(self, path: str, recursive: bool = False) -> None: ...

    def realpath(self, path: str) -> str:
        """``path`` (absolute) with every symlink of its deepest existing ancestor resolved on the target;
        the components below that ancestor are appended as they are. Used to confine plugins' file operations.

        A session that cannot resolve paths refuses (the Context then refuses every file operation)."""
        raise TransportError.worded("{target}: this transport cannot resolve paths on the target",
                                    init={"category": "file"}, target=self.name)

    def probe(self, timeout_s: float) -> None:
        """Return when the target answers a trivial command; raise :class:`TransportError` when it does not
        within ``timeout_s`` in all (a session over a network bounds its connects and retries by it too)."""
        self.run(["true"], timeout=timeout_s)

    def waiting_for_operator(self) -> str | None:
        """Why this session's connection is down and waits for the operator's word to reconnect, or None (a
        session without connections never waits)."""
        return None

    def reconnect_now(self) -> None:
        """The operator's word: reconnect a connection that waits for it (raises :class:`TransportError` when the
        target still does not answer; the session then keeps waiting)."""
        return None  # a session without connections has nothing to reconnect

    def stop_leftover_commands(self) -> list[str]:
        """Stop commands an earlier controller of this run started and left running (it was killed);
        return what was stopped. Called by a resume before it touches the target."""
        return []

    def still_running(self) -> StillRunning:
        """This run's commands still running on the target (a transport whose commands end with their call
        has none); raises :class:`TransportError` when the target does not answer."""
        return StillRunning(detached=False)

    def latency_ms(self) -> float | None:
        """Round-trip time to the target in ms, for a network timeout's diagnosis; None if not measurable."""
        return None

    def remote_helper(self) -> str | None:
        """How commands reach the target, for ``drhost doctor``: a remote helper, or why there is none; None
        where there is no such choice (a local target)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional for sessions that hold nothing
        """Release the session's resources."""
