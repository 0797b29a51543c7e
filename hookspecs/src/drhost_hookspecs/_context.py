"""The Context API: everything a step may do to its target goes through it."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ._types import PackageInfo, RunResult, TargetInfo


@runtime_checkable
class Context(Protocol):
    """Passed to every step, compensation and plugin-wide hook.

    The host mediates every effect on a target: a plugin never opens a connection
    or holds a credential. In a thread a call is direct; in a process or container
    it is a message to the host, which runs it on the target's session, under the
    step's deadline, in the run's log. The same code therefore runs in every
    isolation class.
    """

    #: The run this call belongs to.
    run_id: str
    #: The target the step works on.
    target: TargetInfo
    #: The upgrade package of this run.
    package: PackageInfo
    #: This plugin's own config section (validated against its schema), read-only.
    config: Mapping[str, Any]
    #: Plugin-scoped, JSON-serialisable state, saved with the run's checkpoint after
    #: every call: put here what a later step, a resume or a rollback needs (for
    #: example where the backup went).
    state: MutableMapping[str, Any]

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        input: str | None = None,
    ) -> RunResult:
        """Run ``argv`` on the target (no shell: pass ``["sh", "-c", script]`` to get one).

        ``check=True`` raises :class:`StepFailed` on a non-zero exit, with the
        command's stderr tail. ``timeout`` may only shorten the step's own deadline.
        """
        ...

    def put(self, local_path: str, remote_path: str) -> None:
        """Copy a file from the controller to the target, atomically (temp name, then rename)."""
        ...

    def read_text(self, path: str) -> str:
        """Read a UTF-8 text file on the target."""
        ...

    def write_text(self, path: str, text: str, *, mode: int = 0o644) -> None:
        """Write a UTF-8 text file on the target atomically, creating parent directories."""
        ...

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists on the target."""
        ...

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file (or a tree with ``recursive=True``); a missing path is not an error."""
        ...

    def progress(self, done: float, total: float, unit: str = "") -> None:
        """Report progress of the current step (``done`` of ``total`` ``unit``)."""
        ...

    def log(self, message: str, *, level: str = "info") -> None:
        """Write a line to the run's log, tagged with plugin, target, stage and step."""
        ...

    def checkpoint(self) -> None:
        """Save ``ctx.state`` with the run's checkpoint now, not only when the call returns.

        Call it right before an effect that a compensation must know about, so that
        a crash of the worker or of the controller in the middle cannot lose it.
        """
        ...

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake with :class:`Cancelled` as soon as the host stops the step."""
        ...

    @property
    def cancelled(self) -> bool:
        """True once the host has asked this step to stop."""
        ...
