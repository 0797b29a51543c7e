"""A fake Context for unit tests: a step function called in the test's own process, with no host and no run.

Files and commands go through drhost's own local transport (:class:`drhost.transport.LocalSession`), so a
step sees what the host's ``local`` transport would give it (atomic writes, ``exists`` of a dangling link,
``remove`` refusing a directory without ``recursive=True``, the explicit command environment). What the
host adds on top -- confinement, deadlines, the isolation of the plugin's class -- is not here: that is what
the ``drhost_*`` fixtures and ``drhost plugin-test`` are for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from drhost_hookspecs import Cancelled, PackageInfo, RunResult, StepFailed, TargetInfo

from ..transport import CommandStopped, LocalSession, TransportError

__all__ = ["Call", "FakeContext", "ScriptedCommand"]

# As the host's message: enough of the tail of stderr to say what went wrong.
_STDERR_TAIL = 600


@dataclass(frozen=True)
class Call:
    """One call a plugin made on a :class:`FakeContext`: the method's name and its arguments by name."""

    method: str
    args: Mapping[str, Any]


@dataclass
class ScriptedCommand:
    """What ``ctx.run`` answers, instead of running anything, for an argv that starts with ``prefix``."""

    prefix: tuple[str, ...]
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    #: How many more calls it answers; None: every call.
    times: int | None = None
    #: The argvs it answered, in order.
    answered: list[tuple[str, ...]] = field(default_factory=list)

    def matches(self, argv: Sequence[str]) -> bool:
        return tuple(argv[: len(self.prefix)]) == self.prefix and self.times != 0


