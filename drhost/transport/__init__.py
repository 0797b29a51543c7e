"""Transports: how drhost reaches a target. ``local`` now; ``ssh`` fits the same interface."""

from ._base import CommandStopped, TargetSession, TransportError
from ._local import LocalSession, stop_process_group

__all__ = ["CommandStopped", "LocalSession", "TargetSession", "TransportError", "stop_process_group"]
