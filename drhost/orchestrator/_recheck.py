"""What a resume or rollback re-checks before it touches a target: no other live controller drives the run,
the package is still the verified one, the stored config still validates.

A run may be continued days later, by another drhost version, from a copy of its directory: everything it
relies on from back then is checked again, and a refusal names what changed.
"""

from __future__ import annotations

import copy
import hashlib
import os
import socket
import stat
from collections.abc import Mapping
from typing import Any

import psutil

from ..errors import ConfigError, Origin, RefusedError
from ..state import RunState

__all__ = ["ResumeRefused", "check_config", "check_controller", "check_package", "controller_record",
           "previous_controller_gone", "spare_cgroup"]

_CHUNK = 1 << 20


class ResumeRefused(RefusedError):
    """A run cannot be continued as it is: names the run and what changed since it started."""


def controller_record() -> dict[str, Any]:
    """This process as the run's controller: enough to tell later whether it is still alive."""
    try:
        started: float | None = psutil.Process().create_time()
    except psutil.Error:
        started = None
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": started}


def _alive(pid: int, started: Any) -> bool:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        # The start time tells a reused pid from the controller itself.
        return not isinstance(started, (int, float)) or abs(process.create_time() - float(started)) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # cannot tell: alive until proved otherwise


def previous_controller_gone(state: RunState) -> bool:
    """Whether the controller that last drove the run is provably gone: it ran on this host and its process
    has ended (or it is this process). Unknown (no record, another host) is not gone."""
    record = state.get("controller")
    if not isinstance(record, Mapping) or record.get("host") != socket.gethostname():
        return False
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    return pid == os.getpid() or not _alive(pid, record.get("started"))


def spare_cgroup(run_id: str, name: str, previous_gone: bool) -> bool:
    """Whether a sweep must leave the cgroup directory ``name`` of run ``run_id`` alone.

    Names carry the pid of the controller that made them (``RUN_PID_plugin_target-N``): a live one other than
    this process is spared. Older names carry no pid; they are swept only when the previous controller of the
    run is provably gone.
    """
    from ..supervisor import sanitize_label

    head = name[len(sanitize_label(run_id)) + 1:].split("_", 1)[0]
    if not head.isdigit():
        return not previous_gone
    pid = int(head)
    return pid != os.getpid() and _alive(pid, None)


def check_controller(state: RunState) -> None:
    """Refuse when the controller that last drove the run still runs on this host.

    The run's own lock only excludes controllers that share its directory; a copy of the directory (another
    state dir) would pass it, and its sweep of the run's cgroups and containers would kill the live
    controller's workers. A controller on another host is left to the target locks.
    """
    record = state.get("controller")
    if not isinstance(record, Mapping) or record.get("host") != socket.gethostname():
        return
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid == os.getpid() or pid <= 0:
        return
    if _alive(pid, record.get("started")):
        raise ResumeRefused.worded("run {run} is being driven by drhost pid {pid} on this host (state {path}): wait "
                                   "for it to end, or stop it, then run again", run=state.run_id, pid=pid,
                                   path=state.path)


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    while chunk := os.read(fd, _CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def check_package(state: RunState) -> None:
    """Refuse when the package file is no longer the one verified when the run started."""
    package = state.get("package")
    path, size, sha256 = package.get("local_path"), package.get("size"), package.get("sha256")
    head = {"run": state.run_id, "package": path}
    if not isinstance(path, str) or not isinstance(sha256, str) or not isinstance(size, int):
        raise ResumeRefused.worded("run {run}: the state records no verified package (local_path, size, sha256) "
                                   "in {path}", run=state.run_id, path=state.path)
    try:
        # O_NONBLOCK: a FIFO in the package's place must not hang the resume.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ResumeRefused.worded("run {run}: package {package}: missing (it was verified when the run started); "
                                   "put the same file back, or roll back", **head) from None
    except OSError as exc:
        raise ResumeRefused.worded("run {run}: package {package}: cannot be opened ({why})", **head,
                                   why=exc.strerror or exc) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ResumeRefused.worded("run {run}: package {package}: no longer a regular file", **head)
        if info.st_size != size:
            raise ResumeRefused.worded("run {run}: package {package}: changed since it was verified: size {found} "
                                       "bytes, was {size}", **head, found=info.st_size, size=size)
        found = _sha256(fd)
    except OSError as exc:
        raise ResumeRefused.worded("run {run}: package {package}: cannot be read ({why})", **head,
                                   why=exc.strerror or exc) from None
    finally:
        os.close(fd)
    if found != sha256:
        raise ResumeRefused.worded("run {run}: package {package}: changed since it was verified: sha256 {found}, "
                                   "was {sha256}", **head, found=found, sha256=sha256)


def check_config(state: RunState) -> None:
    """Refuse when the config the run stored no longer validates against this drhost's schema."""
    from ..config import ConfigProblems, LoadedConfig, defaults, schema, validate

    stored = state.get("config")
    where = str(state.path)
    data = copy.deepcopy(stored)
    # Runs older than batches have no [rollout]: drive() adds the defaults, so they are not a change.
    data.setdefault("rollout", defaults()["rollout"])
    loaded = LoadedConfig(data, origins={(key,): Origin(where, "config", key) for key in data})
    try:
        validate(loaded, schema())
        loaded.problems.raise_found()
    except (ConfigError, ConfigProblems) as exc:
        raise ResumeRefused.worded("run {run}: its stored config no longer validates: {problems}", run=state.run_id,
                                   problems=exc) from None
