"""Errors the operator sees. Each carries the data it names and the exit code it maps to."""

from __future__ import annotations

from dataclasses import dataclass


class ExitCode:
    """Process exit codes of ``drhost``; documented in docs/operator-guide.md."""

    SUCCEEDED = 0
    FAILED = 1
    USAGE = 2
    ROLLED_BACK = 3
    ROLLBACK_FAILED = 4
    ABORTED = 5
    INTERRUPTED = 6
    REFUSED = 7


class DrhostError(Exception):
    """A problem the operator can act on: printed as one message, never as a traceback."""

    exit_code = ExitCode.FAILED


@dataclass(frozen=True)
class Origin:
    """Where a setting came from, so an error can point at it."""

    file: str
    section: str
    key: str

    def __str__(self) -> str:
        section = f"[{self.section}] " if self.section else ""
        return f"{self.file}: {section}{self.key}"


class ConfigError(DrhostError):
    """A setting is wrong: names the file, section and key, what was expected and what was found."""

    exit_code = ExitCode.USAGE

    def __init__(self, origin: Origin, expected: str, found: object) -> None:
        self.origin = origin
        self.expected = expected
        self.found = found
        found_text = found if isinstance(found, str) and found.startswith("<") else repr(found)
        super().__init__(f"{origin}: expected {expected}, found {found_text}")


class RefusedError(DrhostError):
    """drhost will not start (or continue) a run, and says why."""

    exit_code = ExitCode.REFUSED


class StateError(DrhostError):
    """A run's state cannot be read or trusted."""

    exit_code = ExitCode.REFUSED
