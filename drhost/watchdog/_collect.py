"""The context saved when a step times out: what the target and the controller were doing at that moment.

A timeout message can say only so much; the operator's next question is "what was the machine busy
with?". The target side is read from /proc by constant POSIX-sh scripts through the step's own
:class:`TargetSession`, so it works over SSH without installing anything (no ps, no python there).
Every part is collected on its own: a part that fails leaves its key None and a line in ``errors``,
and nothing here raises, because the caller is a watchdog reporting a failure already.
"""

from __future__ import annotations

import datetime
import logging
import re
import secrets
import socket
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from ..transport import TargetSession
from ._resources import sample_controller, sample_target

__all__ = ["collect_controller_context", "collect_target_context"]

log = logging.getLogger(__name__)

TOP_PROCESSES = 15
MAX_CONNECTIONS = 50
MAX_LOG_LINES = 50
CMDLINE_CHARS = 300
# Only the tail of each log is searched: a multi-gigabyte log must not stall the report of a timeout.
LOG_TAIL_BYTES = 4 * 1024 * 1024
LOG_PATTERN = re.compile(r"error|warn|fatal|critical|traceback", re.IGNORECASE)

# "$1" is a per-call random marker that starts each section (no log line or command name can forge it);
# "$2" is the install root, only ever expanded inside double quotes; "$3".."$5" are the limits above.
# Per-process fields are cut out by the shell itself (builtins only, no process per pid) so a host with
# thousands of processes still answers in a few hundred kilobytes; comm may hold spaces and ')', so it
# is split at the last ')'.
# The units line carries what turns ticks and pages into seconds and kB, and the shell's own pid.
# TCP sockets are reduced to "local remote state" by sed; listening sockets come first so the ones an
# operator looks for survive the cap on entries.
_TARGET_SCRIPT = r"""
m=$1
root=$2
log_bytes=$3
log_lines=$4
max_conns=$5
printf '%s loadavg\n' "$m"
cat /proc/loadavg
printf '%s meminfo\n' "$m"
cat /proc/meminfo
printf '%s units\n' "$m"
printf '%s %s %s\n' "$(getconf CLK_TCK 2>/dev/null || echo 100)" "$(getconf PAGESIZE 2>/dev/null || echo 4096)" "$$"
printf '%s processes\n' "$m"
for d in /proc/[0-9]*; do
  { read -r line < "$d/stat"; } 2>/dev/null || continue
  rest=${line##*)}
  head=${line%)*}
  set -f
  set -- $rest
  set +f
  printf '%s %s %s %s %s %s %s\n' "${d#/proc/}" "$2" "$1" "${12}" "${13}" "${22}" "${head#*(}"
done
if [ -r /proc/net/tcp ]; then
  x='[0-9A-Fa-f]*'
  conns=$(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
    sed -n "s/^ *[0-9]*: *\($x:$x\) \($x:$x\) \($x\) .*/\1 \2 \3/p")
  printf '%s tcp-states\n' "$m"
  printf '%s\n' "$conns" | cut -d ' ' -f 3 | sort | uniq -c
  printf '%s tcp-listen\n' "$m"
  printf '%s\n' "$conns" | grep ' 0A$' | head -n "$max_conns"
  printf '%s tcp-other\n' "$m"
  printf '%s\n' "$conns" | grep -v ' 0A$' | head -n "$max_conns"
fi
if [ -d "$root/log" ]; then
  printf '%s logs\n' "$m"
  for f in "$root"/log/*.log; do
    [ -f "$f" ] || continue
    printf '%s log %s\n' "$m" "$f"
    tail -c "$log_bytes" < "$f" | tr -d '\000' | LC_ALL=C grep -i -E 'error|warn|fatal|critical|traceback' |
      tail -n "$log_lines"
  done
fi
printf '%s end\n' "$m"
"""

# "$1" is the marker, the other arguments are pids (digits, checked by the caller). NULs separate the
# arguments in /proc/PID/cmdline; they become spaces, as in ps.
_CMDLINE_SCRIPT = r"""
m=$1
shift
for p in "$@"; do
  printf '%s %s\n' "$m" "$p"
  tr '\000' ' ' < "/proc/$p/cmdline" 2>/dev/null | head -c 300
  printf '\n'
done
printf '%s end\n' "$m"
"""

_TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
    "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
    "0C": "NEW_SYN_RECV",
}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _sections(text: str, marker: str) -> list[tuple[str, list[str]]]:
    """``(header, lines)`` per section; the header is what follows the marker on its line."""
    sections: list[tuple[str, list[str]]] = []
    prefix = marker + " "
    for line in text.splitlines():
        if line.startswith(prefix):
            sections.append((line[len(prefix):], []))
        elif sections:
            sections[-1][1].append(line)
    return sections


# ---------------------------------------------------------------------------- parsers (pure)


def parse_loadavg(lines: list[str]) -> dict[str, Any]:
    """``0.52 0.58 0.59 2/1234 56789`` → load1/5/15 and the running/total scheduling entities."""
    fields = lines[0].split()
    running, total = fields[3].split("/")
    return {"load1": float(fields[0]), "load5": float(fields[1]), "load15": float(fields[2]),
            "running": int(running), "total": int(total)}


def parse_meminfo(lines: list[str]) -> dict[str, int]:
    """MemTotal, MemAvailable, SwapTotal, SwapFree in kB (MemAvailable may be absent on old kernels)."""
    wanted = {"MemTotal": "mem_total_kb", "MemAvailable": "mem_available_kb",
              "SwapTotal": "swap_total_kb", "SwapFree": "swap_free_kb"}
    found: dict[str, int] = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in wanted and rest.split() and rest.split()[0].isdigit():
            found[wanted[key]] = int(rest.split()[0])
    if "mem_total_kb" not in found:
        raise ValueError("no MemTotal in /proc/meminfo")
    return found


def parse_processes(lines: list[str], clock_ticks: int, page_size: int) -> list[dict[str, Any]]:
    """One dict per line ``pid ppid state utime stime rss comm`` (utime/stime in ticks, rss in pages)."""
    processes = []
    for line in lines:
        fields = line.split(" ", 6)
        if len(fields) < 6:
            continue
        try:
            pid, ppid, utime, stime, rss = (int(fields[i]) for i in (0, 1, 3, 4, 5))
        except ValueError:
            continue  # a process that ended mid-read, or a comm with a newline in it
        processes.append({
            "pid": pid, "ppid": ppid, "comm": fields[6] if len(fields) > 6 else "", "state": fields[2],
            "rss_kb": rss * page_size // 1024, "cpu_time_s": round((utime + stime) / clock_ticks, 2),
            "cmdline": None,
        })
    if not processes:
        raise ValueError("no process could be read from /proc")
    return processes


def top_processes(processes: list[dict[str, Any]], n: int = TOP_PROCESSES) -> dict[str, list[dict[str, Any]]]:
    """The ``n`` largest by resident memory and the ``n`` busiest by CPU time consumed since they started."""
    return {
        "by_rss": sorted(processes, key=lambda p: (-p["rss_kb"], p["pid"]))[:n],
        "by_cpu_time": sorted(processes, key=lambda p: (-p["cpu_time_s"], p["pid"]))[:n],
    }


def decode_address(text: str) -> str:
    """``0100007F:1F90`` → ``127.0.0.1:8080``; IPv6 as ``[::1]:8080``. The kernel prints the address as
    the in-memory 32-bit words in host order (little-endian here) and the port already in host order."""
    address, port_hex = text.split(":")
    port = int(port_hex, 16)
    words = [int(address[i:i + 8], 16) for i in range(0, len(address), 8)]
    packed = struct.pack(f"<{len(words)}I", *words)
    if len(packed) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, packed)}:{port}"
    if len(packed) == 16:
        return f"[{socket.inet_ntop(socket.AF_INET6, packed)}]:{port}"
    raise ValueError(f"not a /proc/net/tcp address: {text!r}")


def _state_name(code: str) -> str:
    return _TCP_STATES.get(code.upper(), f"UNKNOWN_{code.upper()}")


def parse_connections(state_lines: list[str], entry_lines: list[str],
                      limit: int = MAX_CONNECTIONS) -> dict[str, Any]:
    """Counts per TCP state (from ``uniq -c`` lines) and up to ``limit`` decoded ``local remote state`` lines."""
    counts: dict[str, int] = {}
    for line in state_lines:
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and re.fullmatch(r"[0-9A-Fa-f]{2}", fields[1]):
            name = _state_name(fields[1])
            counts[name] = counts.get(name, 0) + int(fields[0])
    entries = []
    for line in entry_lines:
        fields = line.split()
        if len(fields) != 3:
            continue
        try:
            entries.append({"local": decode_address(fields[0]), "remote": decode_address(fields[1]),
                            "state": _state_name(fields[2])})
        except (ValueError, OSError, struct.error):
            continue
        if len(entries) >= limit:
            break
    return {"total": sum(counts.values()), "states": counts, "entries": entries}


