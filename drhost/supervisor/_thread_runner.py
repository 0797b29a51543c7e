"""Core plugins run in a thread of the host."""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from drhost_hookspecs import LoadedPlugin, OperationName, Stage, VerifyPhase
from drhost_hookspecs._runtime import error_to_json

from .._stdout import plugin_code
from ..context import HostContext
from ..errors import phrase
from ..policy import Isolation
from ._outcome import CallOutcome, outcome_from_error

#: How long the transport may take, beyond the kill grace, to confirm that a stopped command is gone.
COMMAND_STOP_S = 15.0
#: How often the host's resident memory is sampled while a thread-class call runs.
HOST_SAMPLE_EVERY_S = 0.25
_MiB = 1024 * 1024


_PAGE = os.sysconf("SC_PAGE_SIZE")
#: /proc/self/statm, opened once: a read at offset 0 makes it anew, so each sample is one pread instead of an
#: open, a read and a close (each a syscall that hands the GIL over when fifty targets' threads want it).
_statm: int | None = None
_statm_lock = threading.Lock()


def _forget_statm() -> None:
    # A forked child's /proc/self is not its parent's.
    global _statm
    _statm = None


os.register_at_fork(after_in_child=_forget_statm)


def _host_rss() -> int:
    """This process's resident memory in bytes. Read at the start and end of every call of a thread plugin, so
    one pread of /proc/self/statm (0.8 us here; open, read and close, 5 us; a new psutil Process, 20 us)."""
    global _statm
    try:
        if _statm is None:
            with _statm_lock:
                if _statm is None:
                    _statm = os.open(f"/proc/{os.getpid()}/statm", os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(_statm, 128, 0).split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        try:
            return int(psutil.Process().memory_info().rss)
        except psutil.Error:
            return 0


class HostMemoryWatch:
    """The thread class's honest ``memory_mb``: the host's resident memory, sampled while a call runs.

    A plugin in a thread of the host cannot be held to a limit (it shares the host's memory), so nothing is
    enforced. What can be said is whether the host grew past the class figure while the call ran; the
    runner reports it in the outcome's ``host_memory`` and the orchestrator warns and records it.
    """

    def __init__(self, limit_mb: int | None) -> None:
        self.limit_mb = limit_mb
        self.start = self.peak = _host_rss()

    def sample(self) -> None:
        self.peak = max(self.peak, _host_rss())

    def finding(self) -> dict[str, Any] | None:
        """When the call grew the host past the class figure: the numbers; else None."""
        if not self.limit_mb or self.peak <= self.limit_mb * _MiB or self.peak <= self.start:
            return None
        return {"peak_mib": round(self.peak / _MiB), "start_mib": round(self.start / _MiB),
                "memory_mb": self.limit_mb, "enforced": False}


class _Worker:
    """A thread of the host that runs thread-class calls one after another, so that a call does not pay for a
    new thread (its start alone hands the GIL over twice). A call that overruns its grace abandons the worker:
    the thread ends when that call returns and is never given another."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._abandoned = False
        self.thread = threading.Thread(target=self._serve, name="plugin-worker", daemon=True)
        self.thread.start()

    def start(self, name: str, job: Callable[[], None], done: threading.Event) -> None:
        """Run ``job`` in this thread, named ``name`` meanwhile; ``done`` is set when it has returned."""
        def wrapped() -> None:
            try:
                job()
            finally:
                with self._lock:
                    done.set()

        self.thread.name = name
        self._jobs.put(wrapped)

    def abandon(self, done: threading.Event) -> bool:
        """Give up on the call whose ``done`` this is: True when it still runs (its thread is abandoned), False
        when it returned after all."""
        with self._lock:
            if done.is_set():
                return False
            self._abandoned = True
            return True

    def _serve(self) -> None:
        while True:
            self._jobs.get()()
            with self._lock:
                if self._abandoned:
                    return


_IDLE: list[_Worker] = []
_IDLE_LOCK = threading.Lock()
# A forked child has none of its parent's threads.
os.register_at_fork(after_in_child=_IDLE.clear)


def _take_worker() -> _Worker:
    with _IDLE_LOCK:
        if _IDLE:
            return _IDLE.pop()
    return _Worker()


def _give_back(worker: _Worker) -> None:
    with _IDLE_LOCK:
        _IDLE.append(worker)


class ThreadRunner:
    """Core plugins: called in a thread of the host.

    A thread cannot be killed. On timeout the step is asked to stop (its commands
    are ended, ``ctx.sleep`` wakes); a thread that still does not return is left
    behind and reported as hung — trusted code only, and the upgrade aborts.
    """

    isolation: Isolation = "thread"

    def __init__(self, plugin: LoadedPlugin, *, grace_s: float = 3.0, memory_mb: int | None = None) -> None:
        self._plugin = plugin
        self._grace = grace_s
        #: The class's ``memory_mb``: sampled against, never enforced (see HostMemoryWatch).
        self.memory_mb = memory_mb

    def call(self, op: OperationName, ctx: HostContext | None, *, stage: Stage | None = None, step: str | None = None,
             phase: VerifyPhase | None = None, timeout_s: float) -> CallOutcome:
        if op == "describe":
            with plugin_code():
                return CallOutcome("ok", result=self._plugin.describe())
        assert ctx is not None
        box: dict[str, Any] = {}
        started = time.monotonic()

        def target() -> None:
            try:
                box["result"] = self._plugin.invoke(op, ctx, stage=stage, step=step, phase=phase, in_process=True)
            except BaseException as exc:
                box["error"] = error_to_json(exc)

        done = threading.Event()
        worker = _take_worker()
        memory = HostMemoryWatch(self.memory_mb)
        worker.start(f"plugin-{self._plugin.entry_point}-{step or op}", target, done)
        thread = worker.thread
        deadline = started + timeout_s
        while True:
            done.wait(max(0.0, min(HOST_SAMPLE_EVERY_S, deadline - time.monotonic())))
            memory.sample()
            if done.is_set() or time.monotonic() >= deadline:
                break
        timed_out = not done.is_set()
        if timed_out:
            ctx.stop()
            done.wait(self._grace)
            # Stopping a command on a target (TERM, grace, KILL, confirmed gone) outlasts the grace, most of all
            # over SSH on a busy machine: a thread waiting for that stop is not hung.
            if not done.is_set() and ctx.commands_running and ctx.wait_commands_stopped(self._grace + COMMAND_STOP_S):
                done.wait(self._grace)
        hung = timed_out and worker.abandon(done)
        if not hung:
            _give_back(worker)
        duration = time.monotonic() - started
        state = dict(ctx.state)
        grown = memory.finding()
        extra: dict[str, Any] = {} if grown is None else {"host_memory": grown}
        if timed_out:
            return CallOutcome("timeout", message=phrase(
                "no result after {seconds} s{how}", seconds=f"{round(timeout_s, 1):g}",
                how=phrase("; the thread did not stop and was abandoned") if hung else ""), state=state,
                detail={"hung_thread": hung, **extra,
                        # which thread keeps running: the orchestrator marks its target "may still be changing"
                        **({"thread": thread.name, "thread_ident": thread.ident} if hung else {})},
                duration_s=duration)
        if "error" in box:
            failed = outcome_from_error(box["error"], state, duration)
            return dataclasses.replace(failed, detail={**failed.detail, **extra}) if extra else failed
        return CallOutcome("ok", result=box.get("result"), state=state, duration_s=duration, detail=extra)

    def close(self) -> None:
        return None
