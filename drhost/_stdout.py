"""The command line's own stdout, kept apart from anything plugin code in the host prints.

Plugins of a ``thread`` class (core) run inside the drhost process: a ``print()`` at import or in a step, a
``sys.stdout.write`` or an ``os.write(1, ...)`` would land in the middle of what the command prints — and
``--json`` must print exactly one JSON document. So, for the duration of a command (:func:`cli_stdout`):

- file descriptor 1 is a copy of descriptor 2: whatever writes to fd 1 directly (plugin code, a C extension,
  a child process that inherits it) goes to **stderr**;
- the real stdout lives on in a private descriptor (not inherited by child processes), wrapped as the stream
  the command's own output goes to;
- ``sys.stdout`` is a router: text written by the command's own thread goes to that stream; text written by
  any other thread (steps run in threads of their own, and so does anything a plugin starts), or by the
  command's thread while it runs plugin code (:func:`plugin_code`: the import of a core plugin), goes to
  **stderr**.

Plugin output therefore ends up on drhost's stderr, next to the progress lines, never on stdout.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

_local = threading.local()


@contextlib.contextmanager
def plugin_code() -> Iterator[None]:
    """Mark plugin code running in this thread (importing a core plugin): what it prints goes to stderr."""
    depth = int(getattr(_local, "depth", 0))
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth


class RoutedStdout:
    """``sys.stdout`` during a command: the command's thread writes to the command's stdout, the rest to stderr."""

    def __init__(self, command: TextIO, other: TextIO, owner: threading.Thread) -> None:
        self._command = command
        self._other = other
        self._owner = owner

    def _stream(self) -> TextIO:
        if threading.current_thread() is self._owner and not getattr(_local, "depth", 0):
            return self._command
        return self._other

    def write(self, text: str) -> int:
        return self._stream().write(text)

    def flush(self) -> None:
        self._stream().flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream(), name)


def _is_fd1(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.fileno() == 1
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return False


@contextlib.contextmanager
def cli_stdout(*, restore: bool = True) -> Iterator[None]:
    """For the duration of a command: fd 1 and other threads' ``sys.stdout`` go to stderr (see the module).

    ``restore=False`` (the process ends with the command): afterwards fd 1 and ``sys.stdout`` stay on stderr,
    so a plugin thread still running while the interpreter exits cannot add to what the command printed.
    """
    original = sys.stdout
    with contextlib.suppress(Exception):
        original.flush()
    try:
        saved = os.dup(1)  # not inheritable: no child process gets the real stdout
    except OSError:  # no fd 1 at all: nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
    except OSError:
        os.close(saved)
        yield
        return
    # The command keeps writing where it wrote before: the real stdout through the private descriptor — or,
    # when sys.stdout is not fd 1 (a caller captured it), that very object.
    real = _is_fd1(original)
    command: TextIO = original
    if real:
        command = io.TextIOWrapper(io.FileIO(os.dup(saved), "w", closefd=True),
                                   encoding=original.encoding, errors=original.errors,
                                   line_buffering=bool(getattr(original, "line_buffering", False)))
    sys.stdout = RoutedStdout(command, sys.stderr, threading.current_thread())
    try:
        yield
    finally:
        sys.stdout = original if restore else sys.stderr
        if real:
            with contextlib.suppress(OSError, ValueError):  # BrokenPipeError: the reader went away
                command.close()
        else:
            with contextlib.suppress(Exception):
                command.flush()
        if restore:
            os.dup2(saved, 1)
        os.close(saved)