# ---------------------------------------------------------------------------- the target


def _run_script(session: TargetSession, script: str, args: list[str], deadline: float) -> str:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no time left in the collection's budget")
    result = session.run(["/bin/sh", "-c", script, "drhost-collect", *args], timeout=remaining)
    if result.returncode != 0:
        raise RuntimeError(f"collector script exited {result.returncode}: {result.stderr.strip()[-300:]}")
    return result.stdout


def _add_cmdlines(session: TargetSession, top: dict[str, list[dict[str, Any]]], deadline: float) -> None:
    pids = sorted({p["pid"] for group in top.values() for p in group})
    marker = f"@@drhost-{secrets.token_hex(8)}"
    text = _run_script(session, _CMDLINE_SCRIPT, [marker, *map(str, pids)], deadline)
    cmdlines: dict[int, str] = {}
    for header, lines in _sections(text, marker):
        if header.isdigit():
            cmdlines[int(header)] = "\n".join(lines).strip()[:CMDLINE_CHARS]
    for group in top.values():
        for process in group:
            process["cmdline"] = cmdlines.get(process["pid"])


def _part(result: dict[str, Any], key: str, errors: list[str], compute: Callable[[], Any]) -> None:
    try:
        result[key] = compute()
    except Exception as exc:  # one unreadable part must not cost the others
        errors.append(f"{key}: {type(exc).__name__}: {exc}")


