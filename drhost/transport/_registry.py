"""The transports, one registry entry each: whether this machine has what a transport needs, how a target's
settings are checked, how a session is opened, and where a target's install really is.

Callers look a transport up by its config name (``[target:NAME] transport``) and never compare names
themselves, so a new transport is one module and one entry here (docs/architecture.md, "How to add a
transport").
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from ._base import TargetSession
from ._become import Become
from ._heartbeat import ConnectionType, HeartbeatSettings
from ._jump import parse_proxy_jump
from ._local import LocalSession
from ._remote_jobs import DEFAULT_PYTHON

if TYPE_CHECKING:
    from ._ssh import NetworkListener

#: The names of the built-in transports: the keys of :data:`TRANSPORTS`, and the schema's ``transport`` enum.
TransportName = Literal["local", "ssh"]


class Availability(NamedTuple):
    """Whether this machine offers something, and what was found or what failed."""

    ok: bool
    reason: str


class Transport(Protocol):
    """One way of reaching a target."""

    @property
    def name(self) -> str:
        """The config name (``[target:NAME] transport``)."""
        ...

    @property
    def key_files(self) -> tuple[str, ...]:
        """Target keys naming files on the controller that must be readable (checked before a run)."""
        ...

    def available(self) -> Availability:
        """Whether this controller can use the transport at all."""
        ...

    def problems(self, target: Mapping[str, Any]) -> list[tuple[str, str, object]]:
        """What is wrong with a target's settings: (key, what was expected, what was found)."""
        ...

    def where(self, target: Mapping[str, Any]) -> str:
        """How ``drhost plan`` names the way to the target ("local", "ssh root@host:22")."""
        ...

    def root_identity(self, target: Mapping[str, Any]) -> tuple[str, str]:
        """(machine, normalised path) of the target's install root, to find two targets driving one install."""
        ...

    @property
    def separate_connections(self) -> bool:
        """Whether a target gets one connection per row of ``[ssh:*]`` (control, plugin_exec, status_check); when
        not, one session serves them all."""
        ...

    def connect(self, name: str, target: Mapping[str, Any], config: Mapping[str, Any], *, run_id: str,
                run_dir: Path | None, on_network: NetworkListener | None,
                connection: ConnectionType = "plugin_exec") -> TargetSession:
        """A session to the target for one kind of connection (connecting lazily or now, as the transport does)."""
        ...


@dataclass(frozen=True)
class LocalTransport:
    """The target is a directory tree on the controller."""

    name: str = "local"
    key_files: tuple[str, ...] = ()
    separate_connections: bool = False

    def available(self) -> Availability:
        return Availability(True, "a directory tree on this machine")

    def problems(self, target: Mapping[str, Any]) -> list[tuple[str, str, object]]:
        root = target.get("root")
        if root and not Path(str(root)).is_absolute():
            return [("root", "an absolute path", root)]
        return []

    def where(self, target: Mapping[str, Any]) -> str:
        return "local"

    def root_identity(self, target: Mapping[str, Any]) -> tuple[str, str]:
        # the link and its destination are the same install
        return "localhost", os.path.realpath(str(target.get("root") or ""))

    def connect(self, name: str, target: Mapping[str, Any], config: Mapping[str, Any], *, run_id: str,
                run_dir: Path | None, on_network: NetworkListener | None,
                connection: ConnectionType = "plugin_exec") -> TargetSession:
        return LocalSession(name, kill_grace_s=float(config["run"]["kill_grace_s"]),
                            command_log=None if run_dir is None else run_dir / "commands" / f"{name}.pids")


