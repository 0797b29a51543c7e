"""The worker confines itself before it imports the plugin: read-only host, own scratch, no root.

The host starts the worker as root, because only root can join the worker's cgroups and build
its mounts. The worker then, still before any plugin code runs:

0. enters new mount, IPC, network and pid namespaces and forks: the child, pid 1 of its own pid
   namespace, goes on as the worker; the parent stays behind as a relay that only waits and hands
   the child's ending (exit code or signal) to the host. When pid 1 ends, the kernel kills every
   process the plugin started, daemons included; and the worker sees and signals no process but
   its own, although all workers share one uid;
1. opens every directory the interpreter and the plugin need (``O_PATH``), while it still can;
2. makes every mount of its private mount namespace read-only and ``nosuid`` (``/sys/fs/cgroup``
   included), so that no file of the controller can be changed;
3. hides directories the worker identity could not traverse (``/root`` holding a pyenv, a 0700
   pytest base) behind an empty read-only tmpfs and binds back just the needed directories, and
   gives the worker its own size-limited scratch tmpfs on ``/tmp``, ``/var/tmp`` and ``/dev/shm``;
4. drops to the unprivileged worker identity with no supplementary groups and ``no_new_privs``,
   and checks that no capability is left and that root cannot be regained.

Why a dedicated user and not a user-namespace mapping: see docs/architecture.md ("Isolation").
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import signal
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

CONFINE_ENV = "DRHOST_WORKER_CONFINE"

_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
#: mount_setattr(2) has the same number on every architecture (the unified syscall table, Linux 5.12).
_SYS_MOUNT_SETATTR = 442
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_PDEATHSIG = 1
_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_SCRATCH_TOPS = ("/tmp", "/var/tmp", "/dev/shm")
#: Hidden behind an empty tmpfs: the host's sockets (D-Bus, podman, systemd...). A read-only mount does not stop
#: connect() on a world-writable socket, hiding it does.
_HIDDEN_TOPS = ("/run",)


class ConfinementError(RuntimeError):
    """The worker could not confine itself; it must not import the plugin."""


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


# The interpreter's own symbols include libc's; ctypes.util.find_library would run ldconfig (tens of ms, under the
# worker's CPU quota).
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise ConfinementError(f"{what}: {os.strerror(err)} (errno {errno.errorcode.get(err, err)})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(None if source is None else source.encode(), target.encode(),
                       None if fstype is None else fstype.encode(), ctypes.c_ulong(flags),
                       None if data is None else data.encode()),
           f"mount {fstype or 'bind'} {source or ''} on {target}")


def _relay(child: int) -> None:
    """The parent left outside the pid namespace: wait for the worker, then end the way it ended."""
    os.closerange(3, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 1024)
    for fd in (0, 1):
        os.close(fd)

    def stop(signum: int, _frame: Any) -> None:
        # pid 1 ignores signals it has no handler for: a stop request to the relay ends the worker outright.
        os.kill(child, signal.SIGKILL)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for asked in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(asked, stop)
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _enter_namespaces(network: bool) -> None:
    """New mount, IPC, pid (and network) namespaces; returns in the child, which is pid 1 of the new one."""
    flags = _CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWPID | (_CLONE_NEWNET if network else 0)
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare(mount, ipc, pid, net)")
    child = os.fork()
    if child:
        try:
            _relay(child)
        finally:
            os._exit(1)
    # If the relay is killed, the worker and so its namespace go too. (getppid() is 0 here, the parent being
    # outside the namespace, so a relay that died before this line goes unnoticed: the host's kill of the process
    # group and of the cgroups still reaches the worker.)
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def _read_only_everywhere() -> None:
    """Every mount of this namespace read-only and nosuid; mounts made afterwards are not affected."""
    attr = _MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, 0, 0)
    result = _libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, b"/", _AT_RECURSIVE, ctypes.byref(attr),
                           ctypes.sizeof(attr))
    if result == 0:
        return
    if ctypes.get_errno() != errno.ENOSYS:
        _check(result, "mount_setattr / read-only")
    # Kernels before 5.12: remount every mount point, deepest last (the order mountinfo lists them).
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        points = [line.split()[4].encode().decode("unicode_escape") for line in handle]
    for point in points:
        try:
            _mount(None, point, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID)
        except ConfinementError:
            if os.path.exists(point):
                raise


def _searchable(path: str, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` (no supplementary groups) may traverse directory ``path``."""
    info = os.stat(path)
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _blocked_ancestor(path: str, uid: int, gid: int) -> str | None:
    """The outermost proper ancestor of ``path`` that the worker identity cannot traverse."""
    parts = path.strip("/").split("/")
    current = ""
    for part in parts[:-1]:
        current += "/" + part
        if not _searchable(current, uid, gid):
            return current
    return None


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def needed_paths(extra: Iterable[str] = ()) -> list[str]:
    """What the interpreter and the plugin read: prefixes, the executable's directory, ``sys.path``."""
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable)),
                  *sys.path, *extra]
    found: list[str] = []
    for candidate in candidates:
        if not candidate or not os.path.isabs(candidate) or not os.path.exists(candidate):
            continue
        for path in (os.path.normpath(candidate), os.path.realpath(candidate)):
            if path not in found:
                found.append(path)
    return found


