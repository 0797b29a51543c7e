"""The sandbox-side worker: loads ONE plugin and serves the host's calls.

Started by the host as ``python -m drhost_hookspecs._runtime.worker ENTRY_POINT`` in a fresh
interpreter (a child process, or a container). It lowers its own limits before it
imports the plugin, then speaks JSON lines on the stdout it was given; the plugin's
own prints go to stderr, which the host logs under the plugin's name.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, BinaryIO

from .._errors import Cancelled, StepFailed
from .._plugin import LoadedPlugin, operation_name
from .._types import PackageInfo, RunResult, Stage, TargetInfo, VerifyPhase
from ._confine import CONFINE_ENV, confine
from ._limits import apply_limits
from ._protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    call_label,
    decode,
    encode,
    error_to_json,
    json_problem,
    not_json_message,
)


class _Channel:
    def __init__(self, out: BinaryIO, limit: int) -> None:
        self._out = out
        self._lock = threading.Lock()
        self.limit = limit

    def send(self, message: dict[str, Any]) -> None:
        data = encode(message, limit=self.limit)
        with self._lock:
            self._out.write(data)
            self._out.flush()


class _PendingReply:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.message: dict[str, Any] | None = None


class WorkerContext:
    """The Context a step sees inside a worker: every effect is a request to the host."""

    def __init__(self, channel: _Channel, call_id: int, payload: Mapping[str, Any]) -> None:
        self._channel = channel
        self._call_id = call_id
        self._cancel = threading.Event()
        self._pending: dict[int, _PendingReply] = {}
        self._next = 0
        self._lock = threading.Lock()
        self.run_id: str = payload["run_id"]
        self.target = TargetInfo(**payload["target"])
        package = dict(payload["package"])
        package["upgrades_from"] = tuple(package["upgrades_from"])
        self.package = PackageInfo(**package)
        self.config: Mapping[str, Any] = dict(payload.get("config") or {})
        self.state: MutableMapping[str, Any] = dict(payload.get("state") or {})
        #: The state the host last stored (a copy the plugin cannot reach): what it keeps if the current state
        #: cannot be sent.
        self.saved_state: dict[str, Any] = json.loads(json.dumps(self.state))
        #: Which call this is, for refusals: ``plugin 'x' step 'y'``.
        self.label = "plugin"

    # -- plumbing -------------------------------------------------------------
    def _request(self, method: str, **args: Any) -> Any:
        if self._cancel.is_set():
            raise Cancelled()
        with self._lock:
            self._next += 1
            request_id = self._next
            pending = self._pending[request_id] = _PendingReply()
        self._channel.send(
            {"type": "request", "id": request_id, "call_id": self._call_id, "method": method, "args": args}
        )
        while not pending.event.wait(0.5):
            if self._cancel.is_set():
                raise Cancelled()
        with self._lock:
            del self._pending[request_id]
        reply = pending.message or {}
        if "error" in reply:
            error = reply["error"]
            if error.get("kind") == "cancelled":
                raise Cancelled()
            raise StepFailed(str(error.get("message")), retryable=bool(error.get("retryable", True)))
        return reply.get("result")

    def deliver(self, message: dict[str, Any]) -> None:
        with self._lock:
            pending = self._pending.get(int(message["id"]))
        if pending is not None:
            pending.message = message
            pending.event.set()

    def cancel(self) -> None:
        self._cancel.set()

    # -- the Context API --------------------------------------------------------
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
        result = self._request(
            "run", argv=list(argv), timeout=timeout, check=check, env=dict(env or {}), cwd=cwd, input=input
        )
        return RunResult(
            argv=tuple(result["argv"]),
            returncode=int(result["returncode"]),
            stdout=str(result["stdout"]),
            stderr=str(result["stderr"]),
            duration_s=float(result.get("duration_s", 0.0)),
        )

    def put(self, local_path: str, remote_path: str) -> None:
        self._request("put", local_path=local_path, remote_path=remote_path)

    def read_text(self, path: str) -> str:
        return str(self._request("read_text", path=path))

    def write_text(self, path: str, text: str, *, mode: int = 0o644) -> None:
        self._request("write_text", path=path, text=text, mode=mode)

    def exists(self, path: str) -> bool:
        return bool(self._request("exists", path=path))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._request("remove", path=path, recursive=recursive)

    def progress(self, done: float, total: float, unit: str = "") -> None:
        self._channel.send(
            {"type": "notify", "call_id": self._call_id, "method": "progress",
             "args": {"done": done, "total": total, "unit": unit}}
        )

    def log(self, message: str, *, level: str = "info") -> None:
        self._channel.send(
            {"type": "notify", "call_id": self._call_id, "method": "log", "args": {"message": message, "level": level}}
        )

    def checkpoint(self) -> None:
        # A request, not a notification: when it returns, the state is on the host's disk.
        # Refused here, before anything is sent: a value that is not JSON fails the step, not the channel.
        problem = json_problem(self.state, "ctx.state")
        if problem is not None:
            raise StepFailed(not_json_message(self.label, f"ctx.checkpoint(): {problem}"), retryable=False)
        state = json.loads(json.dumps(self.state))
        self._request("checkpoint", state=state)
        self.saved_state = state

    def sleep(self, seconds: float) -> None:
        if self._cancel.wait(seconds):
            raise Cancelled()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


class Worker:
    def __init__(self, plugin: LoadedPlugin, channel: _Channel, memory_limit: int | None) -> None:
        self._plugin = plugin
        self._channel = channel
        self._memory_limit = memory_limit
        self._current: WorkerContext | None = None
        self._current_lock = threading.Lock()

    def _execute(self, message: dict[str, Any], ctx: WorkerContext) -> None:
        call_id = int(message["id"])
        try:
            result = self._plugin.invoke(
                operation_name(message["op"]),
                ctx,
                stage=Stage(message["stage"]) if message.get("stage") else None,
                step=message.get("step"),
                phase=VerifyPhase(message["phase"]) if message.get("phase") else None,
                in_process=False,
                memory_limit_bytes=self._memory_limit,
            )
        except BaseException as exc:  # everything a plugin raises goes to the host
            reply = {"type": "error", "id": call_id, "error": error_to_json(exc), "state": dict(ctx.state)}
        else:
            reply = {"type": "result", "id": call_id, "result": result, "state": dict(ctx.state)}
        # Let go of the call before answering it: the host's next call may arrive the moment the answer is out,
        # and clearing afterwards would unset that call's Context, whose replies would then be dropped (the next
        # call hung until its deadline).
        with self._current_lock:
            if self._current is ctx:
                self._current = None
        self._reply(ctx, reply)

    def _reply(self, ctx: WorkerContext, message: dict[str, Any]) -> None:
        # A state or result that is not JSON fails the call at once, named (never a reply that cannot be
        # encoded, which would leave the host waiting for the whole timeout).
        problem = json_problem(message["state"], "ctx.state")
        if problem is None and message["type"] == "result":
            problem = json_problem(message["result"], "the result")
        try:
            if problem is not None:
                raise ProtocolError(not_json_message(ctx.label, problem))
            self._channel.send(message)
        except (ProtocolError, TypeError, ValueError, RecursionError) as exc:
            # Not JSON, or too large to send: fail the call, and hand back the state the host already had (it
            # fits), so nothing a compensation needs is wiped.
            self._channel.send({"type": "error", "id": message["id"], "state": ctx.saved_state,
                                "error": {"kind": "step_failed", "message": str(exc), "retryable": False}})

    def serve(self, stdin: BinaryIO) -> int:
        while True:
            line = stdin.readline(self._channel.limit + 1)
            if not line:
                return 0
            try:
                message = decode(line, limit=self._channel.limit)
            except ProtocolError as exc:
                print(f"drhost worker: bad message from host: {exc}", file=sys.stderr)
                return 4
            kind = message["type"]
            if kind == "shutdown":
                return 0
            if kind == "call" and message["op"] == "describe":
                # Describing needs no target, so it gets no Context.
                try:
                    self._channel.send({"type": "result", "id": message["id"], "result": self._plugin.describe(),
                                        "state": {}})
                except BaseException as exc:
                    self._channel.send({"type": "error", "id": message["id"], "error": error_to_json(exc),
                                        "state": {}})
            elif kind == "call":
                ctx = WorkerContext(self._channel, int(message["id"]), message["ctx"])
                ctx.label = call_label(self._plugin.entry_point, str(message["op"]), step=message.get("step"),
                                       stage=message.get("stage"))
                with self._current_lock:
                    self._current = ctx
                threading.Thread(target=self._execute, args=(message, ctx), daemon=True).start()
            elif kind == "reply" and self._current is not None:
                self._current.deliver(message)
            elif kind == "cancel" and self._current is not None:
                self._current.cancel()


def _protect_stdout() -> BinaryIO:
    """Keep the real stdout for the protocol; send everything else printed to stderr."""
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(protocol_fd, "wb", buffering=0)


def _load(args: Sequence[str], confined: Mapping[str, Any]) -> LoadedPlugin:
    try:
        return LoadedPlugin.from_value(args[0], args[1]) if len(args) == 2 else LoadedPlugin.from_entry_point(args[0])
    except (ImportError, LookupError) as exc:
        unreadable = confined.get("unreadable")
        if unreadable:
            # The plugin's files may be where the worker identity cannot read them: say so, not just "no module".
            raise type(exc)(f"{exc} (worker user {confined.get('user')!r} cannot read: {', '.join(unreadable)}; "
                              f"make the plugin's installation readable by that user)") from exc
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 2):
        print("usage: python -m drhost_hookspecs._runtime.worker ENTRY_POINT [MODULE[:ATTR]]", file=sys.stderr)
        return 2
    channel = _Channel(_protect_stdout(), int(os.environ.get("DRHOST_WORKER_MESSAGE_LIMIT", MAX_MESSAGE_BYTES)))
    limits = json.loads(os.environ.get("DRHOST_WORKER_LIMITS", "{}"))
    try:
        applied = apply_limits(limits, os.getpid())
        if CONFINE_ENV in os.environ:
            cgroups = [os.path.dirname(procs) for procs in limits.get("cgroup_procs", [])]
            applied["confined"] = confine({**json.loads(os.environ.pop(CONFINE_ENV)), "cgroup_dirs": cgroups})
        plugin = _load(args, applied.get("confined") or {})
    except BaseException as exc:
        channel.send({"type": "fatal", "error": error_to_json(exc)})
        return 3
    channel.send({"type": "hello", "pid": os.getpid(), "protocol": PROTOCOL_VERSION, "limits": applied,
                  "plugin": plugin.info.name})
    return Worker(plugin, channel, limits.get("memory_bytes")).serve(sys.stdin.buffer)


if __name__ == "__main__":
    sys.exit(main())
