"""Transports: how drhost reaches a target: ``local`` (a directory tree here) or ``ssh``."""

from ._base import CommandStopped, StillRunning, TargetSession, TransportError
from ._heartbeat import HeartbeatSettings
from ._local import LocalSession, stop_process_group
from ._registry import TRANSPORTS, Availability, Transport, TransportName, transport
from ._remote_jobs import parse_running_jobs, running_jobs_script
from ._sftp_upload import rate_and_eta
from ._ssh import SshSession
from ._ssh_connect import AuthError, HostKeyError, SshTarget

__all__ = [
    "TRANSPORTS",
    "AuthError",
    "Availability",
    "CommandStopped",
    "HeartbeatSettings",
    "HostKeyError",
    "LocalSession",
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
