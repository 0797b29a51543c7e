"""Podman on this machine: is it there, which OCI runtime works, and the minimal rootfs containers start from.

Nothing here hard-codes one machine's workarounds: the runtime is probed (``container.runtime = auto``:
crun, then runc, each with a real ``podman run`` of ``/usr/bin/true``), the answer (and podman's cgroup
manager) is cached in memory and in ``cache_root()/podman.json`` (a machine fact, shared by every state
directory) keyed by podman's path and version; ``podman --version`` is asked once per process and binary;
the rlimits given to podman are clamped to the caller's hard limits (podman's defaults try to
raise them, which fails where the hard limits are low).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import stat
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WordedError, message_phrase
from ..state import atomic_write, cache_root, state_root

#: Runtimes tried, in order, when ``container.runtime`` is ``auto``.
RUNTIME_CANDIDATES = ("crun", "runc")
#: The interpreter (and the tree mounted read-only from the host) a rootfs container gets.
HOST_USR = "/usr"
_PROBE_TIMEOUT_S = 60.0
_ROOTFS_DIRS = ("proc", "sys", "dev", "tmp", "usr", "etc", "opt/drhost", "run", "var/tmp")
_ROOTFS_LINKS = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}
_PASSWD = "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"

_lock = threading.Lock()
_runtime_cache: dict[str, str] = {}
_version_cache: dict[str, str] = {}


class ContainerUnavailable(WordedError):
    """Podman is missing or cannot start a container here; the message says what failed."""


@dataclass(frozen=True)
class PodmanSetup:
    """How containers are started on this machine: the client, its runtime, and a rootfs or an image."""

    podman: str
    version: str
    runtime: str
    rootfs: str | None
    image: str | None
    python: str
    ulimit_nofile: int
    ulimit_nproc: int
    tmpfs_mb: int
    #: ``podman info``'s cgroup manager and version, e.g. ``cgroupfs``/``v1``.
    cgroup_manager: str = ""
    cgroups_version: str = ""

    def base_command(self) -> list[str]:
        return [self.podman, "--runtime", self.runtime]

    def root_arguments(self) -> list[str]:
        """The end of ``podman run``'s options: ``--rootfs DIR -v /usr:/usr:ro`` or the image."""
        if self.image:
            return [self.image]
        assert self.rootfs is not None
        return ["-v", f"{HOST_USR}:{HOST_USR}:ro", "--rootfs", self.rootfs]


def container_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``container`` section, with the built-in defaults for anything missing."""
    section = dict(config.get("container") or {})
    defaults: dict[str, Any] = {"podman": "podman", "runtime": "auto", "rootfs": "", "image": "",
                                "python": "/usr/bin/python3", "ulimit_nofile": 1024, "ulimit_nproc": 1024,
                                "tmpfs_mb": 16}
    return {**defaults, **section}


def clamp_ulimit(which: int, wanted: int) -> int:
    """``wanted``, lowered to this process's hard limit (podman cannot raise it for the container)."""
    _soft, hard = resource.getrlimit(which)
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def _tail(text: str, limit: int = 400) -> str:
    text = " ".join(text.strip().split())
    return text if len(text) <= limit else "..." + text[-limit:]


def podman_environment() -> dict[str, str]:
    """The environment of the podman client itself: no host secrets, only what podman needs."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
           "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    for key, value in os.environ.items():
        if key.startswith("CONTAINERS_") or key in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
            env[key] = value
    if "/usr/sbin" not in env["PATH"].split(":"):
        env["PATH"] += ":/usr/sbin:/sbin"  # runc lives in /usr/sbin on Debian
    return env


def run_podman(argv: Sequence[str], *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a podman command, capturing its output; never raises for a non-zero exit."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=podman_environment(),
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(list(argv), 124, "", f"timed out after {exc.timeout:g} s")
    except OSError as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))


def find_podman(config: Mapping[str, Any]) -> tuple[str, str]:
    """The podman client's path and version; raises ContainerUnavailable when it is missing or broken."""
    wanted = str(container_settings(config)["podman"])
    path = shutil.which(wanted, path=podman_environment()["PATH"])
    if path is None:
        raise ContainerUnavailable.worded("podman not found ({podman} is not on PATH; install podman, e.g. "
                                          "'apt-get install podman runc', or set container.podman)",
                                          podman=repr(wanted))
    return path, podman_version(path)


