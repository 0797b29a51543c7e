"""The host side of the Context API: every effect a plugin asks for happens here."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict
from typing import Any

from drhost_hookspecs import Cancelled, PackageInfo, RunResult, StepFailed, TargetInfo

from .transport import CommandStopped, TargetSession, TransportError

Notify = Callable[[str, Mapping[str, Any]], None]

_STDERR_TAIL = 600


class HostContext:
    """A :class:`drhost_hookspecs.Context` bound to one target session and one call.

    Thread runners hand it to the plugin directly; process and container runners
    serve it to the worker through :meth:`dispatch`.
    """

    def __init__(
        self,
        *,
        session: TargetSession,
        run_id: str,
        target: TargetInfo,
        package: PackageInfo,
        config: Mapping[str, Any],
        state: MutableMapping[str, Any],
        notify: Notify,
        persist: Callable[[dict[str, Any]], None],
        cancel: threading.Event,
        deadline: float | None,
        logger: logging.Logger,
        upload_slots: threading.Semaphore | None = None,
    ) -> None:
        self._session = session
        self.run_id = run_id
        self.target = target
        self.package = package
        self.config = config
        self.state = state
        self._notify = notify
        self._persist = persist
        self._cancel = cancel
        self._deadline = deadline
        self._log = logger
        self._upload_slots = upload_slots
        #: Commands the host stopped during this call (deadline or cancel), with how: a timeout report names them.
        self.stopped_commands: list[dict[str, Any]] = []
        self._running = 0
        self._running_lock = threading.Lock()

    def _remaining(self, timeout: float | None) -> float | None:
        if self._deadline is None:
            return timeout
        left = max(0.0, self._deadline - time.monotonic())
        return left if timeout is None else min(timeout, left)

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
        if self._cancel.is_set():
            raise Cancelled()
        self._log.debug("run %s", list(argv))
        with self._running_lock:
            self._running += 1
        try:
            result = self._session.run(
                argv, timeout=self._remaining(timeout), env=env, cwd=cwd, input=input, cancel=self._cancel
            )
        except CommandStopped as exc:
            self.stopped_commands.append({"argv": list(argv)[:20], "timed_out": exc.timed_out, "how": str(exc)})
            if self._cancel.is_set() or (exc.timed_out and timeout is None):
                raise Cancelled() from None
            raise StepFailed(str(exc)) from None
        except TransportError as exc:
            raise StepFailed(str(exc)) from None
        finally:
            with self._running_lock:
                self._running -= 1
        self._log.debug("exit %s after %.2fs: %s", result.returncode, result.duration_s, list(argv))
        if check and result.returncode != 0:
            tail = (result.stderr or result.stdout).strip()[-_STDERR_TAIL:]
            raise StepFailed(f"{' '.join(argv[:3])} exited {result.returncode}: {tail}")
        return result

    def _file_op(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._cancel.is_set():
            raise Cancelled()
        try:
            return func(*args, **kwargs)
        except TransportError as exc:
            raise StepFailed(str(exc)) from None

    def put(self, local_path: str, remote_path: str) -> None:
        def progress(done: int, total: int) -> None:
            self.progress(done, total, "bytes")

        # Uploads to many targets share the controller's uplink: at most run.max_parallel_uploads at once.
        slots = self._upload_slots
        if slots is None:
            self._file_op(self._session.put, local_path, remote_path, progress)
            return
        while not slots.acquire(timeout=0.5):
            if self._cancel.is_set():
                raise Cancelled()
        try:
            self._file_op(self._session.put, local_path, remote_path, progress)
        finally:
            slots.release()

    def read_text(self, path: str) -> str:
        return str(self._file_op(self._session.read_text, path))

    def write_text(self, path: str, text: str, *, mode: int = 0o644) -> None:
        self._file_op(self._session.write_text, path, text, mode)

    def exists(self, path: str) -> bool:
        return bool(self._file_op(self._session.exists, path))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._file_op(self._session.remove, path, recursive)

    def progress(self, done: float, total: float, unit: str = "") -> None:
        self._notify("progress", {"done": done, "total": total, "unit": unit})

    def log(self, message: str, *, level: str = "info") -> None:
        self._log.log(logging.getLevelName(level.upper()) if level.upper() in logging._nameToLevel else logging.INFO,
                      "%s", message)
        self._notify("log", {"message": message, "level": level})

    def checkpoint(self) -> None:
        self._persist(dict(self.state))

    def sleep(self, seconds: float) -> None:
        if self._cancel.wait(seconds):
            raise Cancelled()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def stop(self) -> None:
        """Ask the current call to stop: running commands end, ``ctx.sleep`` wakes."""
        self._cancel.set()

    @property
    def commands_running(self) -> int:
        """Commands of this call still running — or still being stopped (TERM, grace, KILL, confirmed)."""
        with self._running_lock:
            return self._running

    def wait_commands_stopped(self, timeout_s: float) -> bool:
        """After :meth:`stop`: wait until the transport confirmed every command of this call ended."""
        deadline = time.monotonic() + timeout_s
        while self.commands_running and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.commands_running

    # -- serving a worker -------------------------------------------------------
    def dispatch(self, method: str, args: Mapping[str, Any]) -> Any:
        """Serve one request of a sandboxed worker; returns a JSON-safe result."""
        if method == "run":
            result = self.run(
                [str(a) for a in args["argv"]], timeout=args.get("timeout"), check=bool(args.get("check", True)),
                env=args.get("env") or None, cwd=args.get("cwd"), input=args.get("input"),
            )
            return {**asdict(result), "argv": list(result.argv)}
        if method == "checkpoint":
            state = args.get("state")
            if not isinstance(state, dict):
                raise StepFailed("checkpoint state must be a JSON object", retryable=False)
            self.state.clear()
            self.state.update(state)
            return self.checkpoint()
        if method == "put":
            # A sandboxed plugin may upload the run's package, not any file of the controller.
            if str(args["local_path"]) != self.package.local_path:
                raise StepFailed(
                    f"put of {args['local_path']!r} refused: a sandboxed plugin may only upload the package "
                    f"({self.package.local_path})", retryable=False)
            return self.put(str(args["local_path"]), str(args["remote_path"]))
        if method == "read_text":
            return self.read_text(str(args["path"]))
        if method == "write_text":
            return self.write_text(str(args["path"]), str(args["text"]), mode=int(args.get("mode", 0o644)))
        if method == "exists":
            return self.exists(str(args["path"]))
        if method == "remove":
            return self.remove(str(args["path"]), recursive=bool(args.get("recursive", False)))
        raise StepFailed(f"unknown Context method {method!r}", retryable=False)


def context_payload(ctx: HostContext) -> dict[str, Any]:
    """What a worker needs to build its own Context for a call."""
    package = asdict(ctx.package)
    package["upgrades_from"] = list(ctx.package.upgrades_from)
    return {
        "run_id": ctx.run_id,
        "target": {**asdict(ctx.target), "labels": dict(ctx.target.labels)},
        "package": package,
        "config": dict(ctx.config),
        "state": dict(ctx.state),
    }