class FakeContext:
    """The :class:`drhost_hookspecs.Context` protocol on a local directory, recording what the plugin does.

    ``install_root`` is the target's install root (created if missing); without one a temporary
    directory is made and removed again by :meth:`close` (or at the end of a ``with`` block).
    ``ctx.run`` answers from the commands scripted with :meth:`script` (the last matching one wins)
    and otherwise runs the command on this machine, unless ``run_unscripted=False``, when an unscripted
    command fails the test. ``ctx.sleep`` sleeps for real unless ``real_sleep=False``. After
    :meth:`stop`, every call raises :class:`~drhost_hookspecs.Cancelled`, as the host's Context does
    once it stops a step.

    What it recorded: :attr:`calls` (every Context call, in order), :attr:`commands` (every argv run
    or answered), :attr:`logs` (``(level, message)``), :attr:`progress_reports` (``(done, total,
    unit)``), :attr:`checkpoints` (a copy of ``state`` per ``checkpoint()``) and :attr:`slept`.
    """

    def __init__(
        self,
        install_root: str | os.PathLike[str] | None = None,
        *,
        package: PackageInfo | None = None,
        config: Mapping[str, Any] | None = None,
        state: Mapping[str, Any] | None = None,
        run_id: str = "test-run",
        target_name: str = "target-1",
        work_dir: str | os.PathLike[str] | None = None,
        run_unscripted: bool = True,
        real_sleep: bool = True,
    ) -> None:
        self._made_root = install_root is None
        root = Path(tempfile.mkdtemp(prefix="drhost-fake-target-") if install_root is None else install_root)
        root.mkdir(parents=True, exist_ok=True)
        #: The target's install root on this machine.
        self.root = root
        self.run_id = run_id
        self.target = TargetInfo(name=target_name, host="localhost", transport="local", install_root=str(root),
                                 work_dir=str(work_dir) if work_dir is not None else str(root / "work"))
        self.package = package if package is not None else PackageInfo(
            product="drproduct", version="2.0.0", upgrades_from=("1.0.0",), local_path="", remote_path="",
            sha256="", size=0)
        self.config: Mapping[str, Any] = dict(config or {})
        self.state: MutableMapping[str, Any] = dict(state or {})
        self.calls: list[Call] = []
        self.commands: list[tuple[str, ...]] = []
        self.logs: list[tuple[str, str]] = []
        self.progress_reports: list[tuple[float, float, str]] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.slept: list[float] = []
        self._scripted: list[ScriptedCommand] = []
        self._run_unscripted = run_unscripted
        self._real_sleep = real_sleep
        self._cancel = threading.Event()
        self._session = LocalSession(target_name)

    # -- what a test sets up --------------------------------------------------------------
    def script(self, *prefix: str, returncode: int = 0, stdout: str = "", stderr: str = "",
               times: int | None = None) -> ScriptedCommand:
        """Answer ``ctx.run`` of an argv starting with ``prefix`` with this result instead of running it."""
        if not prefix:
            raise ValueError("script() needs at least argv[0]")
        scripted = ScriptedCommand(tuple(prefix), returncode, stdout, stderr, times)
        self._scripted.append(scripted)
        return scripted

    def stop(self) -> None:
        """Ask the step to stop, as the host does at its deadline: ``cancelled`` turns true, calls raise Cancelled."""
        self._cancel.set()

    def close(self) -> None:
        """Remove the install root if this context made it (a temporary directory); otherwise leave it."""
        if self._made_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FakeContext:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    @property
    def logged(self) -> list[str]:
        """The log lines as ``"LEVEL: message"``, for an assertion that reads like the run's log."""
        return [f"{level}: {message}" for level, message in self.logs]

    # -- the Context protocol -------------------------------------------------------------
    def _record(self, method: str, **args: Any) -> None:
        self.calls.append(Call(method, args))
        if self._cancel.is_set():
            raise Cancelled()

    def _file_op(self, func: Callable[..., Any], *args: Any) -> Any:
        # As the host: a transport error is the step's failure, in the plugin's own terms, and a command
        # stopped because the step was stopped is a cancellation.
        try:
            return func(*args)
        except CommandStopped as exc:
            if self._cancel.is_set():
                raise Cancelled() from None
            raise StepFailed(str(exc)) from None
        except TransportError as exc:
            raise StepFailed(str(exc)) from None

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
        self._record("run", argv=argv, timeout=timeout, check=check, env=env, cwd=cwd, input=input)
        if isinstance(argv, str) or not all(isinstance(arg, str) for arg in argv):
            # The host takes an argv list only: a shell string here would be one long program name there.
            raise TypeError(f"argv must be a list of str, got {argv!r}")
        command = tuple(argv)
        self.commands.append(command)
        scripted = next((s for s in reversed(self._scripted) if s.matches(command)), None)
        if scripted is not None:
            scripted.answered.append(command)
            if scripted.times is not None:
                scripted.times -= 1
            result = RunResult(command, scripted.returncode, scripted.stdout, scripted.stderr, 0.0)
        elif not self._run_unscripted:
            raise AssertionError(f"FakeContext: unscripted command {list(command)!r}; script it with "
                                 f"ctx.script({', '.join(map(repr, command[:2]))}, ...)")
        else:
            result = self._file_op(lambda: self._session.run(command, timeout=timeout, env=env, cwd=cwd, input=input,
                                                             cancel=self._cancel))
        if check and result.returncode != 0:
            tail = (result.stderr or result.stdout).strip()[-_STDERR_TAIL:]
            raise StepFailed(f"{' '.join(command[:3])} exited {result.returncode}: {tail}")
        return result

    def put(self, local_path: str, remote_path: str) -> None:
        self._record("put", local_path=local_path, remote_path=remote_path)
        self._file_op(self._session.put, local_path, remote_path,
                      lambda done, total: self.progress_reports.append((done, total, "bytes")))

    def read_text(self, path: str) -> str:
        self._record("read_text", path=path)
        return str(self._file_op(self._session.read_text, path))

    def write_text(self, path: str, text: str, *, mode: int = 0o644) -> None:
        self._record("write_text", path=path, text=text, mode=mode)
        self._file_op(self._session.write_text, path, text, mode)

    def exists(self, path: str) -> bool:
        self._record("exists", path=path)
        return bool(self._file_op(self._session.exists, path))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._record("remove", path=path, recursive=recursive)
        self._file_op(self._session.remove, path, recursive)

    def progress(self, done: float, total: float, unit: str = "") -> None:
        self._record("progress", done=done, total=total, unit=unit)
        self.progress_reports.append((done, total, unit))

    def log(self, message: str, *, level: str = "info") -> None:
        self._record("log", message=message, level=level)
        self.logs.append((level, message))

    def checkpoint(self) -> None:
        self._record("checkpoint")
        # The host refuses a state that is not JSON at this point; a unit test should find out here too.
        try:
            saved = json.loads(json.dumps(dict(self.state), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise StepFailed(f"ctx.checkpoint(): ctx.state is not JSON: {exc}", retryable=False) from None
        self.checkpoints.append(saved)

    def sleep(self, seconds: float) -> None:
        self._record("sleep", seconds=seconds)
        self.slept.append(seconds)
        if self._real_sleep and self._cancel.wait(seconds):
            raise Cancelled()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()
