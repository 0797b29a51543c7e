"""Transports: how drhost reaches a target: ``local`` (a directory tree here) or ``ssh``."""

from ._base import CommandStopped, TargetSession, TransportError
from ._local import LocalSession, stop_process_group
from ._ssh import SshSession
from ._ssh_connect import AuthError, HostKeyError, SshTarget

__all__ = [
    "AuthError",
    "CommandStopped",
    "HostKeyError",
    "LocalSession",
    "SshSession",
    "SshTarget",
    "TargetSession",
    "TransportError",
    "stop_process_group",
]
