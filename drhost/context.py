"""The host side of the Context API: every effect a plugin asks for happens here."""

from __future__ import annotations

import json
import logging
import posixpath
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict
from typing import Any, Literal, NoReturn

from drhost_hookspecs import Cancelled, PackageInfo, PluginClass, RunResult, StepFailed, TargetInfo
from drhost_hookspecs._runtime import ROOT_PLACEHOLDER, json_problem, not_json_message

from .transport import CommandStopped, TargetSession, TransportError

#: What a plugin's Context tells the host without waiting for an answer (a worker's ``notify`` message).
NotifyMethod = Literal["progress", "log"]
Notify = Callable[[NotifyMethod, Mapping[str, Any]], None]
#: Told of every refusal: the message, and what was refused:
#: ``{"kind": "path" | "command" | "env", "method": "write_text" | "run" | ..., "value": ...}``.
OnRefused = Callable[[str, Mapping[str, str]], None]

_STDERR_TAIL = 600
#: A command that ends with 0 sooner than this gets no "exit" line in debug.log (its "run" line and the step's
#: events say enough); one that fails or takes longer does.
_NOTED_AFTER_S = 1.0

#: Classes whose ``ctx.run`` is limited to the commands they declare (``PluginInfo.commands``).
COMMAND_RESTRICTED = frozenset({PluginClass.THIRD_PARTY})


def _env_refused(key: str) -> bool:
    """Variables a command-restricted plugin may not set: they choose what a declared command runs."""
    return key in ("PATH", "BASH_ENV", "ENV") or key.startswith("LD_")


def normal_path(path: str) -> str:
    """``posixpath.normpath`` of an absolute path, without the two leading slashes POSIX lets it keep."""
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/") if normal.startswith("//") else normal