def podman_version(path: str) -> str:
    """``podman --version`` of the client at ``path``, asked once per process and binary.

    Every container sandbox of a run needs it (a run of three targets asked about twenty times, each a Go
    start-up of some 60 ms CPU). The binary's identity is part of the key, so a podman replaced in the
    middle of a run is asked again. Raises ContainerUnavailable when the client does not answer.
    """
    try:
        info = os.stat(path)
        key = f"{path} {info.st_dev} {info.st_ino} {info.st_size} {info.st_mtime_ns}"
    except OSError as exc:
        raise ContainerUnavailable.worded("{path}: {error}", path=path, error=exc.strerror) from None
    with _lock:
        known = _version_cache.get(key)
    if known is not None:
        return known
    result = run_podman([path, "--version"], timeout=20)
    if result.returncode != 0:
        raise ContainerUnavailable.worded("{path} --version failed (exit {code}): {output}", path=path,
                                          code=result.returncode, output=_tail(result.stderr or result.stdout))
    version = result.stdout.strip().split()[-1] if result.stdout.strip() else "unknown"
    with _lock:
        _version_cache[key] = version
    return version


def containers_dir() -> Path:
    path = state_root() / "containers"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def ensure_rootfs(path: Path | None = None) -> Path:
    """The minimal rootfs: empty mount points, /bin -> usr/bin etc., and an /etc with only passwd and group.

    The host's ``/usr`` is mounted over ``usr`` read-only; nothing else of the host is visible
    (the host's ``/etc`` is never mounted). Idempotent and cheap when it already exists.
    """
    root = path or containers_dir() / "rootfs"
    marker = root / ".drhost-rootfs"
    if marker.exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for name in _ROOTFS_DIRS:
        (root / name).mkdir(parents=True, exist_ok=True)
        os.chmod(root / name, 0o755)
    os.chmod(root / "tmp", 0o1777)
    for name, target in _ROOTFS_LINKS.items():
        link = root / name
        if not link.is_symlink():
            with contextlib.suppress(FileExistsError):  # another drhost made it meanwhile
                link.symlink_to(target)
    for name, text in (("passwd", _PASSWD), ("group", _GROUP)):
        (root / "etc" / name).write_text(text, encoding="ascii")
        os.chmod(root / "etc" / name, 0o644)
    marker.write_text("1\n", encoding="ascii")
    return root


