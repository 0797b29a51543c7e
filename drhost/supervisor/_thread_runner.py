"""Core plugins run in a thread of the host."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
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


def _host_rss() -> int:
    """This process's resident memory in bytes. Read at the start and end of every call of a thread plugin, so
    one small read of /proc/self/statm (5 us here; a new psutil Process and its memory_info, 20 us)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
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

        thread = threading.Thread(target=target, name=f"plugin-{self._plugin.entry_point}-{step or op}", daemon=True)
        memory = HostMemoryWatch(self.memory_mb)
        thread.start()
        deadline = started + timeout_s
        while True:
            thread.join(max(0.0, min(HOST_SAMPLE_EVERY_S, deadline - time.monotonic())))
            memory.sample()
            if not thread.is_alive() or time.monotonic() >= deadline:
                break
        timed_out = thread.is_alive()
        if timed_out:
            ctx.stop()
            thread.join(self._grace)
            # Stopping a command on a target (TERM, grace, KILL, confirmed gone) outlasts the grace, most of all
            # over SSH on a busy machine: a thread waiting for that stop is not hung.
            if thread.is_alive() and ctx.commands_running and ctx.wait_commands_stopped(self._grace + COMMAND_STOP_S):
                thread.join(self._grace)
        duration = time.monotonic() - started
        state = dict(ctx.state)
        grown = memory.finding()
        extra: dict[str, Any] = {} if grown is None else {"host_memory": grown}
        if timed_out:
            hung = thread.is_alive()
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
