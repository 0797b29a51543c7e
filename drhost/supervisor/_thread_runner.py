"""Core plugins run in a thread of the host."""

from __future__ import annotations

import threading
import time
from typing import Any

from drhost_hookspecs import LoadedPlugin, Stage, VerifyPhase
from drhost_hookspecs._protocol import error_to_json

from ..context import HostContext
from ._outcome import CallOutcome, outcome_from_error

#: How long the transport may take, beyond the kill grace, to confirm that a stopped command is gone.
COMMAND_STOP_S = 15.0


class ThreadRunner:
    """Core plugins: called in a thread of the host.

    A thread cannot be killed. On timeout the step is asked to stop (its commands
    are ended, ``ctx.sleep`` wakes); a thread that still does not return is left
    behind and reported as hung — trusted code only, and the upgrade aborts.
    """

    isolation = "thread"

    def __init__(self, plugin: LoadedPlugin, *, grace_s: float = 3.0) -> None:
        self._plugin = plugin
        self._grace = grace_s

    def call(self, op: str, ctx: HostContext | None, *, stage: Stage | None = None, step: str | None = None,
             phase: VerifyPhase | None = None, timeout_s: float) -> CallOutcome:
        if op == "describe":
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
        thread.start()
        thread.join(timeout_s)
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
        if timed_out:
            hung = thread.is_alive()
            return CallOutcome("timeout", message=f"no result after {round(timeout_s, 1):g} s" + (
                "; the thread did not stop and was abandoned" if hung else ""), state=state,
                detail={"hung_thread": hung}, duration_s=duration)
        if "error" in box:
            return outcome_from_error(box["error"], state, duration)
        return CallOutcome("ok", result=box.get("result"), state=state, duration_s=duration)

    def close(self) -> None:
        return None
