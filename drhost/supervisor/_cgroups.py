"""The cgroup process sandbox: a worker in fresh cgroups that hold its memory, CPU share and process count.

Every launch gets a new cgroup ``drhost/<label>-<n>`` under the cgroup this process
already sits in, in each controller, so drhost's limits nest inside whatever limits
drhost itself runs under. The worker writes its own pid into the cgroups' ``cgroup.procs``
before it imports the plugin (``drhost_hookspecs._runtime._limits``); the host writes it too, as
soon as the process exists. Both cgroup v2 (one unified hierarchy at ``/sys/fs/cgroup``)
and v1 (one mount per controller) are handled.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args

from drhost_hookspecs._runtime import WORKER_MODULE

from ..errors import RefusedError
from ..policy import ClassPolicy, Isolation, one_of
from ..transport import stop_process_group
from ._sandbox import RlimitSandbox, Sandbox, cpu_time_exit, worker_environment

_LOG = logging.getLogger("drhost.supervisor.cgroups")

#: Controllers that limit a worker. ``cpuacct`` (v1) only measures.
LIMIT_CONTROLLERS = ("memory", "cpu", "pids")
DEFAULT_PIDS_MAX = 64
CFS_PERIOD_US = 100_000
_EMPTY_TIMEOUT_S = 10.0
_MiB = 1024 * 1024


@dataclass(frozen=True)
class CgroupSupport:
    """What this machine's cgroups give drhost, found by creating (and removing) a test cgroup.

    ``bases`` maps each usable controller to the cgroup directory this process sits in
    for it (drhost's cgroups are created below it); ``problems`` says why a controller
    is not usable.
    """

    version: int  # 2, 1, or 0 (no cgroup filesystem)
    bases: dict[str, Path] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def usable(self) -> tuple[str, ...]:
        return tuple(c for c in (*LIMIT_CONTROLLERS, "cpuacct") if c in self.bases)

    def missing(self, wanted: tuple[str, ...] = LIMIT_CONTROLLERS) -> dict[str, str]:
        return {c: self.problems.get(c, "not found") for c in wanted if c not in self.bases}

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "usable": list(self.usable),
                "bases": {c: str(p) for c, p in self.bases.items()}, "problems": dict(self.problems)}


# -- discovery -------------------------------------------------------------------------
def _v1_mounts(mountinfo: str) -> dict[str, tuple[Path, str]]:
    """controller -> (mount point, root of the mount) of every cgroup v1 hierarchy."""
    found: dict[str, tuple[Path, str]] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] != "cgroup":
            continue
        root, mount_point = fields[3], fields[4].replace("\\040", " ")
        for option in tail[2].split(","):
            if option in (*LIMIT_CONTROLLERS, "cpuacct"):
                found.setdefault(option, (Path(mount_point), root))
    return found


def _own_cgroups(proc_cgroup: str) -> dict[str, str]:
    """controller -> this process's cgroup path (the v2 entry under the key ``""``)."""
    paths: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            paths[controller] = parts[2]
    return paths


def _below(mount_point: Path, root: str, path: str) -> Path:
    relative = os.path.relpath(path, root) if root != "/" else path.lstrip("/")
    return mount_point if relative in (".", "") else mount_point / relative


def _candidate_bases(cgroup_root: Path, proc_self: Path) -> tuple[int, dict[str, Path], dict[str, str]]:
    problems: dict[str, str] = {}
    try:
        own = _own_cgroups((proc_self / "cgroup").read_text())
    except OSError as exc:
        return 0, {}, {c: f"cannot read {proc_self / 'cgroup'}: {exc}" for c in LIMIT_CONTROLLERS}
    if (cgroup_root / "cgroup.controllers").exists():
        base = _below(cgroup_root, "/", own.get("", "/"))
        try:
            available = set((base / "cgroup.controllers").read_text().split())
        except OSError as exc:
            available = set()
            problems["*"] = f"cannot read {base / 'cgroup.controllers'}: {exc}"
        bases = {c: base for c in LIMIT_CONTROLLERS if c in available}
        for c in LIMIT_CONTROLLERS:
            if c not in available:
                problems[c] = f"cgroup v2: controller {c} not available in {base} (cgroup.controllers)"
        return 2, bases, problems
    try:
        mounts = _v1_mounts((proc_self / "mountinfo").read_text())
    except OSError as exc:
        return 0, {}, {c: f"cannot read mountinfo: {exc}" for c in LIMIT_CONTROLLERS}
    bases = {}
    for controller in (*LIMIT_CONTROLLERS, "cpuacct"):
        if controller not in mounts:
            problems[controller] = f"cgroup v1: no {controller} hierarchy mounted"
        elif controller not in own:
            problems[controller] = f"cgroup v1: /proc/self/cgroup has no {controller} entry"
        else:
            mount_point, root = mounts[controller]
            bases[controller] = _below(mount_point, root, own[controller])
    return (1 if bases else 0), bases, problems


#: A file each controller's probe writes (or, with None, reads) in a test cgroup.
_PROBE_FILES: dict[int, dict[str, tuple[str, str | None]]] = {
    1: {"memory": ("memory.limit_in_bytes", str(64 * _MiB)), "cpu": ("cpu.cfs_quota_us", "50000"),
        "pids": ("pids.max", "64"), "cpuacct": ("cpuacct.usage", None)},
    2: {"memory": ("memory.max", str(64 * _MiB)), "cpu": ("cpu.max", f"50000 {CFS_PERIOD_US}"),
        "pids": ("pids.max", "64")},
}


def _enable_v2_controllers(base: Path, controllers: tuple[str, ...]) -> str | None:
    """Delegate controllers to ``base/drhost``; cgroup v2's no-internal-process rule may forbid it."""
    wanted = " ".join(f"+{c}" for c in controllers)
    for directory in (base, base / "drhost"):
        try:
            directory.mkdir(exist_ok=True)
            try:
                enabled = set((directory / "cgroup.subtree_control").read_text().split())
            except FileNotFoundError:  # the kernel always has it; a plain directory (tests) may not
                enabled = set()
            if not set(controllers) <= enabled:
                (directory / "cgroup.subtree_control").write_text(wanted)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return (f"cgroup v2: cannot enable {wanted} in {directory}/cgroup.subtree_control: it holds "
                        f"processes (run drhost in a delegated cgroup, e.g. systemd-run --scope -p Delegate=yes)")
            return f"cgroup v2: cannot enable {wanted} in {directory}: {exc.strerror}"
    return None


def probe_cgroups(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_self: Path = Path("/proc/self")) -> CgroupSupport:
    """Find this process's cgroups and try, per controller, to create, limit and remove a test cgroup."""
    version, candidates, problems = _candidate_bases(cgroup_root, proc_self)
    if version == 2 and candidates:
        trouble = _enable_v2_controllers(next(iter(candidates.values())), tuple(candidates))
        if trouble:
            return CgroupSupport(2, {}, {**problems, **{c: trouble for c in candidates}})
    usable: dict[str, Path] = {}
    for controller, base in candidates.items():
        test = base / "drhost" / f"probe-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
        name, value = _PROBE_FILES[version].get(controller, ("cgroup.procs", None))
        try:
            test.mkdir(parents=True)
        except OSError as exc:
            problems[controller] = f"cannot create a cgroup under {base}: {exc.strerror}"
            continue
        try:
            if value is None:
                (test / name).read_text()
            else:
                (test / name).write_text(value)
            usable[controller] = base
        except OSError as exc:
            problems[controller] = f"cannot set {test / name}: {exc.strerror}"
        finally:
            with contextlib.suppress(OSError):
                test.rmdir()
    return CgroupSupport(version, usable, {c: p for c, p in problems.items() if c not in usable})


@functools.lru_cache(maxsize=1)
def cgroup_support() -> CgroupSupport:
    """:func:`probe_cgroups` once per process (a cgroup layout does not change under a running host)."""
    return probe_cgroups()


# -- the sandbox -------------------------------------------------------------------------
def sanitize_label(label: str) -> str:
    """A cgroup directory name from a label such as ``run/plugin/target``."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._") or "worker"
    return cleaned[:80]


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()
    except OSError:
        return None
    if not text or text[0] == "max":
        return None
    try:
        return int(text[0])
    except ValueError:
        return None


def _read_keyed(path: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            found[key] = int(value)
    return found


def limit_counters(dirs: Mapping[str, Path], version: int) -> dict[str, float]:
    """The kernel's counters of limits hit in these cgroups; each only grows while the cgroup exists.

    ``pids_refused`` (``pids.events`` ``max``: forks refused at ``pids.max``), ``oom_kill`` (``memory.oom_control``
    on v1, ``memory.events`` on v2), and from ``cpu.stat`` ``nr_periods``, ``nr_throttled`` and ``throttled_s``
    (v1 ``throttled_time`` in ns, v2 ``throttled_usec``). A file that cannot be read is left out.
    """
    found: dict[str, float] = {}
    pids, memory, cpu = dirs.get("pids"), dirs.get("memory"), dirs.get("cpu")
    if pids is not None:
        events = _read_keyed(pids / "pids.events")
        if "max" in events:
            found["pids_refused"] = events["max"]
    if memory is not None:
        events = _read_keyed(memory / ("memory.oom_control" if version == 1 else "memory.events"))
        if "oom_kill" in events:
            found["oom_kill"] = events["oom_kill"]
    if cpu is not None:
        stat = _read_keyed(cpu / "cpu.stat")
        for key in ("nr_periods", "nr_throttled"):
            if key in stat:
                found[key] = stat[key]
        if "throttled_time" in stat:
            found["throttled_s"] = stat["throttled_time"] / 1e9
        elif "throttled_usec" in stat:
            found["throttled_s"] = stat["throttled_usec"] / 1e6
    return found


def cgroup_dirs_of(pid: int, *, cgroup_root: Path = Path("/sys/fs/cgroup"),
                   proc: Path = Path("/proc")) -> tuple[int, dict[str, Path]]:
    """(cgroup version, controller -> directory) of a running process, e.g. a container's init; (0, {}) if gone."""
    try:
        own = _own_cgroups((proc / str(pid) / "cgroup").read_text())
    except OSError:
        return 0, {}
    if (cgroup_root / "cgroup.controllers").exists():
        directory = _below(cgroup_root, "/", own.get("", "/"))
        return 2, {c: directory for c in LIMIT_CONTROLLERS}
    try:
        mounts = _v1_mounts((proc / "self" / "mountinfo").read_text())
    except OSError:
        return 0, {}
    return 1, {c: _below(mounts[c][0], mounts[c][1], own[c]) for c in LIMIT_CONTROLLERS if c in mounts and c in own}


class CgroupSandbox:
    """A worker process in fresh cgroups: real memory, CPU share and process count, enforced by the kernel.

    RLIMIT_AS is not set when the memory cgroup is in force (address space is not
    memory); ``nofile`` and ``core_bytes`` stay rlimits. ``stop()`` kills every process
    in the cgroups, also those that left the process group with ``setsid()``.
    """

    kind: Isolation = "process"

    def __init__(self, limits: Mapping[str, Any], *, label: str, message_limit: int, cpu_percent: int | None = None,
                 pids_max: int | None = DEFAULT_PIDS_MAX, support: CgroupSupport | None = None,
                 command: list[str] | None = None) -> None:
        self._support = support if support is not None else cgroup_support()
        if not self._support.bases:
            raise RefusedError.worded("no usable cgroup controller: {problems}", problems=str(self._support.problems))
        self.version = self._support.version
        self._limits = dict(limits)
        self._message_limit = message_limit
        self._command = command
        self.label = sanitize_label(label)
        self.cpu_percent = cpu_percent
        self.pids_max = pids_max
        self.memory_limit_bytes: int | None = self._limits.get("memory_bytes")
        self.enforces_memory = "memory" in self._support.bases and self.memory_limit_bytes is not None
        self.process_limit = pids_max
        self.enforces_processes = "pids" in self._support.bases
        #: the sandbox holding the limits: it wraps nothing
        self.inner: Sandbox | None = None
        self._dirs: dict[str, Path] = {}
        self.created: list[Path] = []  # every cgroup this sandbox made (tests check none is left)
        self.leftovers: list[int] = []  # pids still in the cgroup after a stop (should stay empty)
        self._pid: int | None = None
        self._cpu_mark: tuple[float, float] | None = None
        self._launches = 0
        #: The limit that ended the last worker ("memory", "pids"), set by :meth:`explain_exit`.
        self.exit_limit: str | None = None

    # -- the worker's side -------------------------------------------------------------
    def command(self, entry_point: str) -> list[str]:
        return self._command or [sys.executable, "-m", WORKER_MODULE, entry_point]

    def worker_limits(self) -> dict[str, Any]:
        limits = dict(self._limits)
        if self.enforces_memory:
            limits.pop("memory_bytes", None)
        limits["cgroup_procs"] = [str(d / "cgroup.procs") for d in self._unique_dirs()]
        return limits

    def environment(self) -> dict[str, str]:
        return worker_environment(self.worker_limits(), self._message_limit)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def directories(self) -> dict[str, Path]:
        """controller -> this launch's cgroup directory (empty before the first launch and after close)."""
        return dict(self._dirs)

    def _unique_dirs(self) -> list[Path]:
        seen: list[Path] = []
        for directory in self._dirs.values():
            if directory not in seen:
                seen.append(directory)
        return seen

    def prepare(self) -> None:
        """A fresh cgroup per launch; whatever the last worker left behind is killed and removed first."""
        self._release()
        self._pid = None
        self.exit_limit = None
        self._cpu_mark = None
        for _attempt in range(1000):
            self._launches += 1
            name = f"{self.label}-{self._launches}"
            made: list[Path] = []
            dirs: dict[str, Path] = {}
            try:
                for controller, base in self._support.bases.items():
                    directory = base / "drhost" / name
                    if directory not in made:
                        directory.parent.mkdir(exist_ok=True)
                        directory.mkdir()
                        made.append(directory)
                    dirs[controller] = directory
            except FileExistsError:  # another drhost (or an earlier one that crashed) uses the name
                for directory in reversed(made):
                    with contextlib.suppress(OSError):
                        directory.rmdir()
                continue
            self._dirs = dirs
            self.created.extend(made)
            try:
                self._write_limits()
            except OSError:
                self._release()
                raise
            return
        raise RefusedError.worded("could not create a cgroup for {label}", label=self.label)

    def _write_limits(self) -> None:
        memory, cpu, pids = self._dirs.get("memory"), self._dirs.get("cpu"), self._dirs.get("pids")
        limit = self.memory_limit_bytes
        if memory is not None and limit is not None:
            if self.version == 1:
                (memory / "memory.limit_in_bytes").write_text(str(limit))
                if (memory / "memory.memsw.limit_in_bytes").exists():
                    (memory / "memory.memsw.limit_in_bytes").write_text(str(limit))
            else:
                (memory / "memory.max").write_text(str(limit))
                if (memory / "memory.swap.max").exists():
                    (memory / "memory.swap.max").write_text("0")
        if cpu is not None and self.cpu_percent is not None:
            quota = self.cpu_percent * CFS_PERIOD_US // 100
            if self.version == 1:
                (cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
                (cpu / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (cpu / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
        if pids is not None and self.pids_max is not None:
            (pids / "pids.max").write_text(str(self.pids_max))

    def started(self, pid: int) -> None:
        self._pid = pid
        # The worker joins by itself before importing the plugin; joining it from here as well
        # covers a worker command that does not (and costs a write per cgroup).
        for directory in self._unique_dirs():
            with contextlib.suppress(OSError):
                (directory / "cgroup.procs").write_text(str(pid))

    def members(self) -> set[int]:
        """Every process in this launch's cgroups."""
        found: set[int] = set()
        for directory in self._unique_dirs():
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        return found

    def _kill_members(self, timeout_s: float = _EMPTY_TIMEOUT_S) -> list[int]:
        """SIGKILL every process in the cgroups until they are empty; returns the pids that would not go."""
        if not self._dirs:
            return []
        for directory in self._unique_dirs():
            if self.version == 2 and (directory / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    (directory / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + timeout_s
        delay = 0.001
        while True:
            members = self.members()
            if not members:
                return []
            if time.monotonic() >= deadline:
                _LOG.warning("cgroup %s: processes %s survived SIGKILL", self.label, sorted(members))
                return sorted(members)
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float) -> None:
        stop_process_group(proc, grace_s)
        # A plugin that setsid()s out of the process group is still in the cgroup.
        self.leftovers = self._kill_members()

    def _release(self) -> None:
        if not self._dirs:
            return
        leftovers = self._kill_members()
        if leftovers:
            self.leftovers = leftovers
        for directory in reversed(self._unique_dirs()):
            for attempt in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or attempt == 49:
                        _LOG.warning("cgroup %s could not be removed: %s", directory, exc.strerror)
                        break
                    time.sleep(0.02)
        self._dirs = {}

    def close(self) -> None:
        self._release()

    # -- what happened, what is used, what is in force ---------------------------------
    def _mib(self) -> str:
        return f"{(self.memory_limit_bytes or 0) // _MiB} MiB"

    def explain_exit(self, returncode: int) -> str | None:
        """Name the limit that ended the worker. A fork bomb held at ``pids.max`` is named the pids limit even
        when the memory cgroup then killed some of its many small processes: the process count is the cause."""
        memory, pids = self._dirs.get("memory"), self._dirs.get("pids")
        how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
        oom_text = ""
        if memory is not None and self.enforces_memory:
            if self.version == 1:
                oom = _read_keyed(memory / "memory.oom_control").get("oom_kill", 0)
                failcnt = max(_read_int(memory / "memory.failcnt") or 0,
                              _read_int(memory / "memory.memsw.failcnt") or 0)
            else:
                oom = _read_keyed(memory / "memory.events").get("oom_kill", 0)
                failcnt = 0
            if oom and returncode == -signal.SIGKILL:
                oom_text = f"killed by the memory cgroup (limit {self._mib()}, oom_kill {oom})"
                self.exit_limit = "memory"
            elif oom:
                oom_text = f"the memory cgroup killed {oom} of its processes (limit {self._mib()})"
            elif failcnt and returncode == -signal.SIGKILL:
                oom_text = f"killed by SIGKILL at the memory cgroup limit ({self._mib()}, failcnt {failcnt})"
                self.exit_limit = "memory"
        refused = 0
        if pids is not None and self.pids_max is not None:
            refused = _read_keyed(pids / "pids.events").get("max", 0)
        cpu = cpu_time_exit(returncode, self._limits.get("cpu_seconds"), self.cpu_seconds())
        parts: list[str] = []
        if refused:
            self.exit_limit = "pids"
            parts = [how, f"pids limit {self.pids_max} reached (fork refused {refused} times by the pids cgroup)"]
            if oom_text:
                parts.append(f"also {oom_text}")
        elif oom_text and self.exit_limit == "memory":
            parts = [oom_text]
        elif cpu is not None:
            self.exit_limit = "cpu_time"
            parts = [cpu]
        elif oom_text:
            parts = [how, oom_text]
        return "; ".join(parts) or None

    def limit_counters(self) -> dict[str, float]:
        """The kernel's limit counters of this launch's cgroups (see :func:`limit_counters`)."""
        return limit_counters(self._dirs, self.version) if self._dirs else {}

    def cpu_seconds(self) -> float | None:
        cpuacct, cpu = self._dirs.get("cpuacct"), self._dirs.get("cpu")
        if self.version == 1 and cpuacct is not None:
            used = _read_int(cpuacct / "cpuacct.usage")
            return None if used is None else used / 1e9
        if self.version == 2 and cpu is not None:
            usec = _read_keyed(cpu / "cpu.stat").get("usage_usec")
            return None if usec is None else usec / 1e6
        return None

    def usage(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        memory, pids = self._dirs.get("memory"), self._dirs.get("pids")
        if memory is not None:
            used = _read_int(memory / ("memory.usage_in_bytes" if self.version == 1 else "memory.current"))
            if used is not None:
                found["memory_bytes"] = used
        if pids is not None:
            tasks = _read_int(pids / "pids.current")
            if tasks is not None:
                found["tasks"] = tasks
        if self._dirs:
            found["processes"] = len(self.members())
        seconds = self.cpu_seconds()
        if seconds is not None:
            found["cpu_seconds"] = round(seconds, 3)
            now = time.monotonic()
            if self._cpu_mark is not None and now > self._cpu_mark[0]:
                found["cpu_percent"] = round(100 * (seconds - self._cpu_mark[1]) / (now - self._cpu_mark[0]), 1)
            self._cpu_mark = (now, seconds)
        return found

    def in_force(self) -> dict[str, Any]:
        version = f"cgroup v{self.version}"
        found: dict[str, Any] = {"mechanism": version}
        bases = self._support.bases
        if self.enforces_memory:
            name = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
            found["memory"] = f"{version} {name}={self.memory_limit_bytes}"
        elif self.memory_limit_bytes is not None:
            found["memory"] = (f"rlimit address space {self.memory_limit_bytes} + supervisor RSS sampling "
                               f"(no memory cgroup: {self._support.problems.get('memory', 'not usable')})")
        if self.cpu_percent is not None:
            found["cpu"] = (f"{version} {'cfs' if self.version == 1 else 'cpu.max'} {self.cpu_percent}%"
                            if "cpu" in bases else f"none (no cpu cgroup: {self._support.problems.get('cpu')})")
        if self.pids_max is not None:
            found["pids"] = (f"{version} pids.max={self.pids_max}" if "pids" in bases
                             else f"none (no pids cgroup: {self._support.problems.get('pids')})")
        for key in ("nofile", "core_bytes", "cpu_seconds"):
            if key in self._limits:
                found[key] = f"rlimit {self._limits[key]}"
        found["kill"] = f"process group, then every process in the {version} cgroups"
        if self._dirs:
            found["cgroups"] = [str(d) for d in self._unique_dirs()]
        return found


#: ``[process] cgroups``: cgroups when the machine gives them, always (refuse otherwise), or never.
CgroupsMode = Literal["auto", "required", "off"]
CGROUPS_MODES: Final[tuple[CgroupsMode, ...]] = get_args(CgroupsMode)


def process_sandbox(policy: ClassPolicy, *, label: str, message_limit: int, config: Mapping[str, Any]) -> Sandbox:
    """The sandbox of a ``process`` class: cgroups where ``[process] cgroups`` allows and the machine gives them.

    ``auto`` uses cgroups when the memory controller is usable and falls back to
    rlimits otherwise; ``required`` refuses without memory, cpu and pids cgroups;
    ``off`` always uses rlimits.
    """
    mode = one_of((config.get("process") or {}).get("cgroups", "auto"), CGROUPS_MODES, "process.cgroups")
    pids_max = policy.pids if policy.pids is not None else DEFAULT_PIDS_MAX
    if mode != "off":
        support = cgroup_support()
        missing = support.missing()
        if mode == "required" and missing:
            reasons = "; ".join(f"{c}: {why}" for c, why in missing.items())
            raise RefusedError.worded("[process] cgroups = required, but this machine does not give drhost the "
                                      "{controllers} cgroup controller(s): {reasons}",
                                      controllers=", ".join(missing), reasons=reasons)
        if "memory" in support.bases:
            return CgroupSandbox(policy.worker_limits(), label=label, message_limit=message_limit,
                                 cpu_percent=policy.cpu_percent, pids_max=pids_max, support=support)
    return RlimitSandbox(policy.worker_limits(), message_limit=message_limit, process_limit=policy.pids)


def remove_run_cgroups(run_id: str, support: CgroupSupport | None = None,
                       spare: Callable[[str], bool] | None = None) -> list[str]:
    """Kill whatever is left in, and remove, the cgroups of run ``run_id`` (left by a killed controller).

    Safe only while this controller holds the run's lock: no other controller of the run is alive. ``spare``
    is given each cgroup's directory name and leaves alone those it returns True for (those of a controller
    that may still be alive).
    """
    support = support if support is not None else cgroup_support()
    prefix = f"{sanitize_label(run_id)}_"
    removed: list[str] = []
    for base in dict.fromkeys(support.bases.values()):
        parent = base / "drhost"
        if not parent.is_dir():
            continue
        for directory in sorted(parent.iterdir()):
            if not directory.name.startswith(prefix) or not directory.is_dir():
                continue
            if spare is not None and spare(directory.name):
                continue
            for _attempt in range(100):
                try:
                    pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
                except OSError:
                    pids = []
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.02)
            try:
                directory.rmdir()
                removed.append(str(directory))
            except OSError as exc:
                _LOG.warning("cgroup %s could not be removed: %s", directory, exc.strerror)
    return removed
