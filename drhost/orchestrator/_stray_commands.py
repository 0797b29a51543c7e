"""A failed call's remote command is confirmed stopped before anything else touches its target.

A remote command runs detached on the target (``transport/_remote_jobs.py``): when the connection is lost
mid-step and the reconnect fails, or a step's deadline passes while the link is down, the call ends but the
command may still run there. Compensating (cleanup, rollback) or retrying next to it would let its writes
land after the compensation started. So after such a call, before the step is retried, cleaned up or rolled
back, every command of this run still running on the target is stopped (TERM, grace, KILL, confirmed by
``/proc``), waiting for the target up to ``run.unreachable_wait_s``. A target that stays unreachable gets the
stop recorded in its record (``pending_stop``) and its rollback queued: whatever drives the target next
(``drhost rollback RUN``, ``drhost resume RUN``) performs the stop first (:func:`stop_pending`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from drhost_hookspecs import Stage

from ..errors import RefusedError, message_phrase, phrase
from ..transport import TransportError

if TYPE_CHECKING:
    from ..plan import PlannedStep
    from ._env import Executor, RunEnv

#: The first wait between two tries at a target that does not answer; doubled up to the cap.
_FIRST_DELAY_S = 1.0
_MAX_DELAY_S = 30.0


def _stop_all(executor: Executor, name: str) -> tuple[list[str] | None, str, bool]:
    """One try: the commands stopped (None when the target could not be reached), why not, and whether the
    target refused us (a changed host key, rejected credentials: never waited for, never retried)."""
    try:
        return executor.control(name).stop_leftover_commands(), "", False
    except (TransportError, RefusedError) as exc:
        return None, message_phrase(exc) or type(exc).__name__, isinstance(exc, RefusedError)


def _stop_waiting(env: RunEnv, executor: Executor, name: str) -> tuple[list[str] | None, str, bool]:
    """Try to stop the commands until it works or ``run.unreachable_wait_s`` has passed (backoff 1 s … 30 s)."""
    stopped, why, refused = _stop_all(executor, name)
    if stopped is not None or refused:
        return stopped, why, refused
    budget = float(env.config["run"]["unreachable_wait_s"])
    env.emit("target.unreachable", target=name, wait_s=budget,
             message=phrase("the stop of a command that may still run waits for the target to come back (up to "
                            "{seconds} s): {why}", seconds=f"{budget:g}", why=why))
    deadline = time.monotonic() + budget
    delay = _FIRST_DELAY_S
    while time.monotonic() < deadline:
        if env.stop.wait(min(delay, max(0.0, deadline - time.monotonic()))):
            return None, phrase("{why}; the run is stopping", why=why), False
        delay = min(delay * 2, _MAX_DELAY_S)
        stopped, why, refused = _stop_all(executor, name)
        if stopped is not None:
            env.emit("target.reachable", target=name, message=phrase("the target answers again; the stop goes on"))
        if stopped is not None or refused:
            return stopped, why, refused
    return None, why, False


@dataclass(frozen=True)
class Unstopped:
    """A command that could not be confirmed stopped: the target's status is ``unreachable`` or ``refused``."""

    status: Literal["unreachable", "refused"]
    why: str


def confirm_stopped(env: RunEnv, executor: Executor, name: str, step: PlannedStep, why: str) -> Unstopped | None:
    """After a failed call of ``step``: stop whatever it left running on the target. None when confirmed;
    else the target could not be reached within ``run.unreachable_wait_s`` (or refused us): the stop is
    recorded as pending — it goes first in the target's rollback — and what kept it from being done is
    returned."""
    stopped, unreachable, refused = _stop_waiting(env, executor, name)
    if stopped is not None:
        if stopped:  # a call that ended cleanly left nothing: no line for every failed step
            _said_stopped(env, name, step.stage, step.name, step.plugin, stopped, why)
        return None
    pending = {"stage": step.stage.value, "step": step.name, "plugin": step.plugin, "since": time.time(),
               "why": why, "unreachable": unreachable}
    with env.state.mutate_target(name) as record:
        record["pending_stop"] = pending
    return Unstopped("refused" if refused else "unreachable", unreachable)


def stop_pending(env: RunEnv, executor: Executor, name: str) -> Unstopped | None:
    """Carry out a stop recorded by :func:`confirm_stopped` before anything else touches the target. None
    when there was none or it is done now; else why the target still cannot be reached."""
    with env.state.reading_target(name) as record:
        pending: dict[str, Any] | None = record.get("pending_stop")
    if not pending:
        return None
    stopped, unreachable, refused = _stop_waiting(env, executor, name)
    if stopped is None:
        return Unstopped("refused" if refused else "unreachable", unreachable)
    with env.state.mutate_target(name) as record:
        record["pending_stop"] = None
    _said_stopped(env, name, Stage(pending["stage"]), pending.get("step"), pending.get("plugin"), stopped,
                  f"queued since {time.strftime('%H:%M:%S', time.localtime(float(pending['since'])))}: "
                  f"{pending.get('why')}")
    return None


def _said_stopped(env: RunEnv, name: str, stage: Stage, step: str | None, plugin: str | None, stopped: list[str],
                  why: str) -> None:
    what = ", ".join(stopped) if stopped else phrase("nothing was still running")
    env.emit("step.command_stopped", target=name, stage=stage, step=step, plugin=plugin, stopped=stopped,
             message=phrase("confirmed stopped before anything else touches the target ({why}): {what}", why=why,
                            what=what))


def queued_message(unstopped: Unstopped, step: PlannedStep, run_id: str) -> str:
    """The ``target.rollback_queued`` line when a step's command could not be confirmed stopped."""
    then = phrase("fix what the target refused") if unstopped.status == "refused" \
        else phrase("when the target is back")
    return phrase("{status}: the command of {step} may still run on the target ({why}); its stop is queued first in "
                  "the rollback; {then}, run drhost rollback {run_id}", status=phrase(unstopped.status),
                  step=step.label, why=unstopped.why, then=then, run_id=run_id)