def _outermost(paths: Sequence[str]) -> list[str]:
    ordered = sorted(set(paths), key=lambda p: (p.count("/"), p))
    kept: list[str] = []
    for path in ordered:
        if not any(_under(path, top) for top in kept):
            kept.append(path)
    return kept


def _recreate(fd: int, path: str) -> None:
    """Bind the original ``path`` (held open as ``fd``) at the same place inside a fresh tmpfs."""
    if os.path.isdir(f"/proc/self/fd/{fd}"):
        os.makedirs(path, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    # A bind keeps the read-only flag of the mount it comes from; MS_REC carries mounts below it.
    _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)


def _shadow(needed: Sequence[str], uid: int, gid: int, tmpfs_mb: int) -> dict[str, Any]:
    blocked = [top for path in needed if (top := _blocked_ancestor(path, uid, gid)) is not None]
    blocked += [top for top in _HIDDEN_TOPS if os.path.isdir(top) and not os.path.islink(top)]
    scratch = [top for top in _SCRATCH_TOPS if os.path.isdir(top)]
    tops = _outermost([*blocked, *scratch])
    keep = [path for path in _outermost(needed) if any(_under(path, top) and path != top for top in tops)]
    flags = os.O_PATH | os.O_CLOEXEC
    fds = {path: os.open(path, flags) for path in keep}
    try:
        for top in tops:
            is_scratch = top in scratch
            options = f"size={tmpfs_mb}m,mode=1777" if is_scratch else "size=1m,mode=0755"
            _mount("tmpfs", top, "tmpfs", _MS_NOSUID | _MS_NODEV, options)
            for path in keep:
                if _under(path, top) and path != top:
                    _recreate(fds[path], path)
            if not is_scratch:
                _mount(None, top, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    finally:
        for fd in fds.values():
            os.close(fd)
    return {"hidden": [t for t in tops if t not in scratch], "scratch": scratch, "bound": keep}


def _drop_identity(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def _verify_dropped() -> dict[str, Any]:
    status: dict[str, str] = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    if int(status.get("CapEff", "0"), 16) or int(status.get("CapPrm", "0"), 16):
        raise ConfinementError(f"capabilities left after dropping root: CapEff={status.get('CapEff')}")
    if status.get("NoNewPrivs") != "1":
        raise ConfinementError("no_new_privs is not set")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise ConfinementError("the worker could become root again")
    return {"capabilities": "none", "no_new_privs": True}


def _refused(action: Any) -> str:
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "allowed"


def _create(directory: str) -> None:
    path = os.path.join(directory, f".drhost-probe-{os.getpid()}")
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    os.unlink(path)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text)


def _connect(address: tuple[str, int]) -> None:
    import socket  # only here: most workers never need it

    socket.create_connection(address, timeout=1).close()


def _prove(network: bool, cgroup_dirs: Sequence[str]) -> dict[str, str]:
    """Try, as a plugin could, what confinement must prevent; any success stops the worker (fail closed)."""
    tried = {f"create a file in {d}": _refused(functools.partial(_create, d))
             for d in ("/", "/etc", sys.prefix, *cgroup_dirs) if os.path.isdir(d)}
    for own in cgroup_dirs[:1]:
        parent = os.path.join(os.path.dirname(own), "cgroup.procs")
        tried[f"move itself to the parent cgroup ({parent})"] = _refused(functools.partial(_write, parent, "1"))
    if network:
        tried["connect to 1.1.1.1:53"] = _refused(functools.partial(_connect, ("1.1.1.1", 53)))
    allowed = [what for what, result in tried.items() if result == "allowed"]
    if allowed:
        raise ConfinementError(f"confinement does not hold, the worker could: {'; '.join(allowed)}")
    return tried


def confine(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Confine this process as ``spec`` says (see the module docstring); returns what is in force."""
    uid, gid = int(spec["uid"]), int(spec["gid"])
    needed = needed_paths(spec.get("needed") or ())
    _enter_namespaces(bool(spec.get("network", True)))
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    # The /proc of the new pid namespace: the worker's processes only.
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    _read_only_everywhere()
    shadowed = _shadow(needed, uid, gid, int(spec.get("tmpfs_mb", 64)))
    os.chdir("/tmp")
    os.environ.update(HOME="/tmp", TMPDIR="/tmp", USER=str(spec.get("user", uid)), LOGNAME=str(spec.get("user", uid)))
    _drop_identity(uid, gid)
    dropped = _verify_dropped()
    proven = _prove(bool(spec.get("network", True)), list(spec.get("cgroup_dirs") or ()))
    # A path the worker identity cannot read stays on sys.path for the import error, but is reported.
    unreadable = [p for p in needed if not os.access(p, os.R_OK | (os.X_OK if os.path.isdir(p) else 0))]
    return {"user": spec.get("user", str(uid)), "uid": uid, "gid": gid, **dropped,
            "namespaces": ["mount", "ipc", "pid", *(["net"] if spec.get("network", True) else [])],
            "filesystem": "read-only (every mount, nosuid)", **shadowed, "unreadable": unreadable,
            "refused": proven}


__all__ = ["CONFINE_ENV", "ConfinementError", "confine", "needed_paths"]