def collect_target_context(session: TargetSession, *, install_root: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """What the target behind ``session`` was doing: keys ``target``, ``install_root``, ``collected_at``,
    ``environment``, ``loadavg``, ``memory``, ``top_processes``, ``connections``, ``log_lines``, ``errors``.

    A part that could not be collected is None and explained in ``errors``. Never raises.
    """
    deadline = time.monotonic() + timeout_s
    errors: list[str] = []
    context: dict[str, Any] = {
        "target": getattr(session, "name", None), "install_root": install_root, "collected_at": _now(),
        "environment": None, "loadavg": None, "memory": None, "top_processes": None, "connections": None,
        "log_lines": None, "errors": errors,
    }
    try:
        # First, before our own /proc walk adds load to what is measured.
        environment = sample_target(session, timeout_s=max(0.1, min(5.0, deadline - time.monotonic())))
        context["environment"] = environment.as_dict()
        if all(value is None for value in context["environment"].values()):
            errors.append("environment: the resource sample failed (details in the debug log)")

        marker = f"@@drhost-{secrets.token_hex(8)}"
        try:
            text = _run_script(session, _TARGET_SCRIPT, [marker, install_root, str(LOG_TAIL_BYTES),
                                                          str(MAX_LOG_LINES), str(MAX_CONNECTIONS)], deadline)
        except Exception as exc:  # the whole script failed: every part it carries is missing
            reason = f"{type(exc).__name__}: {exc}"
            errors.extend(f"{key}: {reason}" for key in ("loadavg", "memory", "top_processes", "connections",
                                                           "log_lines"))
            return context
        sections = _sections(text, marker)
        named = {header: lines for header, lines in sections}
        if "end" not in named:
            errors.append("the collector's output is incomplete (cut short or too large)")

        def section(name: str) -> list[str]:
            if name not in named:
                raise ValueError(f"no {name} section in the collector's output")
            return named[name]

        _part(context, "loadavg", errors, lambda: parse_loadavg(section("loadavg")))
        _part(context, "memory", errors, lambda: parse_meminfo(section("meminfo")))

        def processes() -> dict[str, list[dict[str, Any]]]:
            units = section("units")[0].split()
            found = parse_processes(section("processes"), int(units[0]) or 100, int(units[1]) or 4096)
            # The collector's own shell is not what the target was busy with.
            own_shell = units[2] if len(units) > 2 else ""
            top = top_processes([p for p in found if str(p["pid"]) != own_shell])
            try:
                _add_cmdlines(session, top, deadline)
            except Exception as exc:  # the processes themselves are worth keeping without their command lines
                errors.append(f"top_processes.cmdline: {type(exc).__name__}: {exc}")
            return top

        _part(context, "top_processes", errors, processes)
        _part(context, "connections", errors, lambda: parse_connections(
            section("tcp-states"), section("tcp-listen") + section("tcp-other")))

        def log_lines() -> list[dict[str, str]]:
            if "logs" not in named:
                raise FileNotFoundError(f"{install_root}/log is not a directory on the target")
            matched = [{"file": header[len("log "):], "line": line}
                       for header, lines in sections if header.startswith("log ")
                       for line in lines if LOG_PATTERN.search(line)]
            return matched[-MAX_LOG_LINES:]

        _part(context, "log_lines", errors, log_lines)
    except Exception as exc:  # a bug here must not turn a timeout report into a crash
        log.debug("target context of %s: %s", context["target"], exc, exc_info=True)
        errors.append(f"collector: {type(exc).__name__}: {exc}")
    return context


# ---------------------------------------------------------------------------- the controller


def _process_entry(info: Mapping[str, Any]) -> dict[str, Any]:
    memory = info.get("memory_info")
    times = info.get("cpu_times")
    cmdline = info.get("cmdline")
    return {
        "pid": info.get("pid"), "ppid": info.get("ppid"), "comm": info.get("name"), "state": info.get("status"),
        "rss_kb": memory.rss // 1024 if memory is not None else 0,
        "cpu_time_s": round(times.user + times.system, 2) if times is not None else 0.0,
        "cmdline": " ".join(cmdline)[:CMDLINE_CHARS] if cmdline else "",
    }


def _controller_processes() -> dict[str, list[dict[str, Any]]]:
    attrs = ["pid", "ppid", "name", "status", "memory_info", "cpu_times", "cmdline"]
    found = [_process_entry(p.info) for p in psutil.process_iter(attrs, ad_value=None)]
    return top_processes(found)


def _tree_entry(process: psutil.Process) -> dict[str, Any]:
    with process.oneshot():
        return {"pid": process.pid, "ppid": process.ppid(), "name": process.name(),
                "rss_kb": process.memory_info().rss // 1024, "cpu_percent": process.cpu_percent(None),
                "status": process.status()}


def collect_controller_context() -> dict[str, Any]:
    """What the controller (this machine) was doing: keys ``collected_at``, ``environment``, ``loadavg``,
    ``memory``, ``top_processes``, ``controller_tree``, ``disk``, ``errors``. Never raises."""
    errors: list[str] = []
    context: dict[str, Any] = {
        "collected_at": _now(), "environment": None, "loadavg": None, "memory": None, "top_processes": None,
        "controller_tree": None, "disk": None, "errors": errors,
    }
    try:
        tree: list[psutil.Process] = []
        try:
            me = psutil.Process()
            tree = [me, *me.children(recursive=True)]
            for process in tree:
                # The first call starts each process's CPU clock; the environment sample below is the interval.
                process.cpu_percent(None)
        except psutil.Error as exc:
            errors.append(f"controller_tree: {type(exc).__name__}: {exc}")
        _part(context, "environment", errors, lambda: sample_controller().as_dict())

        def tree_entries() -> list[dict[str, Any]]:
            entries = []
            for process in tree:
                try:
                    entries.append(_tree_entry(process))
                except psutil.Error:
                    continue  # a child that ended meanwhile is not part of the tree any more
            return entries

        if tree:
            _part(context, "controller_tree", errors, tree_entries)

        def loadavg() -> dict[str, float]:
            load1, load5, load15 = psutil.getloadavg()
            return {"load1": round(load1, 2), "load5": round(load5, 2), "load15": round(load15, 2)}

        def memory() -> dict[str, int]:
            virtual, swap = psutil.virtual_memory(), psutil.swap_memory()
            return {"mem_total_kb": virtual.total // 1024, "mem_available_kb": virtual.available // 1024,
                    "swap_total_kb": swap.total // 1024, "swap_free_kb": swap.free // 1024}

        def disk() -> dict[str, Any]:
            usage = psutil.disk_usage("/")
            return {"path": "/", "total_bytes": usage.total, "used_bytes": usage.used, "free_bytes": usage.free,
                    "percent": usage.percent}

        _part(context, "loadavg", errors, loadavg)
        _part(context, "memory", errors, memory)
        _part(context, "top_processes", errors, _controller_processes)
        _part(context, "disk", errors, disk)
    except Exception as exc:  # a bug here must not turn a timeout report into a crash
        log.debug("controller context: %s", exc, exc_info=True)
        errors.append(f"collector: {type(exc).__name__}: {exc}")
    return context

