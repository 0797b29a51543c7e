"""Transports: how drhost reaches a target: ``local`` (a directory tree here) or ``ssh``."""

from typing import TYPE_CHECKING, Any

from ._base import CommandStopped, ManualReconnect, StillRunning, TargetSession, TransportError
from ._become import Become, BecomeError
from ._heartbeat import CONNECTION_TYPES, ConnectionType, HeartbeatSettings
from ._local import LocalSession, stop_process_group
from ._rates import rate_and_eta
from ._registry import TRANSPORTS, Availability, Transport, TransportName, transport
from ._remote_jobs import parse_running_jobs, running_jobs_script

if TYPE_CHECKING:
    from ._ssh import SshSession
    from ._ssh_connect import AuthError, HostKeyError, SshTarget

# paramiko (with cryptography and invoke) is about a third of drhost's start-up: every command would pay it,
# while only SSH targets use it. The SSH names load on first use.
_SSH_NAMES = {"SshSession": "._ssh", "AuthError": "._ssh_connect", "HostKeyError": "._ssh_connect",
              "SshTarget": "._ssh_connect"}


def __getattr__(name: str) -> Any:
    if name in _SSH_NAMES:
        import importlib

        value = getattr(importlib.import_module(_SSH_NAMES[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONNECTION_TYPES",
    "TRANSPORTS",
    "AuthError",
    "Availability",
    "Become",
    "BecomeError",
    "CommandStopped",
    "ConnectionType",
    "HeartbeatSettings",
    "HostKeyError",
    "LocalSession",
    "ManualReconnect",
    "SshSession",
    "SshTarget",
    "StillRunning",
    "TargetSession",
    "Transport",
    "TransportError",
    "TransportName",
    "parse_running_jobs",
    "rate_and_eta",
    "running_jobs_script",
    "stop_process_group",
    "transport",
]