@dataclass(frozen=True)
class SshTransport:
    """The target is a host reached over SSH (paramiko)."""

    name: str = "ssh"
    key_files: tuple[str, ...] = ("key_file", "password_file", "become_password_file")
    separate_connections: bool = True

    def available(self) -> Availability:
        found = importlib.util.find_spec("paramiko") is not None
        return Availability(found, "paramiko" if found else "paramiko is not installed")

    def problems(self, target: Mapping[str, Any]) -> list[tuple[str, str, object]]:
        found: list[tuple[str, str, object]] = []
        if not target.get("host"):
            found.append(("host", "the host name or address to reach over SSH", "<nothing>"))
        if target.get("proxy_jump"):
            try:
                parse_proxy_jump(str(target["proxy_jump"]))
            except ValueError as exc:
                found.append(("proxy_jump", f"jump hosts as [user@]host[:port],... ({exc})", target["proxy_jump"]))
        return found

    def where(self, target: Mapping[str, Any]) -> str:
        user = str(target.get("user", "root"))
        login = f"ssh {user}@{target['host']}:{target.get('port', 22)}"
        if target.get("proxy_jump"):
            with contextlib.suppress(ValueError):
                hops = parse_proxy_jump(str(target["proxy_jump"]))
                login += " via " + " → ".join(hop.describe(user) for hop in hops)
        return f"{login}, {target['become']} to {target.get('become_user', 'root')}" if target.get("become") else login

    def root_identity(self, target: Mapping[str, Any]) -> tuple[str, str]:
        path = posixpath.normpath(str(target.get("root") or ""))
        if path.startswith("//"):  # kept by normpath (POSIX leaves its meaning open); on a Linux target it is '/'
            path = "/" + path.lstrip("/")
        return f"{str(target.get('host') or '').lower()}:{target.get('port') or 22}", path

    def connect(self, name: str, target: Mapping[str, Any], config: Mapping[str, Any], *, run_id: str,
                run_dir: Path | None, on_network: NetworkListener | None,
                connection: ConnectionType = "plugin_exec") -> TargetSession:
        # Here, not at the top: a run with no SSH target never loads paramiko (see the package's __getattr__).
        from ._ssh import SshSession
        from ._ssh_connect import SshTarget

        user = str(target.get("user", "root"))
        # Jump hosts use the target's credentials, known_hosts and policy (as OpenSSH's -J does by default).
        credentials: dict[str, Any] = {
            "key_file": target.get("key_file"), "password_env": target.get("password_env"),
            "password_file": target.get("password_file"), "known_hosts": target.get("known_hosts"),
            "host_key_policy": target.get("host_key_policy", "strict"),
            "connect_timeout_s": float(target.get("connect_timeout_s", 10.0)),
        }
        jump = tuple(SshTarget(name=f"{name} (jump host {number})", host=hop.host, port=hop.port,
                               user=hop.user or user, **credentials)
                     for number, hop in enumerate(parse_proxy_jump(str(target.get("proxy_jump") or "")), start=1))
        ssh = SshTarget(name=name, host=str(target["host"]), port=int(target.get("port", 22)), user=user, jump=jump,
                        **credentials)
        return SshSession(name, ssh, run_id=run_id, work_dir=f"{target['root']}/.drhost",
                          kill_grace_s=float(config["run"]["kill_grace_s"]),
                          reconnects=int(config["ssh"][connection]["reconnects"]),
                          heartbeat=_heartbeat(config, connection, target),
                          transfer_heartbeat=_heartbeat(config, "transfer", target),
                          on_network=on_network, become=_become(target),
                          remote_helper=None if target.get("remote_helper") == "off"
                          else str(target.get("remote_helper") or DEFAULT_PYTHON),
                          # The design's "manual reconnect": a status check waits for the operator's word.
                          manual_reconnect=connection == "status_check"
                          and int(config["ssh"][connection]["reconnects"]) == 0)


def _heartbeat(config: Mapping[str, Any], connection_type: str, target: Mapping[str, Any]) -> HeartbeatSettings:
    """``[ssh:TYPE]``'s heartbeat, with the target's own ``heartbeat_s``/``dead_after_s`` (from the inventory or
    its ssh_config's ServerAliveInterval/CountMax) where it has them."""
    settings = HeartbeatSettings.from_config(config, connection_type)
    interval = float(target.get("heartbeat_s", settings.interval_s))
    return dataclasses.replace(settings, interval_s=interval,
                               dead_after_s=float(target.get("dead_after_s", max(settings.dead_after_s, interval))))


def _become(target: Mapping[str, Any]) -> Become | None:
    """The target's ``become`` keys, or None when it works as its login user."""
    if not target.get("become"):
        return None
    return Become(user=str(target.get("become_user", "root")), method=str(target["become"]),
                  password_env=target.get("become_password_env"), password_file=target.get("become_password_file"))


#: Every transport this drhost has, by config name.
TRANSPORTS: dict[str, Transport] = {kind.name: kind for kind in (LocalTransport(), SshTransport())}


def transport(name: str) -> Transport:
    """The transport called ``name``; an unknown name is an error naming the known ones."""
    try:
        return TRANSPORTS[name]
    except KeyError:
        raise ValueError(f"unknown transport {name!r}; this drhost has: {', '.join(TRANSPORTS)}") from None
