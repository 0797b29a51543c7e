"""The container sandbox: a worker in a podman container that sees only ``/usr`` and its plugin bundle.

The worker runner talks to the ``podman run -i`` client over its stdin/stdout exactly as to a
child process. The container has no network, a read-only root (only ``/tmp`` is a small tmpfs),
no capabilities, uid 65534, and cgroup limits on memory (no swap), CPU and process count; the
kernel enforces them, so the supervisor does not sample memory. Every container carries labels
naming this sandbox, and is removed by ``stop``/``close`` (not by ``--rm``: an exited container is
inspected first, so an OOM kill is told apart from any other SIGKILL).

With ``container.image`` set the container starts from that image instead of the rootfs plus the
host's ``/usr``; the image must have ``container.python``. That path is not exercised by the tests
on this machine.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drhost_hookspecs._runtime import MAX_MESSAGE_BYTES, WORKER_MODULE, encode, error_to_json

from ..errors import message_phrase
from ..policy import Isolation
from ..transport import stop_process_group
from ._bundle import MOUNT_POINT, SITE, Bundle, BundleError, build_bundle
from ._cgroups import cgroup_dirs_of, limit_counters
from ._podman import PodmanSetup, containers_dir, podman_environment, podman_setup, run_podman
from ._sandbox import DelegatingSandbox, Sandbox, process_alive, tree_usage

_launches = itertools.count(1)
_USAGE_EVERY_S = 2.0
_GONE_TIMEOUT_S = 20.0
_SIGKILL_EXIT = 137
_CGROUP_V1 = Path("/sys/fs/cgroup")
#: A peak this close to the limit, with a SIGKILL, is the memory limit (cgroup v1 has no OOMKilled here).
_NEAR_LIMIT = 0.9
#: podman's own exits: 125 podman failed, 126 the command cannot be run, 127 not found.
_PODMAN_EXITS = {125: "podman or the OCI runtime failed to start the container",
                 126: "the worker command could not be run in the container",
                 127: "the worker command was not found in the container"}


def _sanitize(text: str, limit: int = 80) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-._")
    return cleaned[:limit].strip("-._") or "x"


class ContainerSandbox:
    """One plugin's workers for one target, each in its own podman container."""

    kind: Isolation = "container"
    enforces_memory = True
    enforces_processes = True

    def __init__(self, *, memory_mb: int, cpu_percent: int, nofile: int, label: str,
                 message_limit: int = MAX_MESSAGE_BYTES, pids_limit: int = 64,
                 config: Mapping[str, Any] | None = None, setup: PodmanSetup | None = None,
                 bundles_dir: Path | None = None) -> None:
        self.memory_limit_bytes: int | None = memory_mb * 1024 * 1024
        self.process_limit: int | None = pids_limit
        #: the sandbox holding the limits: it wraps nothing
        self.inner: Sandbox | None = None
        self._memory_mb = memory_mb
        #: The class's CPU share (``--cpus`` = cpu_percent / 100), named when it throttled a step that timed out.
        self.cpu_percent: int | None = cpu_percent
        self._cpus = max(0.01, cpu_percent / 100)
        self._label = _sanitize(label, 60)
        #: The run a container belongs to (the label starts with the run id), so a later controller of the
        #: same run can remove what a killed one left behind.
        self._run = _sanitize(label.split("/", 1)[0], 60)
        self._message_limit = message_limit
        #: Raises ContainerUnavailable when podman cannot start containers here.
        self.setup = setup or podman_setup(config or {})
        self._nofile = min(nofile, self.setup.ulimit_nofile)
        self._bundles_dir = bundles_dir
        self._bundles: dict[str, Bundle] = {}
        self.sandbox_id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.name: str | None = None
        #: The kernel limit that ended the last worker ("memory"), read by the runner.
        self.exit_limit: str | None = None
        self._leftovers: set[str] = set()
        self._pid: int | None = None
        self._pid_checked = 0.0
        #: The running container's cgroups, found once per launch (never again from a pid that may be reused).
        self._cgroups: tuple[int, dict[str, Path]] | None = None
        self._lock = threading.Lock()
        # On cgroup v1 with cgroupfs, podman does not report OOMKilled: each sandbox gets its own parent
        # cgroup, which outlives the container, so the memory peak tells a memory kill from another SIGKILL.
        self.cgroup_parent: str | None = None
        if (self.setup.cgroup_manager == "cgroupfs" and self.setup.cgroups_version == "v1"
                and (_CGROUP_V1 / "memory").is_dir()):
            self.cgroup_parent = f"/drhost-containers/{self.sandbox_id}"

    # -- what is launched ---------------------------------------------------------------
    def bundle(self, entry_point: str) -> Bundle:
        """The (cached) bundle of ``entry_point``: checked for changed sources once per sandbox."""
        if entry_point not in self._bundles:
            where = self._bundles_dir or containers_dir() / "bundles"
            compile_with = None if self.setup.image else self.setup.python
            self._bundles[entry_point] = build_bundle(entry_point, where, compile_with=compile_with)
        return self._bundles[entry_point]

    def worker_env(self) -> dict[str, str]:
        """The worker's environment inside the container (passed with ``--env``)."""
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": "/tmp",
            "PYTHONPATH": SITE,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            # Memory is the cgroup's job: no RLIMIT_AS here (it would count address space, not memory).
            "DRHOST_WORKER_LIMITS": json.dumps({"nofile": self._nofile, "core_bytes": 0}),
            "DRHOST_WORKER_MESSAGE_LIMIT": str(self._message_limit),
        }
        if "DRHOST_INSTANT_RETRIES" in os.environ:
            env["DRHOST_INSTANT_RETRIES"] = os.environ["DRHOST_INSTANT_RETRIES"]
        return env

    def command(self, entry_point: str) -> list[str]:
        try:
            bundle = self.bundle(entry_point)
        except (BundleError, OSError) as exc:
            # The runner reports a worker that could not start, with this reason.
            self.name = None
            return _fatal_command(BundleError.worded("cannot build the container bundle of {entry_point}: {error}",
                                                     entry_point=repr(entry_point), error=message_phrase(exc)))
        self.name = f"drhost-{self._label}-{next(_launches)}-{secrets.token_hex(2)}"
        self._leftovers.add(self.name)
        self._pid = None
        self._pid_checked = 0.0
        self._cgroups = None
        setup = self.setup
        argv = [
            # --init: the worker must not be PID 1, which ignores signals it has no handler for (even a
            # plugin's own SIGKILL to itself) and would leave forked children unreaped.
            *setup.base_command(), "run", "-i", "--init", "--name", self.name,
            "--label", "drhost=worker", "--label", f"drhost.sandbox={self.sandbox_id}",
            "--label", f"drhost.run={self._run}",
            "--network", "none", "--read-only", "--read-only-tmpfs=false",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", "65534:65534",
            "--memory", f"{self._memory_mb}m", "--memory-swap", f"{self._memory_mb}m",
            "--cpus", f"{self._cpus:g}", "--pids-limit", str(self.process_limit),
            "--ulimit", f"nofile={self._nofile}:{self._nofile}",
            "--ulimit", f"nproc={setup.ulimit_nproc}:{setup.ulimit_nproc}",
            "--tmpfs", f"/tmp:rw,size={setup.tmpfs_mb}m,mode=1777",
            "--log-driver", "none", "--workdir", "/tmp",
            "-v", f"{bundle.path}:{MOUNT_POINT}:ro",
        ]
        if self.cgroup_parent:
            argv += ["--cgroup-parent", self.cgroup_parent]
        for key, value in sorted(self.worker_env().items()):
            argv += ["--env", f"{key}={value}"]
        # -S: no site-packages of the interpreter; the bundle is the only code besides the stdlib.
        return [*argv, *setup.root_arguments(), setup.python, "-S", "-m", WORKER_MODULE, entry_point]

    def environment(self) -> dict[str, str]:
        return podman_environment()

    # -- lifecycle ------------------------------------------------------------------------
    def prepare(self) -> None:
        self.exit_limit = None
        # A previous launch that was not confirmed gone (for example a worker that exited on its own).
        if self._leftovers:
            self._remove(sorted(self._leftovers))
        peak = self._parent_file("memory.max_usage_in_bytes")
        if peak is not None and peak.exists():
            with contextlib.suppress(OSError):
                peak.write_text("0", encoding="ascii")  # a fresh peak for this launch

    def _parent_file(self, name: str) -> Path | None:
        if self.cgroup_parent is None:
            return None
        return _CGROUP_V1 / "memory" / self.cgroup_parent.lstrip("/") / name

    def memory_peak_bytes(self) -> int | None:
        """The highest memory use of this sandbox's container since the last launch (cgroup v1 only)."""
        path = self._parent_file("memory.max_usage_in_bytes")
        try:
            return int(path.read_text(encoding="ascii")) if path is not None else None
        except (OSError, ValueError):
            return None

    def started(self, pid: int) -> None:
        return None

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float) -> None:
        """Kill the container (no cooperation needed), end the client's process group, confirm it is gone."""
        del grace_s  # the runner has already waited its grace before it stops a worker
        if self.name is not None:
            run_podman([*self.setup.base_command(), "kill", self.name], timeout=30)
        stop_process_group(proc, 2.0)
        if self.name is not None:
            self._remove([self.name])

    def _remove(self, names: list[str]) -> None:
        if not names:
            return
        run_podman([*self.setup.base_command(), "rm", "-f", "-i", "-t", "0", *names], timeout=60)
        deadline = time.monotonic() + _GONE_TIMEOUT_S
        while True:
            remaining = [name for name in names if self._exists(name)]
            if not remaining:
                self._leftovers.difference_update(names)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"containers still present after removal: {', '.join(remaining)}")
            run_podman([*self.setup.base_command(), "rm", "-f", "-i", "-t", "0", *remaining], timeout=60)
            time.sleep(0.2)

    def _exists(self, name: str) -> bool:
        result = run_podman([self.setup.podman, "ps", "-a", "--filter", f"name=^{name}$", "--format",
                             "{{.Names}}"], timeout=30)
        return name in result.stdout.split()

    def containers(self) -> list[str]:
        """Names of this sandbox's containers that podman still knows (running or not)."""
        result = run_podman([self.setup.podman, "ps", "-a", "--filter", f"label=drhost.sandbox={self.sandbox_id}",
                             "--format", "{{.Names}}"], timeout=30)
        return result.stdout.split()

    def explain_exit(self, returncode: int) -> str | None:
        """Name the container limit that ended the worker; removes the exited container."""
        name = self.name
        if name is None:
            return None
        oom: bool | None = None
        result = run_podman([self.setup.podman, "inspect", name, "--format", "{{.State.OOMKilled}}"], timeout=30)
        if result.returncode == 0:
            oom = result.stdout.strip().lower() == "true"
        with contextlib.suppress(RuntimeError):
            self._remove([name])
        limit = f"killed by the container memory limit ({self._memory_mb} MiB)"
        if oom:
            self.exit_limit = "memory"
            return limit
        peak = self.memory_peak_bytes()
        if returncode == _SIGKILL_EXIT and peak is not None and self.memory_limit_bytes \
                and peak >= _NEAR_LIMIT * self.memory_limit_bytes:
            self.exit_limit = "memory"
            return f"{limit}; peak {peak // (1024 * 1024)} MiB"
        if peak is not None:
            oom = False  # the peak was far from the limit: some other SIGKILL
        if oom is None and returncode == _SIGKILL_EXIT:
            return f"{limit} or another SIGKILL (exit 137; the container could not be inspected)"
        if returncode == _SIGKILL_EXIT:
            return "killed by SIGKILL (exit 137)"
        if returncode in _PODMAN_EXITS:
            return f"{_PODMAN_EXITS[returncode]} (exit {returncode}; see the worker's stderr)"
        if returncode > 128:
            try:
                name = signal.Signals(returncode - 128).name
            except ValueError:
                name = f"signal {returncode - 128}"
            return f"killed by {name} (exit {returncode})"
        return None

    def usage(self) -> dict[str, Any]:
        """RSS, processes and CPU of the container's processes, seen from the host (psutil)."""
        now = time.monotonic()
        if self._pid is None and self.name is not None and now - self._pid_checked >= _USAGE_EVERY_S:
            self._pid_checked = now
            result = run_podman([self.setup.podman, "inspect", self.name, "--format", "{{.State.Pid}}"], timeout=10)
            with contextlib.suppress(ValueError):
                self._pid = int(result.stdout.strip()) or None
        return tree_usage(self._pid)

    def limit_counters(self) -> dict[str, float]:
        """The kernel's limit counters (fork refusals at ``--pids-limit``, OOM kills, CPU throttling) of the
        running container's cgroups, found from its init's ``/proc/PID/cgroup``; empty before it is known and
        once it is gone."""
        if self._cgroups is None:
            if self._pid is None:
                return {}
            version, dirs = cgroup_dirs_of(self._pid)
            if not dirs:
                return {}
            self._cgroups = (version, dirs)
        version, dirs = self._cgroups
        return limit_counters(dirs, version)

    def in_force(self) -> dict[str, Any]:
        setup = self.setup
        return {
            "mechanism": "container",
            "podman": setup.podman, "podman_version": setup.version, "runtime": setup.runtime,
            "root": {"image": setup.image} if setup.image else {"rootfs": setup.rootfs, "usr": "host /usr, read-only"},
            "memory_bytes": self.memory_limit_bytes, "memory_swap": "none", "cpus": self._cpus,
            "pids": self.process_limit, "nofile": self._nofile, "nproc": setup.ulimit_nproc,
            "network": "none", "read_only_root": True, "tmpfs_tmp_mb": setup.tmpfs_mb,
            "capabilities": "none", "no_new_privileges": True, "user": "65534:65534",
        }

    def close(self) -> None:
        """Remove every container of this sandbox that podman still knows; idempotent."""
        names = sorted(set(self.containers()) | self._leftovers)
        self._remove(names)
        self._remove_cgroup_parent()

    def _remove_cgroup_parent(self) -> None:
        """Remove this sandbox's parent cgroups (only ours: /drhost-containers/<sandbox id>), deepest first."""
        if self.cgroup_parent is None:
            return
        for controller in _CGROUP_V1.iterdir():
            top = controller / self.cgroup_parent.lstrip("/")
            if not top.is_dir() or top.is_symlink():
                continue
            for directory, _dirs, _files in sorted(os.walk(top), key=lambda item: -len(item[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)


def _fatal_command(exc: BaseException) -> list[str]:
    """A command that only tells the runner why no worker can start."""
    line = encode({"type": "fatal", "error": error_to_json(exc)}, limit=MAX_MESSAGE_BYTES)
    return [sys.executable, "-c", f"import sys; sys.stdout.buffer.write({line!r}); sys.exit(3)"]


class WeakerSandbox(DelegatingSandbox):
    """Another sandbox standing in for the container that could not be started (run.allow_weaker_isolation)."""

    def __init__(self, inner: Sandbox, why: str) -> None:
        super().__init__(inner)
        self.why = why

    def in_force(self) -> dict[str, Any]:
        return {**self.inner.in_force(), "weaker_than_configured": self.why}


def remove_left_containers(config: Mapping[str, Any], *, run_id: str | None = None) -> list[str]:
    """Remove the drhost worker containers a killed controller left: those of run ``run_id`` (when given) and
    those whose controller process is gone. One listing serves both: every podman command costs ~40 ms of CPU
    and a run cleans up at its start and at its end."""
    try:
        setup = podman_setup(config)
    except Exception:  # no podman: nothing can be left behind
        return []
    run_label = _sanitize(run_id, 60) if run_id is not None else None
    listed = run_podman([setup.podman, "ps", "-a", "--filter", "label=drhost=worker", "--format",
                         '{{.Names}} {{index .Labels "drhost.sandbox"}} {{index .Labels "drhost.run"}}'],
                        timeout=60)
    left = []
    for line in listed.stdout.splitlines():
        name, sandbox, run = [*line.split(" "), "", ""][:3]
        owner = sandbox.split("-", 1)[0]
        if (run_label is not None and run == run_label) or (owner.isdigit() and not process_alive(int(owner))):
            left.append(name)
    if left:
        run_podman([setup.podman, "rm", "-f", "-i", *left], timeout=120)  # -i: another sweep may be first
    return left
