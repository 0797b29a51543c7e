"""Reporters: subscribers that turn events into what the operator reads."""

from ._console import LiveReporter, PlainReporter, describe
from ._html import build_report, write_report

__all__ = ["LiveReporter", "PlainReporter", "build_report", "describe", "write_report"]
