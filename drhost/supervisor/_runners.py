"""Runners: how a plugin's code is executed — a thread in the host, or a sandboxed worker process."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import shutil
import signal
import subprocess
import threading
import time
from typing import IO, Any, Protocol

from drhost_hookspecs import OperationName, Stage, VerifyPhase
from drhost_hookspecs._runtime import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, ProtocolError, decode, encode, error_to_json

from ..context import HostContext, context_payload
from ..errors import message_phrase, phrase
from ..policy import Isolation
from ._endings import LimitWatch, name_limit
from ._outcome import CallOutcome, outcome_from_error
from ._sandbox import Sandbox
from ._thread_runner import COMMAND_STOP_S
from ._worker_dirs import make_worker_dir

_STDERR_LOG_LIMIT = 4 * 1024 * 1024
_SAMPLE_EVERY_S = 0.25
_STARTUP_TIMEOUT_S = 60.0


class Runner(Protocol):
    """Executes operations of one plugin for one target."""

    isolation: Isolation

    def call(self, op: OperationName, ctx: HostContext | None, *, stage: Stage | None = None, step: str | None = None,
             phase: VerifyPhase | None = None, timeout_s: float) -> CallOutcome: ...

    def close(self) -> None: ...


class WorkerDied(Exception):
    pass


class WorkerMismatch(WorkerDied):
    """The worker speaks another protocol than this drhost: its environment is stale. Not retried."""


def protocol_mismatch(hello: dict[str, Any], plugin: str) -> str | None:
    """Why a worker's hello does not match this drhost's protocol, in one sentence; None when it does."""
    theirs = hello.get("protocol")
    if isinstance(theirs, int) and not isinstance(theirs, bool) and theirs == PROTOCOL_VERSION:
        return None
    speaks = ("names no drhost protocol in its hello (older than protocol 1)" if "protocol" not in hello
              else f"speaks drhost protocol {theirs!r}")
    return (f"worker for plugin {plugin!r} {speaks}, this drhost speaks {PROTOCOL_VERSION}: the worker's "
            f"environment (container bundle or venv) is stale — rebuild it (install this drhost's "
            f"drhost-hookspecs where the worker runs; a container bundle is rebuilt when its sources change)")


class HealthWatch:
    """Samples a worker's usage during a call; keeps the peaks; names a memory or process-count breach.

    Where the kernel does not hold the worker to its memory limit (no cgroup), this
    is what stops it: sampled, so a fast allocation can overshoot by what it grabs
    between two samples. It also follows the sandbox's kernel limit counters
    (:class:`LimitWatch`), from which the call's ending names the limit that stopped it.
    """

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._next = 0.0
        self.peak: dict[str, Any] = {}
        #: Which sampled limit was breached: "memory" or "pids".
        self.breached = ""
        self.limits = LimitWatch(sandbox)

    def sample(self, now: float) -> str | None:
        if now < self._next:
            return None
        self._next = now + _SAMPLE_EVERY_S
        usage = self._sandbox.usage()
        self.limits.sample()
        for key, value in usage.items():
            if isinstance(value, (int, float)):
                self.peak[key] = max(self.peak.get(key, 0), value)
        pids = int(self._sandbox.process_limit or 0)
        found = usage.get("processes")
        processes = found if isinstance(found, int) else 0
        sampled_pids = pids > 0 and not self._sandbox.enforces_processes and processes > 0
        if sampled_pids and processes > pids:
            self.breached = "pids"
            return (f"pids limit {pids} reached: {processes} processes (sampled by the supervisor; no pids "
                    f"cgroup here); worker and its children killed")
        limit = self._sandbox.memory_limit_bytes
        memory = usage.get("memory_bytes")
        if limit and not self._sandbox.enforces_memory and isinstance(memory, int) and memory > limit:
            if sampled_pids and processes >= pids:
                # Many processes, each small, together over the memory figure: the fork bomb is the cause.
                self.breached = "pids"
                return (f"pids limit {pids} reached: {processes} processes holding {memory // (1024 * 1024)} MiB "
                        f"together, over the memory limit of {limit // (1024 * 1024)} MiB (sampled by the "
                        f"supervisor; no cgroup here); worker and its children killed")
            self.breached = "memory"
            return (f"memory limit {limit // (1024 * 1024)} MiB exceeded: {memory // (1024 * 1024)} MiB resident "
                    f"(sampled by the supervisor; no cgroup here); worker killed")
        return None


class WorkerRunner:
    """Plugins outside the host: one warm worker per plugin and target, confined by a sandbox.

    The worker is a fresh interpreter that lowers its own limits, imports exactly
    one plugin and speaks JSON lines. The host owns it: on a deadline everything it
    started is ended by the sandbox, and a dead worker is started again for the next
    call.
    """

    def __init__(self, entry_point: str, *, sandbox: Sandbox, logger: logging.Logger, grace_s: float = 3.0,
                 message_limit: int = MAX_MESSAGE_BYTES, value: str | None = None,
                 startup_timeout_s: float = _STARTUP_TIMEOUT_S) -> None:
        self.entry_point = entry_point
        self._value = value
        # The worker imports the plugin before its hello: discovery bounds that import by its own deadline.
        self._startup_timeout = startup_timeout_s
        self._launch_lock = threading.Lock()
        self.sandbox = sandbox
        self.isolation = sandbox.kind
        self._log = logger
        self._grace = grace_s
        self._limit = message_limit
        self._proc: subprocess.Popen[bytes] | None = None
        self._messages: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._next_id = 0
        self.launches = 0
        self.hello: dict[str, Any] = {}
        self._health: HealthWatch | None = None
        # Made at the first launch: a runner that never launches leaves no directory behind.
        self._cwd: str | None = None

    # -- lifecycle --------------------------------------------------------------
    def _spawn(self) -> None:
        self.sandbox.prepare()
        self._messages = queue.Queue()
        # The worker's argv ends with its own arguments, whatever the sandbox puts before them.
        argv = [*self.sandbox.command(self.entry_point), *([self._value] if self._value else [])]
        if self._cwd is None:  # again after close(): a runner may be reused
            self._cwd = make_worker_dir()
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env=self.sandbox.environment(), start_new_session=True, cwd=self._cwd)
        self.sandbox.started(self._proc.pid)
        self.launches += 1
        assert self._proc.stdout is not None and self._proc.stderr is not None
        threading.Thread(target=self._read_stdout, args=(self._proc.stdout, self._messages), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(self._proc.stderr,), daemon=True).start()
        kind, message = self._next_message(time.monotonic() + self._startup_timeout)
        if kind == "msg" and message["type"] == "hello":
            mismatch = protocol_mismatch(message, self.entry_point)
            if mismatch is not None:
                self._kill()
                raise WorkerMismatch(mismatch)
            self.hello = message
            return
        reason = self._describe_failure(kind, message)
        self._kill()
        raise WorkerDied(reason)

    def _describe_failure(self, kind: str, message: Any) -> str:
        if kind == "msg" and message.get("type") == "fatal":
            error = message["error"]
            return f"{error.get('type')}: {error.get('message')}"
        if kind == "protocol":
            return f"protocol violation: {message}"
        if kind == "eof":
            return f"worker exited ({self._exit_description()})"
        if kind == "timeout":
            return "worker did not start in time"
        return f"unexpected message {message!r}"

    def _exit_description(self) -> str:
        if self._proc is None:
            return phrase("not started")
        try:
            code = self._proc.wait(timeout=self._grace)
        except subprocess.TimeoutExpired:
            return phrase("still running")
        limit = self.sandbox.explain_exit(code)
        if limit:
            return limit
        if code < 0:
            return phrase("killed by {signal}", signal=signal.Signals(-code).name)
        return phrase("exit code {code}", code=code)

    def _read_stdout(self, stream: IO[bytes], sink: queue.Queue[tuple[str, Any]]) -> None:
        while True:
            line = stream.readline(self._limit + 1)
            if not line:
                sink.put(("eof", None))
                return
            try:
                sink.put(("msg", decode(line, limit=self._limit)))
            except ProtocolError as exc:
                sink.put(("protocol", str(exc)))
                return

    def _read_stderr(self, stream: IO[bytes]) -> None:
        logged = 0
        for raw in iter(lambda: stream.readline(64 * 1024), b""):
            # Keep draining past the limit so a flooding plugin never blocks on a full pipe.
            if logged < _STDERR_LOG_LIMIT:
                logged += len(raw)
                self._log.info("[stderr] %s", raw.decode("utf-8", "replace").rstrip()[:2000])
                if logged >= _STDERR_LOG_LIMIT:
                    self._log.warning("[stderr] more than %d bytes; the rest is discarded", _STDERR_LOG_LIMIT)

    def _next_message(self, deadline: float) -> tuple[str, Any]:
        try:
            return self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return "timeout", None

    def _send(self, message: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(encode(message, limit=self._limit))
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the reader sees the worker's end

    def _kill(self) -> None:
        if self._proc is not None:
            self.sandbox.stop(self._proc, self._grace)
            self._proc = None

    def start(self) -> None:
        """Make sure a worker is running (launch one if not); raises WorkerDied with the reason."""
        # A prewarm thread and the first call may race to launch: one launch only.
        with self._launch_lock:
            if self._proc is None or self._proc.poll() is not None:
                self._spawn()

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._send({"type": "shutdown"})
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=self._grace)
        self._kill()
        self.sandbox.close()
        if self._cwd is not None:
            shutil.rmtree(self._cwd, ignore_errors=True)
            self._cwd = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- calls ----------------------------------------------------------------------
    def call(self, op: OperationName, ctx: HostContext | None, *, stage: Stage | None = None, step: str | None = None,
             phase: VerifyPhase | None = None, timeout_s: float) -> CallOutcome:
        self._health = None
        outcome = self._call(op, ctx, stage=stage, step=step, phase=phase, timeout_s=timeout_s)
        health = self._call_health()
        if health is None or outcome.ok:
            return outcome
        # A call can end between two samples (a fork bomb that catches EAGAIN and raises, at once): read the
        # kernel's counters once more, so the refusal it met is seen whatever the sampling missed.
        health.limits.sample()
        # The limit that stopped the call is its ending (pids, memory, CPU time), from the kernel's counters.
        named = name_limit(outcome, health.limits, health.peak, self.sandbox)
        if named.ended == "pids" and self._proc is not None:
            # Whatever the bomb left (processes holding the pids limit) must not outlive its ending.
            self._kill()
            named = dataclasses.replace(named, detail={**named.detail, "killed": True})
        return named

    def _call_health(self) -> HealthWatch | None:
        """The usage and limit watch of the last call (None when it never reached the worker)."""
        return self._health

    def _call(self, op: OperationName, ctx: HostContext | None, *, stage: Stage | None = None, step: str | None = None,
              phase: VerifyPhase | None = None, timeout_s: float) -> CallOutcome:
        started = time.monotonic()

        def state() -> dict[str, Any]:
            # Read at the end: checkpoints during the call update ctx.state.
            return dict(ctx.state) if ctx is not None else {}
        if self._proc is None or self._proc.poll() is not None or self._launch_lock.locked():
            try:
                self.start()
            except WorkerMismatch as exc:
                # Starting it again would meet the same stale worker: one clear refusal, never retried as a crash.
                return CallOutcome("protocol", message=str(exc), retryable=False, state=state(),
                                   duration_s=time.monotonic() - started, detail={"handshake": "mismatch"})
            except WorkerDied as exc:
                return CallOutcome("crashed",
                                   message=phrase("worker could not start: {error}", error=message_phrase(exc)),
                                   state=state(), duration_s=time.monotonic() - started)
        self._next_id += 1
        call_id = self._next_id
        message: dict[str, Any] = {"type": "call", "id": call_id, "op": op,
                                   "ctx": context_payload(ctx) if ctx is not None else {}}
        if stage is not None:
            message["stage"] = stage.value
        if step is not None:
            message["step"] = step
        if phase is not None:
            message["phase"] = phase.value
        self._send(message)
        deadline = started + timeout_s
        cancelled_at: float | None = None
        stop_reason = ""
        health = self._health = HealthWatch(self.sandbox)
        while True:
            limit = deadline if cancelled_at is None else cancelled_at + self._grace
            kind, incoming = self._next_message(min(limit, time.monotonic() + _SAMPLE_EVERY_S))
            now = time.monotonic()
            breach = health.sample(now)
            if breach is not None:
                self._kill()
                return CallOutcome("killed", message=breach, state=state(), duration_s=now - started,
                                   retryable=False, detail={"usage": health.peak, "limit": health.breached,
                                                            "killed": True})
            if cancelled_at is None and (now >= deadline or (ctx is not None and ctx.cancelled)):
                # Ask politely first; the kill below does not need the plugin's cooperation.
                cancelled_at = now
                stop_reason = "timeout" if now >= deadline else "cancelled"
                if ctx is not None:
                    ctx.stop()
                self._send({"type": "cancel", "id": call_id})
            if kind == "timeout":
                if cancelled_at is not None and now >= cancelled_at + self._grace:
                    self._kill()
                    return self._stopped(stop_reason, timeout_s, state(), now - started, killed=True,
                                         usage=health.peak, ctx=ctx)
                continue
            if kind == "eof":
                how = self._exit_description()
                self._proc = None
                if cancelled_at is not None:
                    return self._stopped(stop_reason, timeout_s, state(), now - started, killed=False,
                                         usage=health.peak, ctx=ctx)
                # A kernel limit that killed the worker (the memory cgroup's OOM killer) is named as that limit.
                limit_hit = self.sandbox.exit_limit
                return CallOutcome("memory" if limit_hit == "memory" else "crashed",
                                   message=phrase("worker died: {how}", how=how),
                                   state=state(), duration_s=now - started,
                                   detail={"exit": how, "usage": health.peak,
                                           **({"limit": limit_hit, "killed": True} if limit_hit else {})})
            if kind == "protocol":
                self._kill()
                return CallOutcome("protocol", message=phrase("worker broke the protocol: {what}", what=str(incoming)),
                                   state=state(),
                                   retryable=True, duration_s=now - started)
            outcome = self._handle(incoming, call_id, ctx, now - started)
            if outcome is not None:
                if cancelled_at is not None and not outcome.ok:
                    return self._stopped(stop_reason, timeout_s, outcome.state, now - started, killed=False,
                                         usage=health.peak, ctx=ctx)
                return dataclasses.replace(outcome, detail={**outcome.detail, "usage": health.peak})

    def _stopped(self, reason: str, timeout_s: float, state: dict[str, Any], duration: float, *,
                 killed: bool, usage: dict[str, Any], ctx: HostContext | None = None) -> CallOutcome:
        if ctx is not None:
            # The worker is gone; commands it had the host run on the target are being stopped by the host
            # itself (TERM, grace, KILL). The call ends once that is confirmed, so nothing outlives it.
            ctx.wait_commands_stopped(self._grace + COMMAND_STOP_S)
        return self._stopped_outcome(reason, timeout_s, state, duration, killed=killed, usage=usage)

    @staticmethod
    def _stopped_outcome(reason: str, timeout_s: float, state: dict[str, Any], duration: float, *,
                         killed: bool, usage: dict[str, Any]) -> CallOutcome:
        how = phrase("; worker killed") if killed else ""
        if reason == "timeout":
            return CallOutcome("timeout", message=phrase("no result after {seconds} s{how}",
                                                         seconds=f"{round(timeout_s, 1):g}", how=how),
                               state=state, duration_s=duration, detail={"killed": killed, "usage": usage})
        return CallOutcome("cancelled", message=phrase("stopped by the host{how}", how=how), state=state,
                           duration_s=duration,
                           detail={"killed": killed, "usage": usage})

    def _handle(self, message: dict[str, Any], call_id: int, ctx: HostContext | None,
                elapsed: float) -> CallOutcome | None:
        kind = message["type"]
        if kind in ("result", "error") and message["id"] == call_id:
            state = message.get("state")
            if not isinstance(state, dict):
                return CallOutcome("protocol", message="worker sent a state that is not an object",
                                   duration_s=elapsed)
            if kind == "result":
                return CallOutcome("ok", result=message["result"], state=state, duration_s=elapsed)
            return outcome_from_error(message["error"], state, elapsed)
        if kind == "request" and ctx is not None:
            threading.Thread(target=self._serve_request, args=(message, ctx), daemon=True).start()
        elif kind == "notify" and ctx is not None:
            args = message.get("args") or {}
            if message["method"] == "progress":
                ctx.progress(float(args.get("done", 0)), float(args.get("total", 0)), str(args.get("unit", "")))
            elif message["method"] == "log":
                # Not cut here: the call's output budget cuts (run.plugin_log_line_chars) and counts what it cut.
                ctx.log(str(args.get("message", "")), level=str(args.get("level", "info")))
        return None

    def _serve_request(self, message: dict[str, Any], ctx: HostContext) -> None:
        try:
            result = ctx.dispatch(str(message["method"]), message.get("args") or {})
            reply: dict[str, Any] = {"type": "reply", "id": message["id"], "result": result}
        except BaseException as exc:
            reply = {"type": "reply", "id": message["id"], "error": error_to_json(exc)}
        try:
            self._send(reply)
        except ProtocolError as exc:
            self._send({"type": "reply", "id": message["id"],
                        "error": {"kind": "step_failed", "message": str(exc), "retryable": False}})
