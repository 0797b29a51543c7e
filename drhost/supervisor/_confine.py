"""Confinement of process workers: own namespaces, no network, an unprivileged identity.

A plugin reaches its target only through the Context: the host performs every effect.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from drhost_hookspecs._runtime import CONFINE_ENV

from ..errors import RefusedError, phrase
from ._sandbox import DelegatingSandbox, Sandbox

#: The unprivileged identity of process workers, created by scripts/install-dev.
DEFAULT_WORKER_USER = "drhost-worker"
DEFAULT_SCRATCH_MB = 64


@functools.lru_cache(maxsize=1)
def network_namespace_available() -> tuple[bool, str]:
    """Whether ``unshare --net`` works here (it needs root or user namespaces); probed once."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False, phrase("unshare(1) not found (util-linux)")
    probe = subprocess.run([unshare, "--net", "--", "true"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        return False, phrase("unshare --net failed: {stderr}", stderr=probe.stderr.strip()[-200:])
    return True, unshare


@dataclass(frozen=True)
class Confinement:
    """How a process worker is confined: which namespaces, which identity, how much scratch space.

    ``user`` is None where drhost itself is not root: the worker then runs as drhost's own
    user, which cannot change anything drhost could not.
    """

    #: unshare(1), for the network namespace of a worker that cannot build its own (drhost not root)
    unshare: str
    network: bool
    user: str | None = None
    uid: int = -1
    gid: int = -1
    scratch_mb: int = DEFAULT_SCRATCH_MB

    def command(self, worker: list[str]) -> list[str]:
        if self.user is None:
            return [self.unshare, "--net", "--", *worker] if self.network else worker
        # A root drhost: the worker builds its namespaces itself (drhost_hookspecs._runtime._confine), so that it is
        # pid 1 of its own pid namespace with a relay outside that passes on how it ended.
        return worker

    def environment(self) -> dict[str, str]:
        if self.user is None:
            return {}
        spec = {"user": self.user, "uid": self.uid, "gid": self.gid, "tmpfs_mb": self.scratch_mb,
                "network": self.network}
        # PYTHONSAFEPATH: the worker's working directory is never on sys.path (Python 3.11+).
        return {CONFINE_ENV: json.dumps(spec), "PYTHONSAFEPATH": "1"}

    def in_force(self) -> dict[str, Any]:
        found: dict[str, Any] = {"network": "none (own network namespace)" if self.network else "host"}
        if self.user is None:
            found["identity"] = ("root (no worker user; weaker isolation allowed)" if os.geteuid() == 0
                                  else f"drhost's own user (uid {os.geteuid()}, not root)")
            return found
        found.update(
            identity=f"user {self.user} (uid {self.uid}), no supplementary groups, no_new_privs, no capabilities",
            filesystem=f"host read-only (private mount namespace); writable: own tmpfs on /tmp, /var/tmp, "
                       f"/dev/shm ({self.scratch_mb} MiB)",
            processes="own pid and IPC namespace (sees and signals only its own processes)",
        )
        return found


class ConfinedSandbox(DelegatingSandbox):
    """Runs the inner sandbox's worker confined (see :class:`Confinement`); limits stay the inner sandbox's."""

    def __init__(self, inner: Sandbox, confinement: Confinement) -> None:
        super().__init__(inner)
        self.confinement = confinement

    def command(self, entry_point: str) -> list[str]:
        return self.confinement.command(self.inner.command(entry_point))

    def environment(self) -> dict[str, str]:
        return {**self.inner.environment(), **self.confinement.environment()}

    def in_force(self) -> dict[str, Any]:
        return {**self.inner.in_force(), **self.confinement.in_force()}


def worker_identity(config: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """The (user, uid, gid) process workers run as; None where drhost is not root.

    Raises RefusedError when drhost is root and the worker user is missing or switched off,
    unless weaker isolation is allowed (then None: the worker stays root, and says so).
    """
    if os.geteuid() != 0:
        return None
    user = str((config.get("process") or {}).get("user", DEFAULT_WORKER_USER))
    weaker = bool((config.get("run") or {}).get("allow_weaker_isolation"))
    if user:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            why = phrase("the worker user {user} does not exist on this machine", user=repr(user))
        else:
            if entry.pw_uid == 0 or entry.pw_gid == 0:
                raise RefusedError.worded("[process] user = {user} is root (uid {uid}, gid {gid}); process workers "
                                          "need an unprivileged user", user=repr(user), uid=entry.pw_uid,
                                          gid=entry.pw_gid)
            return user, entry.pw_uid, entry.pw_gid
    else:
        why = phrase("[process] user is empty")
    if weaker:
        return None
    raise RefusedError.worded(
        "process workers run as an unprivileged user, and {why}. Create it with scripts/install-dev (it runs: "
        "useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --user-group "
        "{user}), or run the workers as root with --set run.allow_weaker_isolation=true",
        why=why, user=DEFAULT_WORKER_USER)


def confine_process(sandbox: Sandbox, config: Mapping[str, Any]) -> Sandbox:
    """Process workers: own namespaces, an empty network unless ``[process] network = host``, not root.

    ``sandbox`` is a process sandbox (cgroups or rlimits): the process kind's entry is the only caller."""
    process = config.get("process") or {}
    network = process.get("network", "none") == "none"
    scratch = int(process.get("tmpfs_mb", DEFAULT_SCRATCH_MB))
    identity = worker_identity(config)
    if identity is not None:
        user, uid, gid = identity
        return ConfinedSandbox(sandbox, Confinement("", network, user, uid, gid, scratch))
    if not network:
        return sandbox
    available, unshare = network_namespace_available()
    if not available:
        raise RefusedError.worded("process workers cannot be cut off the network here ({why}); set [process] "
                                  "network = host to run them with the host's network", why=unshare)
    return ConfinedSandbox(sandbox, Confinement(unshare, network, scratch_mb=scratch))

def innermost(sandbox: Sandbox) -> Sandbox:
    """The sandbox that holds the limits, under any wrappers (confinement, weaker-isolation notes)."""
    while (inner := sandbox.inner) is not None:
        sandbox = inner
    return sandbox
