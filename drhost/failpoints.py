"""Failpoints: named places where the controller can be made to die, to prove that a run survives it.

``DRHOST_FAILPOINT=NAME[@N][+SECONDS]`` kills this process with SIGKILL the N-th time (default: the first)
the code reaches ``NAME``; with ``+SECONDS`` the kill comes that long after, from a background thread,
so it lands in the middle of whatever follows (a step, a write). SIGKILL because nothing may run on the
way out: no ``finally``, no atexit, no flush — exactly a power cut of the controller.

Unset (production), a failpoint costs one comparison. ``DRHOST_FAILPOINT_LOG=FILE`` appends every
name reached to FILE: the crash-matrix test records a clean run that way and kills at points it saw.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

__all__ = ["ENV", "LOG_ENV", "FailpointSpec", "failpoint", "parse_spec"]

ENV = "DRHOST_FAILPOINT"
LOG_ENV = "DRHOST_FAILPOINT_LOG"


@dataclass(frozen=True)
class FailpointSpec:
    name: str
    hit: int = 1
    delay_s: float = 0.0


def parse_spec(value: str) -> FailpointSpec:
    """``NAME[@N][+SECONDS]``; raise ValueError naming the variable and what is wrong."""
    rest, plus, delay = value.partition("+")
    name, at, hit = rest.partition("@")
    try:
        spec = FailpointSpec(name.strip(), int(hit) if at else 1, float(delay) if plus else 0.0)
    except ValueError:
        raise ValueError(f"{ENV}={value!r}: expected NAME[@N][+SECONDS]") from None
    if not spec.name or spec.hit < 1 or spec.delay_s < 0:
        raise ValueError(f"{ENV}={value!r}: expected NAME[@N][+SECONDS] with N >= 1 and SECONDS >= 0")
    return spec


def _spec_from_environment() -> FailpointSpec | None:
    try:
        return parse_spec(os.environ[ENV]) if os.environ.get(ENV) else None
    except ValueError:
        # Not at import (that would be a traceback before any command runs): drhost._environment refuses the
        # value, naming it, before a command starts.
        return None


_SPEC = _spec_from_environment()
_LOG = os.environ.get(LOG_ENV) or None
_hits = 0
_lock = threading.Lock()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def failpoint(name: str) -> None:
    """Die here if ``DRHOST_FAILPOINT`` names this point (and this is the hit it counts to)."""
    if _LOG is not None:
        with _lock, open(_LOG, "a", encoding="utf-8") as log:
            log.write(name + "\n")
    spec = _SPEC
    if spec is None or spec.name != name:
        return
    global _hits
    with _lock:
        _hits += 1
        if _hits != spec.hit:
            return
    if spec.delay_s <= 0:
        _die()
        return

    def later() -> None:
        time.sleep(spec.delay_s)
        _die()

    threading.Thread(target=later, name="failpoint", daemon=True).start()
