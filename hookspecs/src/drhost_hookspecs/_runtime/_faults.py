"""Fault injection, so operators can drill failure handling and tests can exercise it.

A plugin's config key ``fault`` holds ``STEP:KIND[:TIMES][@TARGET]`` (several
separated by commas); with ``@TARGET`` only that target is hit, so a fleet drill
can fail one host of a batch. KIND is one of ``fail``, ``hang``, ``crash``, ``oom``,
``slow``, ``remote_hang``. TIMES limits
how many calls of the step are hit (default: every call), which lets a drill show
a retry that succeeds. The runtime applies faults before the step runs, so every
plugin honours them without code of its own.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass

from .._context import Context
from .._errors import StepFailed

FAULT_KINDS = ("fail", "hang", "crash", "oom", "slow", "remote_hang")
_HITS_KEY = "_drhost_fault_hits"


class InjectedCrash(RuntimeError):
    """Stands in for a crash where a real one would take the host down (thread isolation)."""


@dataclass(frozen=True)
class FaultSpec:
    step: str
    kind: str
    times: int | None = None
    target: str | None = None


def parse_faults(value: str) -> list[FaultSpec]:
    """Parse a ``fault`` setting; raise ValueError naming what is wrong."""
    specs: list[FaultSpec] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        spec_text, at, target = item.partition("@")
        if at and not target.strip():
            raise ValueError(f"fault {item!r}: expected a target name after '@'")
        parts = spec_text.split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError(f"fault {item!r}: expected STEP:KIND[:TIMES][@TARGET]")
        step, kind = parts[0], parts[1]
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault {item!r}: kind must be one of {', '.join(FAULT_KINDS)}, found {kind!r}")
        times = None
        if len(parts) == 3:
            if not parts[2].isdigit() or int(parts[2]) < 1:
                raise ValueError(f"fault {item!r}: TIMES must be a whole number >= 1, found {parts[2]!r}")
            times = int(parts[2])
        specs.append(FaultSpec(step, kind, times, target.strip() or None))
    return specs


def inject(ctx: Context, step: str, *, in_process: bool, memory_limit_bytes: int | None = None) -> None:
    """Apply the fault configured for ``step``, if any."""
    config: Mapping[str, object] = ctx.config
    raw = config.get("fault")
    if not raw:
        return
    for spec in parse_faults(str(raw)):
        if spec.step != step or (spec.target is not None and spec.target != ctx.target.name):
            continue
        hits = dict(ctx.state.get(_HITS_KEY, {}))
        count = int(hits.get(step, 0))
        if spec.times is not None and count >= spec.times:
            continue
        hits[step] = count + 1
        ctx.state[_HITS_KEY] = hits
        # Durable before the fault strikes: a crash or kill must not reset the count.
        ctx.checkpoint()
        _apply(ctx, spec, in_process=in_process, memory_limit_bytes=memory_limit_bytes)


def _apply(ctx: Context, spec: FaultSpec, *, in_process: bool, memory_limit_bytes: int | None) -> None:
    ctx.log(f"injected fault {spec.kind!r} in step {spec.step!r}", level="warning")
    if spec.kind == "fail":
        raise StepFailed(f"injected fault: {spec.step} failed")
    if spec.kind == "slow":
        # Reported like real work, so a drill shows progress lines and the ETA refined by them.
        delay = float(str(ctx.config.get("fault_delay_s", 3)))
        ticks = max(1, int(delay))
        for tick in range(ticks):
            ctx.progress(tick, ticks, "seconds")
            ctx.sleep(delay / ticks)
        ctx.progress(ticks, ticks, "seconds")
        return
    if spec.kind == "hang":
        while True:
            ctx.sleep(3600)
    if spec.kind == "remote_hang":
        # A command on the target that never ends: only the step's deadline, killing its process group, ends it.
        ctx.run(["sleep", "86400"])
    if spec.kind == "crash":
        if in_process:
            raise InjectedCrash(f"injected fault: {spec.step} crashed")
        # A real crash, as a C extension has it: the kernel's SIGSEGV ends the worker wherever it runs, also as
        # pid 1 of its own pid namespace (where a signal the worker sends itself would be ignored).
        ctypes.string_at(0)
    if spec.kind == "oom":
        if in_process:
            # A thread shares the host's memory: a real bomb would take the host with it.
            raise MemoryError(f"injected fault: {spec.step} ran out of memory (in-process, simulated)")
        _allocate_until_stopped(memory_limit_bytes)


def _allocate_until_stopped(limit: int | None) -> None:
    chunk = 32 * 1024 * 1024
    # Bounded so a worker without any limit still stops on its own.
    ceiling = (limit * 4) if limit else 8 * 1024**3
    hoard: list[bytes] = []
    total = 0
    while total < ceiling:
        hoard.append(b"\x01" * chunk)  # written, so the pages are really resident
        total += chunk
    raise MemoryError(f"allocated {total} bytes without being stopped")
