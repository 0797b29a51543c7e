"""How busy a machine is right now: CPU, memory and disk IO, measured from two samples an interval apart.

A single reading of /proc/stat or /proc/diskstats holds counters since boot, which say nothing about
"now"; only the difference between two readings does. The target side is one constant POSIX-sh script
that needs nothing but ``sh``, ``cat`` and ``sleep`` there, so it works on any host drhost can reach.
Every function here returns :class:`Environment` with None for what could not be measured and never
raises: the callers are watchdog threads that must keep running whatever the target does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import psutil

from ..transport import TargetSession
from ._messages import Environment

__all__ = ["parse_sample", "sample_controller", "sample_target"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_MARK = "==drhost-sample=="

# "$1" is the interval in seconds. The two counter readings sit right next to the sleep so that the
# interval between them is as close to "$1" as the shell allows; meminfo is a level, not a counter,
# and needs only one reading. `read` is a builtin: the `cpu ` line costs no extra process.
_SAMPLE_SCRIPT = """\
echo '==drhost-sample== meminfo'
cat /proc/meminfo
echo '==drhost-sample== stat1'
read -r line < /proc/stat && printf '%s\\n' "$line"
echo '==drhost-sample== diskstats1'
cat /proc/diskstats
sleep "$1"
echo '==drhost-sample== stat2'
read -r line < /proc/stat && printf '%s\\n' "$line"
echo '==drhost-sample== diskstats2'
cat /proc/diskstats
echo '==drhost-sample== end'
"""

# Devices that are not disks: their busy time says nothing about the machine's storage.
_NOT_DISKS = ("loop", "ram", "zram")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _clamp(value: float) -> float:
    return min(100.0, max(0.0, value))


def _sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(_MARK + " "):
            current = sections.setdefault(line[len(_MARK) + 1 :].strip(), [])
        elif current is not None:
            current.append(line)
    return sections


def _cpu_counters(lines: list[str] | None) -> tuple[int, int] | None:
    """(busy, total) jiffies from the aggregate ``cpu `` line, or None when it is missing or garbled."""
    for line in lines or ():
        fields = line.split()
        if not fields or fields[0] != "cpu":
            continue
        try:
            values = [int(v) for v in fields[1:9]]
        except ValueError:
            return None
        if len(values) < 4:
            return None
        # guest and guest_nice (fields 9, 10) are already counted in user and nice: leave them out.
        total = sum(values)
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # iowait is idle: the CPU could run work
        return total - idle, total
    return None


def _cpu_percent_between(first: list[str] | None, second: list[str] | None) -> float | None:
    a, b = _cpu_counters(first), _cpu_counters(second)
    if a is None or b is None:
        return None
    busy, total = b[0] - a[0], b[1] - a[1]
    if total <= 0 or busy < 0:
        return None
    return _clamp(100.0 * busy / total)


def _memory_percent(lines: list[str] | None) -> float | None:
    values: dict[str, int] = {}
    for line in lines or ():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key.strip()] = int(fields[0])
    total = values.get("MemTotal")
    if not total:
        return None
    available = values.get("MemAvailable")
    if available is None:
        # Kernels before 3.14 have no MemAvailable; free + reclaimable caches is the classic estimate.
        parts = [values.get(k) for k in ("MemFree", "Buffers", "Cached")]
        if any(p is None for p in parts):
            return None
        available = sum(p for p in parts if p is not None)
    return _clamp(100.0 * (total - available) / total)


def _whole_disks(names: Iterable[str]) -> set[str]:
    """The names that are whole disks: no loop/ram/zram devices and no partitions.

    /proc/diskstats lists partitions next to their disk (sda1 next to sda, nvme0n1p2 next to nvme0n1,
    mmcblk0p1 next to mmcblk0); a partition's busy time is already part of its disk's, so a name whose
    trailing number (and the ``p`` before it) strips to another listed name is a partition.
    """
    listed = set(names)
    disks = set()
    for name in listed:
        if name.startswith(_NOT_DISKS):
            continue
        base = name.rstrip("0123456789")
        if base != name and (base in listed or (base.endswith("p") and base[:-1] in listed)):
            continue
        disks.add(name)
    return disks


def _io_ticks(lines: list[str] | None) -> dict[str, int]:
    ticks: dict[str, int] = {}
    for line in lines or ():
        fields = line.split()
        # Field 13 (1-based) is io_ticks: milliseconds the device had I/O in flight.
        if len(fields) >= 13 and fields[12].isdigit():
            ticks[fields[2]] = int(fields[12])
    return ticks


def _busy_percent(first: Mapping[str, float], second: Mapping[str, float], interval_s: float) -> float | None:
    """The busiest whole disk's share of ``interval_s`` spent doing I/O, from busy milliseconds per device."""
    if interval_s <= 0:
        return None
    disks = _whole_disks(set(first) & set(second))
    deltas = [second[d] - first[d] for d in disks if second[d] >= first[d]]
    if not deltas:
        return None
    return _clamp(100.0 * max(deltas) / (interval_s * 1000.0))


