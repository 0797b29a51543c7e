"""Reporters: subscribers that turn events into what the operator reads."""

from ._console import LiveReporter, PlainReporter, describe

__all__ = ["LiveReporter", "PlainReporter", "describe"]
