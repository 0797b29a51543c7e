"""Exceptions a plugin raises to tell the host what happened."""

from __future__ import annotations


class PluginError(Exception):
    """Base of every error a plugin raises on purpose."""


class StepFailed(PluginError):
    """The step did not do its job.

    ``retryable=False`` overrides a retryable step's declaration for this failure:
    the host will not try the step again as it is (for example, the target was found
    in a state the step cannot handle).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class SkipStep(PluginError):
    """The step does not apply to this target; it is recorded as skipped, not failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpToDate(PluginError):
    """Raised in precheck: the target already runs the package's version.

    The host then changes nothing on that target and reports it as up to date.
    """

    def __init__(self, version: str) -> None:
        super().__init__(f"already at version {version}")
        self.version = version


class Cancelled(BaseException):
    """Raised inside a step when the host stops it (timeout, abort, Ctrl-C).

    A ``BaseException`` so that a plugin's ``except Exception`` does not swallow it.
    """