def parse_sample(text: str, interval_s: float) -> Environment:
    """The :class:`Environment` measured by one run of the sample script; unreadable parts are None."""
    sections = _sections(text)
    cpu = _cpu_percent_between(sections.get("stat1"), sections.get("stat2"))
    memory = _memory_percent(sections.get("meminfo"))
    io = _busy_percent(_io_ticks(sections.get("diskstats1")), _io_ticks(sections.get("diskstats2")), interval_s)
    return Environment(cpu_percent=_round(cpu), memory_percent=_round(memory), disk_io_percent=_round(io))


def sample_target(session: TargetSession, *, interval_s: float = 0.5, timeout_s: float = 5.0) -> Environment:
    """CPU, memory and disk IO of the target behind ``session`` over ``interval_s``; all None if it fails."""
    argv = ["/bin/sh", "-c", _SAMPLE_SCRIPT, "drhost-sample", str(interval_s)]
    try:
        result = session.run(argv, timeout=timeout_s)
        if result.returncode != 0:
            log.debug("resource sample on %s exited %s: %s", session.name, result.returncode,
                      result.stderr.strip()[-500:])
            return Environment()
        return parse_sample(result.stdout, interval_s)
    except Exception as exc:  # a watchdog thread must survive anything the transport does
        log.debug("resource sample on %s failed: %s: %s", getattr(session, "name", "?"), type(exc).__name__, exc)
        return Environment()


def _disk_busy_ms() -> dict[str, float]:
    counters = psutil.disk_io_counters(perdisk=True, nowrap=True) or {}
    # busy_time exists on Linux (and FreeBSD); elsewhere disk IO stays unknown.
    return {name: float(c.busy_time) for name, c in counters.items() if hasattr(c, "busy_time")}


def _attempt(what: str, measure: Callable[[], _T]) -> _T | None:
    try:
        return measure()
    except Exception as exc:  # one unmeasurable figure must not cost the others
        log.debug("controller %s unavailable: %s: %s", what, type(exc).__name__, exc)
        return None


def sample_controller(*, interval_s: float = 0.5) -> Environment:
    """CPU, memory and disk IO of this machine (the controller) over ``interval_s``; never raises."""
    disks_before = _attempt("disk counters", _disk_busy_ms)
    started = time.monotonic()
    cpu = _attempt("CPU", lambda: float(psutil.cpu_percent(interval=interval_s)))
    # Without the CPU wait, the disk delta still needs its interval.
    time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
    elapsed = time.monotonic() - started
    disks_after = _attempt("disk counters", _disk_busy_ms)
    io = _busy_percent(disks_before, disks_after, elapsed) if disks_before and disks_after else None
    memory = _attempt("memory", lambda: float(psutil.virtual_memory().percent))
    return Environment(cpu_percent=_round(None if cpu is None else _clamp(cpu)), memory_percent=_round(memory),
                       disk_io_percent=_round(io))