def inside(path: str, prefix: str) -> bool:
    """Whether normalised absolute ``path`` is ``prefix`` or below it."""
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def substitute_root(declared: str, install_root: str) -> str:
    """A declared path or command with ``{root}`` replaced by the target's normalised install root."""
    if not declared.startswith(ROOT_PLACEHOLDER):
        return declared
    return normal_path(install_root + "/" + declared[len(ROOT_PLACEHOLDER):])


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
        plugin: str = "",
        plugin_class: PluginClass | None = None,
        paths: Sequence[str] = (),
        commands: Sequence[str] = (),
        on_refused: OnRefused | None = None,
        call: str = "",
    ) -> None:
        self._session = session
        self.run_id = run_id
        self.target = target
        self.package = package
        self.config = config
        self.state = state
        #: Which call this context serves, for messages: ``plugin 'x' step 'y'``.
        self.call = call or f"plugin {plugin or 'plugin'!r}"
        #: The plugin's state as the host last stored it, in a copy the plugin cannot reach: what is kept when
        #: the state the plugin hands back is not JSON.
        self.saved_state: dict[str, Any] = json.loads(json.dumps(dict(state)))
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
        # Confinement: file operations stay in the install root and the plugin's declared paths; a
        # command-restricted class runs only its declared commands. ``{root}`` stands for the install root.
        self._plugin = plugin or "plugin"
        self._root = normal_path(target.install_root) if target.install_root.startswith("/") else ""
        declared = [substitute_root(p, self._root) for p in paths if self._root or not p.startswith(ROOT_PLACEHOLDER)]
        self._declared_paths = tuple(dict.fromkeys(declared))
        self._allowed = tuple(dict.fromkeys([self._root, *declared] if self._root else declared))
        self._allowed_resolved: tuple[str, ...] | None = None
        self._restrict_commands = plugin_class in COMMAND_RESTRICTED
        self._declared_commands = tuple(dict.fromkeys(
            substitute_root(c, self._root) for c in commands if self._root or not c.startswith(ROOT_PLACEHOLDER)))
        self._on_refused = on_refused

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
        self._check_command(argv, env)
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
        if result.returncode != 0 or result.duration_s >= _NOTED_AFTER_S:
            # What ran is logged before it starts; that it ended as expected is what the step's own event says.
            self._log.debug("exit %s after %.2fs: %s", result.returncode, result.duration_s, list(argv))
        if check and result.returncode != 0:
            tail = (result.stderr or result.stdout).strip()[-_STDERR_TAIL:]
            raise StepFailed(f"{' '.join(argv[:3])} exited {result.returncode}: {tail}")
        return result

    # -- confinement --------------------------------------------------------------------
    def _refuse(self, message: str, kind: str, method: str, value: str) -> NoReturn:
        text = f"{self._plugin}: {message}"
        self._log.warning("%s", text)
        if self._on_refused is not None:
            self._on_refused(text, {"kind": kind, "method": method, "value": value})
        raise StepFailed(text, retryable=False)

    def _check_command(self, argv: Sequence[str], env: Mapping[str, str] | None) -> None:
        """A command-restricted plugin (third_party) runs only the argv[0] it declares, exactly."""
        if not self._restrict_commands:
            return
        command = str(argv[0]) if len(argv) else ""
        if command not in self._declared_commands:
            declared = ", ".join(self._declared_commands) or "none"
            self._refuse(f"run({command!r}) refused: a third_party plugin may run only the commands it declares "
                         f"({declared}); declare it in PluginInfo(commands=...)", "command", "run", command)
        refused_env = sorted(key for key in (env or {}) if _env_refused(str(key)))
        if refused_env:
            self._refuse(f"run({command!r}) refused: a third_party plugin may not set {', '.join(refused_env)} "
                         f"(they choose what a declared command runs)", "env", "run", ",".join(refused_env))

    def _outside(self, method: str, shown: str, shown_path: str, resolved: str | None) -> NoReturn:
        declared = ", ".join(self._declared_paths) or "none"
        through = f" (it resolves to {resolved} on the target)" if resolved is not None else ""
        self._refuse(f"{shown} refused{through}: outside the product root {self._root or '(none)'} and the "
                     f"plugin's declared paths ({declared}); declare it in PluginInfo(paths=...)", "path",
                     method, resolved or shown_path)

    def _resolve(self, path: str) -> str:
        return str(self._file_op(self._session.realpath, path))

    def _inside_allowed(self, path: str) -> bool:
        if any(inside(path, prefix) for prefix in self._allowed):
            return True
        if self._allowed_resolved is None:  # the root or a declared path may itself be a symlink
            self._allowed_resolved = tuple(self._resolve(prefix) for prefix in self._allowed)
        return any(inside(path, prefix) for prefix in self._allowed_resolved)

    def _confine(self, op: str, path: object) -> str:
        """``path`` normalised, or a refusal: it must lie in the install root or a declared path, as written
        and with its symlinks resolved on the target (the deepest existing ancestor's, and the parent's for
        the last component). The normalised path is what the operation then uses."""
        shown = f"{op}({path!r})"
        if self._cancel.is_set():
            raise Cancelled()
        if not isinstance(path, str) or not path:
            self._refuse(f"{shown} refused: expected a non-empty path", "path", op, str(path))
        if "\0" in path:
            self._refuse(f"{shown} refused: the path contains a NUL byte", "path", op,
                         path.replace("\0", "\\0"))
        if not path.startswith("/"):
            self._refuse(f"{shown} refused: not an absolute path; pass a path on the target starting with / "
                         f"(the product root is {self._root or '(none)'})", "path", op, path)
        normal = normal_path(path)
        if not any(inside(normal, prefix) for prefix in self._allowed):
            self._outside(op, shown, normal, None)
        full = self._resolve(normal)
        if full != normal:
            # A symlink on the way. Check where the path leads and where its last component lives (remove,
            # write_text and put act on a final symlink itself, not on what it points to).
            if not self._inside_allowed(full):
                self._outside(op, shown, normal, full)
            parent = self._resolve(posixpath.dirname(normal))
            located = posixpath.join(parent, posixpath.basename(normal))
            if not self._inside_allowed(located):
                self._outside(op, shown, normal, located)
        return normal

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

        remote_path = self._confine("put", remote_path)
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
        return str(self._file_op(self._session.read_text, self._confine("read_text", path)))

    def write_text(self, path: str, text: str, *, mode: int = 0o644) -> None:
        self._file_op(self._session.write_text, self._confine("write_text", path), text, mode)

    def exists(self, path: str) -> bool:
        return bool(self._file_op(self._session.exists, self._confine("exists", path)))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._file_op(self._session.remove, self._confine("remove", path), recursive)

    def progress(self, done: float, total: float, unit: str = "") -> None:
        self._notify("progress", {"done": done, "total": total, "unit": unit})

    def log(self, message: str, *, level: str = "info") -> None:
        # A plugin may log without end: the call's output budget, carried by the host's notify (the
        # orchestrator's CallOutput), decides what is written. debug.log here and the journal through notify
        # get the same admitted (possibly shortened) lines, or neither does.
        budget = getattr(self._notify, "output_budget", None)
        if budget is not None:
            admitted = budget.admit_log(str(message))
            if admitted is None:
                return
            message = admitted
        self._log.log(logging.getLevelName(level.upper()) if level.upper() in logging._nameToLevel else logging.INFO,
                      "%s", message)
        self._notify("log", {"message": message, "level": level})

    def checkpoint(self) -> None:
        # Checked before it is stored: a value that is not JSON fails the step here, named, and never reaches
        # (and breaks) the run's state file. What is stored is a copy the plugin can no longer change.
        problem = json_problem(self.state, "ctx.state")
        if problem is not None:
            raise StepFailed(not_json_message(self.call, f"ctx.checkpoint(): {problem}"), retryable=False)
        state = json.loads(json.dumps(dict(self.state)))
        self._persist(state)
        self.saved_state = json.loads(json.dumps(state))

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
