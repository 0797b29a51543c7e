"""Can a target be reached, and if not, is it an outage (wait for it) or a refusal (never wait, never retry)?

A changed host key or rejected credentials is the target (or someone in between) refusing us: waiting
``run.unreachable_wait_s`` for it would only delay the operator, and counting it as unreachable would hide an
attack behind the network budget. So every look at a target's reachability says which of the two it is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from ..errors import RefusedError, message_phrase, phrase
from ..events import EventName
from ._env import Executor, RunEnv

#: Backoff between two looks at an unreachable target: from the first delay, doubling, up to the cap.
_FIRST_DELAY_S, _MAX_DELAY_S = 1.0, 30.0
#: How long one look may take: the first in full; one within a wait only what is left of the wait, but at least
#: the floor (a connect needs a moment), so the wait ends within its budget plus that floor.
_LOOK_S, _LOOK_FLOOR_S = 15.0, 2.0


#: How a target answered a look.
ReachStatus = Literal["reachable", "unreachable", "refused"]
#: Why a target was not taken, as the status its record is left in (``aborted``: its install root is missing).
NotTaken = Literal["unreachable", "refused", "locked", "aborted"]
#: The event that tells a target was not taken.
NOT_TAKEN_EVENTS: Final[Mapping[NotTaken, EventName]] = {
    "unreachable": "target.unreachable", "refused": "target.refused", "locked": "target.locked",
    "aborted": "target.aborted",
}


@dataclass(frozen=True)
class Reach:
    """How a target answered: ``reachable``, ``unreachable`` (an outage) or ``refused`` (host key, auth)."""

    status: ReachStatus
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "reachable"


def look(executor: Executor, name: str, timeout_s: float = _LOOK_S) -> Reach:
    """One look at ``name``: a trivial command through its session, within ``timeout_s`` in all."""
    problem = executor.probe(name, timeout_s)
    if problem is None:
        return Reach("reachable")
    # HostKeyError and AuthError are both a TransportError and a RefusedError: the refusal is what counts.
    return Reach("refused" if isinstance(problem, RefusedError) else "unreachable", message_phrase(problem))


def wait_until_reachable(env: RunEnv, executor: Executor, name: str, waiting_for: str) -> Reach:
    """Look at ``name``; while it is unreachable, look again with backoff for ``run.unreachable_wait_s``.

    A refusal ends the wait at once; the wait lasts at most ``unreachable_wait_s`` after the first look (plus
    a last look's floor). ``waiting_for`` says in the ``target.unreachable`` event what needs the
    target (e.g. "rollback"). Returns the last look; ``stop`` (Ctrl-C) ends the wait as unreachable.
    """
    reach = look(executor, name)
    if reach.status != "unreachable":
        return reach
    budget = float(env.config["run"]["unreachable_wait_s"])
    env.emit("target.unreachable", target=name, wait_s=budget,
             message=phrase("{waiting_for} waits for the target to come back (up to {seconds} s): {why}",
                            waiting_for=phrase(waiting_for), seconds=f"{budget:g}", why=reach.why))
    deadline = time.monotonic() + budget
    delay = _FIRST_DELAY_S
    while time.monotonic() < deadline:
        if env.stop.wait(min(delay, max(0.0, deadline - time.monotonic()))):
            return reach
        delay = min(delay * 2, _MAX_DELAY_S)
        reach = look(executor, name, min(_LOOK_S, max(_LOOK_FLOOR_S, deadline - time.monotonic())))
        if reach.status != "unreachable":
            if reach.ok:
                env.emit("target.reachable", target=name,
                         message=phrase("the target answers again; the {waiting_for} continues",
                                        waiting_for=phrase(waiting_for)))
            return reach
    return reach


def queue_rollback(env: RunEnv, name: str, status: NotTaken, why: str | None) -> NotTaken:
    """``name`` needs a rollback this drhost cannot do now: it stays queued (phase ``rollback``) as ``status``
    — ``unreachable`` (resume or `drhost rollback RUN` when it is back), ``refused`` (a changed host key or
    rejected credentials) or ``locked`` (another run holds it): for those two the operator must act first.
    Whatever the record said before (``succeeded`` included) is replaced: the target is not where the run's
    intent wants it."""
    run_id = env.state.run_id
    with env.state.mutate_target(name) as record:
        record["status"], record["phase"] = status, "rollback"
        if why:
            record.setdefault("errors", []).append({"ts": time.time(), "message": why, "action": "rollback queued"})
    if status == "unreachable":
        then = phrase("when the target is back run drhost rollback {run_id}", run_id=run_id)
    else:
        # The refusal in full (for a host key: OpenSSH's banner with both fingerprints; for a lock: its owner)
        # is the operator's evidence; ``target.unreachable`` was said when the wait began.
        env.emit(NOT_TAKEN_EVENTS[status], target=name,
                 message=why or phrase("the target is {status}", status=phrase(status)))
        then = phrase("fix what refused it (see above), then run drhost rollback {run_id}", run_id=run_id)
    env.emit("target.rollback_queued", target=name, status=status,
             message=phrase("{status}: rollback queued; {then}", status=phrase(status), then=then))
    return status


__all__ = ["Reach", "look", "queue_rollback", "wait_until_reachable"]
