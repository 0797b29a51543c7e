"""Honest endings: the limit that stopped a worker's call, named from the kernel's own counters.

:class:`LimitWatch` follows a sandbox's limit counters over one call (``limit_counters()`` of the cgroup
and container sandboxes: forks refused at the pids limit, OOM kills, CPU-quota throttling): a baseline when
the call starts, the latest while it runs — a container's cgroups vanish with the container, so the last
sample is what is left. :func:`name_limit` turns the call's outcome into the limit's ending when a counter
or a sampled figure shows that limit was reached, and adds to a timeout how much the class's CPU share
throttled the step.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from ._outcome import CallOutcome, Ending, LimitEnding
from ._sandbox import Sandbox

#: Counters that count events (a baseline of 0 when first seen mid-call: a fresh worker starts at 0).
_EVENT_COUNTERS = ("pids_refused", "oom_kill")
#: Endings a limit can replace; the others (ok, skipped, cancelled by the operator, protocol) stay as they are.
_NAMEABLE: tuple[Ending, ...] = ("failed", "crashed", "killed", "memory", "pids", "cpu_time")
_MiB = 1024 * 1024


class LimitWatch:
    """The sandbox's limit counters over one call: what each grew by since the call started."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._read = sandbox.limit_counters
        self.start: dict[str, float] = self._counters()
        self.latest: dict[str, float] = dict(self.start)

    def _counters(self) -> dict[str, float]:
        try:
            found = self._read()
        except (OSError, ValueError):
            return {}
        return {k: float(v) for k, v in found.items() if isinstance(v, (int, float))}

    def sample(self) -> None:
        for key, value in self._counters().items():
            # A counter first seen mid-call (a container whose pid was not known yet): events count from 0,
            # CPU periods from the first reading (a warm worker's earlier calls are not this call's).
            self.start.setdefault(key, 0.0 if key in _EVENT_COUNTERS else value)
            self.latest[key] = max(self.latest.get(key, value), value)

    def grown(self, key: str) -> float:
        return max(0.0, self.latest.get(key, 0.0) - self.start.get(key, 0.0))

    def throttle(self, cpu_percent: Any, duration_s: float) -> dict[str, Any] | None:
        """How much the CPU quota throttled the call: the share of its CPU periods in which it was throttled.

        None unless the throttling was material: held back at least 0.1 s and 5 % of the call's time (a worker
        that sleeps is throttled in a period or two of its own start-up, which explains no timeout).
        """
        periods, throttled = self.grown("nr_periods"), self.grown("nr_throttled")
        if periods <= 0 or throttled <= 0 or not cpu_percent:
            return None
        if self.grown("throttled_s") < max(0.1, 0.05 * duration_s):
            return None
        return {"percent": min(100, round(100 * throttled / periods)), "cpu_percent": int(cpu_percent),
                "periods": int(periods), "throttled_periods": int(throttled),
                "throttled_s": round(self.grown("throttled_s"), 2)}


def throttle_text(throttle: Mapping[str, Any]) -> str:
    """``throttled 92% of the time by cpu_percent = 20 (cpu.stat: 46 of 50 periods, 3.7 s)``."""
    return (f"throttled {throttle['percent']}% of the time by cpu_percent = {throttle['cpu_percent']} "
            f"(cpu.stat: {throttle['throttled_periods']} of {throttle['periods']} periods, "
            f"{throttle['throttled_s']:g} s)")


def name_limit(outcome: CallOutcome, limits: LimitWatch, peak: Mapping[str, Any], sandbox: Sandbox) -> CallOutcome:
    """The outcome, with the limit that stopped the call named: its ending, ``detail["limit"]`` and
    ``detail["limit_text"]``, and the message led by the limit; a timeout says how the CPU share throttled it."""
    if outcome.ended == "timeout":
        return _timeout(outcome, limits, sandbox)
    if outcome.ended not in _NAMEABLE:
        return outcome
    limits.sample()
    detail = dict(outcome.detail)
    limit = str(detail.get("limit") or "")
    refused = int(limits.grown("pids_refused"))
    pids_limit = sandbox.process_limit
    message = outcome.message
    ended: LimitEnding
    if refused or limit == "pids":
        text = f"pids limit {pids_limit} reached" if pids_limit else "pids limit reached"
        if refused:
            detail["pids_refused"] = refused
        if "pids limit" not in message:
            counted = f" (fork refused {refused} times)" if refused else ""
            message = f"{text}{counted}: {message}"
        ended, retryable = "pids", False
    elif limit == "memory" or outcome.ended == "memory":
        memory = sandbox.memory_limit_bytes
        text = f"memory limit {memory // _MiB} MiB" if memory else "memory limit"
        ended, retryable = "memory", outcome.retryable
    elif limit == "cpu_time":
        found = re.search(r"CPU time limit \S+ s", message)
        text = f"{found.group(0)} reached" if found else "CPU time limit reached"
        ended, retryable = "cpu_time", False
    else:
        return outcome
    if peak and "usage" not in detail:
        detail["usage"] = dict(peak)
    detail.update(limit=ended, limit_text=text)
    return dataclasses.replace(outcome, ended=ended, message=message, retryable=retryable, detail=detail)


def _timeout(outcome: CallOutcome, limits: LimitWatch, sandbox: Sandbox) -> CallOutcome:
    limits.sample()
    detail = dict(outcome.detail)
    extra: list[str] = []
    throttle = limits.throttle(sandbox.cpu_percent, outcome.duration_s)
    if throttle is not None:
        detail["cpu_throttled"] = throttle
        extra.append(throttle_text(throttle))
    refused = int(limits.grown("pids_refused"))
    pids_limit = sandbox.process_limit
    if refused and pids_limit:
        detail["pids_refused"] = refused
        extra.append(f"pids limit {pids_limit} reached during the step (fork refused {refused} times)")
    if not extra:
        return outcome
    return dataclasses.replace(outcome, message=f"{outcome.message}; {'; '.join(extra)}", detail=detail)
