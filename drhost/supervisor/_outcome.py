"""What a call into a plugin came to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from ..i18n import N_

#: Endings that name a limit of the sandbox (``detail["limit"]`` says which; ``detail["limit_text"]`` in words).
LimitEnding = Literal["memory", "pids", "cpu_time"]
#: How a call ended, from the host's point of view. A limit that stopped the plugin is its own ending:
#: ``memory`` (memory cgroup OOM kill, container memory limit, the sampled limit of the rlimit sandbox),
#: ``pids`` (the process limit: pids cgroup, ``--pids-limit``, or the sampled count), ``cpu_time`` (RLIMIT_CPU).
#: A Literal, not an Enum: endings are written into the run's state and events as they are.
Ending = Literal["ok", "failed", "skipped", "up_to_date", "timeout", "crashed", "killed", LimitEnding, "cancelled",
                 "protocol"]
ENDINGS: Final[tuple[Ending, ...]] = get_args(Ending)
LIMIT_ENDINGS: Final[tuple[LimitEnding, ...]] = get_args(LimitEnding)


@dataclass(frozen=True)
class CallOutcome:
    """The result of one operation on one plugin for one target.

    ``ended`` is one of :data:`ENDINGS`. ``retryable`` is False when the plugin said so
    or when the failure makes a retry pointless. ``state`` is the plugin's state after
    the call (also after a failure: a plugin may record what it did before failing).
    """

    ended: Ending
    result: Any = None
    message: str = ""
    retryable: bool = True
    state: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.ended == "ok"


def outcome_from_error(error: dict[str, Any], state: dict[str, Any], duration_s: float) -> CallOutcome:
    """Map an error reported by plugin code (in a thread or a worker) to an outcome."""
    kind = str(error.get("kind", "exception"))
    message = str(error.get("message", ""))
    if kind == "skip":
        return CallOutcome("skipped", message=message, state=state, duration_s=duration_s)
    if kind == "up_to_date":
        return CallOutcome("up_to_date", result=error.get("version"), message=message, state=state,
                           duration_s=duration_s)
    if kind == "cancelled":
        return CallOutcome("cancelled", message=N_("stopped by the host"), state=state, duration_s=duration_s)
    # The worker's error kinds (drhost_hookspecs' protocol) that are endings of their own.
    endings: dict[str, Ending] = {"memory": "memory", "crash": "crashed"}
    ended = endings.get(kind, "failed")
    if kind == "exception":
        message = f"{error.get('type', 'Exception')}: {message}"
    return CallOutcome(
        ended, message=message, retryable=bool(error.get("retryable", True)), state=state,
        detail={"traceback": error.get("traceback", "")}, duration_s=duration_s,
    )