def probe_command(podman: str, runtime: str, settings: Mapping[str, Any], rootfs: Path | None) -> list[str]:
    """The ``podman run`` of ``/usr/bin/true`` that shows whether ``runtime`` can start containers here."""
    nofile = clamp_ulimit(resource.RLIMIT_NOFILE, int(settings["ulimit_nofile"]))
    nproc = clamp_ulimit(resource.RLIMIT_NPROC, int(settings["ulimit_nproc"]))
    argv = [podman, "--runtime", runtime, "run", "--rm", "--init", "--network", "none", "--log-driver", "none",
            "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]
    if settings["image"]:
        return [*argv, str(settings["image"]), "true"]
    assert rootfs is not None
    return [*argv, "-v", f"{HOST_USR}:{HOST_USR}:ro", "--rootfs", str(rootfs), "/usr/bin/true"]


def _cache_file() -> Path | None:
    """``podman.json`` in drhost's cache directory, or None when that directory cannot be trusted.

    A fact about this machine, not about a run: kept beside the plugin descriptions rather than in the state
    directory, so that every state directory (every test, too) does not probe podman again. A directory that
    is not ours alone could hand us a runtime to use, so it is not used (memory only, probing each process).
    """
    root = cache_root()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = root.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        return None
    return root / "podman.json"


def _read_cache() -> dict[str, Any]:
    path = _cache_file()
    return {} if path is None else _load(path)


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(key: str, value: Mapping[str, Any]) -> None:
    path = _cache_file()
    if path is None:
        return
    data = _load(path)
    data[key] = dict(value)
    # A cache: failing to write it costs a probe next time, never the run.
    with contextlib.suppress(OSError):
        atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def detect_runtime(podman: str, version: str, settings: Mapping[str, Any], rootfs: Path | None) -> str:
    """The OCI runtime to use: the configured one, or the first candidate that really starts a container.

    Probed once per machine and podman version; the answer is kept in memory and in
    ``podman.json`` in the cache directory. Raises ContainerUnavailable naming every failed attempt.
    """
    configured = str(settings["runtime"])
    candidates = RUNTIME_CANDIDATES if configured == "auto" else (configured,)
    key = f"{podman} {version} {settings['image'] or 'rootfs'} {','.join(candidates)}"
    with _lock:
        if key in _runtime_cache:
            return _runtime_cache[key]
        cached = _read_cache().get(key)
        if isinstance(cached, dict) and isinstance(cached.get("runtime"), str):
            _runtime_cache[key] = cached["runtime"]
            return _runtime_cache[key]
        failures: list[str] = []
        for runtime in candidates:
            result = run_podman(probe_command(podman, runtime, settings, rootfs), timeout=_PROBE_TIMEOUT_S)
            if result.returncode == 0:
                _runtime_cache[key] = runtime
                _remember(key, {"runtime": runtime, "podman": podman, "podman_version": version,
                                "rejected": failures})
                return runtime
            failures.append(f"{runtime}: exit {result.returncode}: {_tail(result.stderr or result.stdout)}")
    raise ContainerUnavailable.worded("podman {version} cannot start a container with any runtime tried "
                                      "({failures})", version=version, failures="; ".join(failures))


_cgroup_cache: dict[str, tuple[str, str]] = {}


def cgroup_info(podman: str, version: str) -> tuple[str, str]:
    """Podman's cgroup manager and cgroups version (empty strings when ``podman info`` fails).

    Cached in memory and, once known, in ``podman.json`` beside the runtime: ``podman info`` costs about
    half a second of CPU (it asks the package manager about every component), and every controller and
    every resume would otherwise pay it again.
    """
    key = f"{podman} {version}"
    disk_key = f"cgroups {key}"
    with _lock:
        if key not in _cgroup_cache:
            cached = _read_cache().get(disk_key)
            if (isinstance(cached, dict) and isinstance(cached.get("manager"), str)
                    and isinstance(cached.get("version"), str)):
                _cgroup_cache[key] = (cached["manager"], cached["version"])
                return _cgroup_cache[key]
            result = run_podman([podman, "info", "--format", "{{.Host.CgroupManager}} {{.Host.CgroupsVersion}}"])
            words = result.stdout.split() if result.returncode == 0 else []
            _cgroup_cache[key] = (words[0], words[1]) if len(words) == 2 else ("", "")
            if len(words) == 2:  # a failed ``podman info`` is asked again next time, not remembered
                _remember(disk_key, {"manager": words[0], "version": words[1]})
        return _cgroup_cache[key]


def forget_runtime() -> None:
    """Drop the cached runtime answers (memory and disk), so the next use probes again."""
    with _lock:
        _runtime_cache.clear()
        _cgroup_cache.clear()
        _version_cache.clear()
        path = _cache_file()
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def podman_setup(config: Mapping[str, Any]) -> PodmanSetup:
    """Everything needed to start a container here; raises ContainerUnavailable saying what failed."""
    settings = container_settings(config)
    podman, version = find_podman(config)
    image = str(settings["image"]) or None
    rootfs: Path | None = None
    if image is None:
        rootfs = Path(str(settings["rootfs"])) if settings["rootfs"] else ensure_rootfs()
        if not rootfs.is_dir():
            raise ContainerUnavailable.worded("container.rootfs {rootfs} is not a directory", rootfs=repr(str(rootfs)))
        python = str(settings["python"])
        if not python.startswith(HOST_USR + "/") or not os.access(python, os.X_OK):
            raise ContainerUnavailable.worded("container.python {python} must be an interpreter under {usr} "
                                              "(the only host tree a rootfs container sees)", python=repr(python),
                                              usr=HOST_USR)
    runtime = detect_runtime(podman, version, settings, rootfs)
    manager, cgroups = cgroup_info(podman, version)
    return PodmanSetup(
        podman=podman, version=version, runtime=runtime, rootfs=str(rootfs) if rootfs else None, image=image,
        python=str(settings["python"]),
        ulimit_nofile=clamp_ulimit(resource.RLIMIT_NOFILE, int(settings["ulimit_nofile"])),
        ulimit_nproc=clamp_ulimit(resource.RLIMIT_NPROC, int(settings["ulimit_nproc"])),
        tmpfs_mb=int(settings["tmpfs_mb"]), cgroup_manager=manager, cgroups_version=cgroups,
    )


def container_available(config: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether containers can be started with ``config``, and what was found or what failed."""
    try:
        setup = podman_setup(config)
    except ContainerUnavailable as exc:
        return False, message_phrase(exc)
    where = f"image {setup.image}" if setup.image else f"rootfs {setup.rootfs}"
    return True, f"podman {setup.version} ({setup.podman}), runtime {setup.runtime}, {where}"
