"""How a command that did not succeed says so: one line on stderr, and with ``--json`` one JSON object on stdout.

Also the last line of defence: an exception nobody expected becomes one line and a private debug log holding the
traceback, never a raw traceback on the operator's terminal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import select
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..errors import (
    ConfigError,
    EnvironmentVariableError,
    ExitCode,
    Phrase,
    UsageError,
    WordedError,
    error_details,
    json_value,
    quote,
    said_in,
    shown,
)
from ..i18n import N_, Translate, translator

#: Longest command-line argument accepted: a path longer than PATH_MAX, or a run id or setting this long, is a
#: mistake (a pasted file, a runaway script), and repeating it in an error would bury the line that names it.
ARGUMENT_LIMIT = 4096


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are exceptions, so that ``--json`` can report them as JSON."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("drhost").strip()
        named = re.match(r"argument ([^:]+): ", message)
        where = {"argument": named.group(1) if named else None}
        # argparse's own message is argparse's (English) words; the frame around it is drhost's.
        if command:
            raise UsageError.worded("{command}: {message} (see {prog} --help)", command=command,
                                    message=shown(message, 1000), prog=self.prog, init=where)
        raise UsageError.worded("{message} (see {prog} --help)", message=shown(message, 1000), prog=self.prog,
                                init=where)


def wants_json(argv: Sequence[str]) -> bool:
    """``--json`` (or an abbreviation argparse would accept) among the options, before any ``--``."""
    for token in argv:
        if token == "--":
            return False
        if len(token) > 3 and "--json".startswith(token):
            return True
    return False


def _option_names(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _option_names(sub)
        elif action.dest not in (argparse.SUPPRESS, "help"):
            yield action.dest, max(action.option_strings, key=len) if action.option_strings else action.dest.upper()


def check_lengths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse any argument longer than :data:`ARGUMENT_LIMIT`, naming its option (before it reaches a path)."""
    names = dict(_option_names(parser))
    for dest, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and len(item) > ARGUMENT_LIMIT:
                name = names.get(dest, dest)
                raise UsageError.worded("argument {name}: expected at most {limit} characters, found {count}: "
                                        "{value}", name=name, limit=ARGUMENT_LIMIT, count=len(item),
                                        value=quote(item), init={"argument": name, "value": item})


def error_object(exc: BaseException, code: int, **extra: Any) -> dict[str, Any]:
    """The ``--json`` error object (docs/operator-guide.md, "--json errors")."""
    error: dict[str, Any] = {"message": str(exc), "type": type(exc).__name__, **error_details(exc), **extra}
    # A path or argument that was not UTF-8 holds lone surrogates: valid in Python, refused by strict JSON
    # readers; they are spelled out (\\udcff) instead.
    return {"error": {k: _unicode(v) for k, v in error.items()}, "exit_code": code}


def _unicode(value: Any) -> Any:
    return value.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(value, str) else value


_COMMAND_LINE = N_("command line")


def said(exc: BaseException, t: Translate) -> str:
    """The error's message in the operator's language where drhost words it from parts (a setting's file, key,
    expected and found; an environment variable), else as raised: what it quotes (paths, keys, values, a
    plugin's own words) is the same in every language, so an operator can search for it."""
    if isinstance(exc, ConfigError):
        # What was expected is translated when it is a message id (a constant phrase marked N_ where raised), and
        # so is the origin "command line"; a file's path stays as it is.
        origin = dataclasses.replace(exc.origin, file=t(exc.origin.file)) if exc.origin.file == _COMMAND_LINE \
            else exc.origin
        # What was found is a phrase when it is a worded error's message (an inventory's, an ssh_config's).
        found = shown(said_in(exc.found, t)) if isinstance(exc.found, Phrase) else exc.found_text
        return t("{origin}: expected {expected}, found {found}").format(origin=origin,
                                                                       expected=said_in(exc.expected, t),
                                                                       found=found)
    if isinstance(exc, EnvironmentVariableError):
        return t("environment variable {variable}={value}: expected {expected}").format(
            variable=exc.variable, value=quote(exc.value), expected=said_in(exc.expected, t))
    if isinstance(exc, WordedError):
        return exc.in_language(t)
    return str(exc)


def report(exc: BaseException, code: int, *, as_json: bool, line: str | None = None, **extra: Any) -> int:
    """Say that the command failed: ``line`` (default ``drhost: error: EXC``, in the operator's language) on
    stderr, the object (English, for tools) on stdout."""
    if line is None:
        t = translator()
        line = t("drhost: error: {message}").format(message=said(exc, t))
    print(line, file=sys.stderr)
    if as_json:
        print(json.dumps(error_object(exc, code, **extra)))
    return code


def write_debug_log(exc: BaseException, argv: Sequence[str], state_dir: Path | None) -> Path | None:
    """The traceback of ``exc`` in a new file readable by this user only: under ``state_dir/debug`` when it is
    usable, else in the temp dir. None when neither can be written (the line on stderr is then all there is)."""
    text = (f"drhost internal error at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, pid {os.getpid()}\n"
            f"argv: {list(argv)!r}\n\n" + "".join(traceback.format_exception(exc)))
    name = f"internal-error-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.getpid()}"
    if state_dir is not None:
        try:
            directory = state_dir / "debug"
            directory.mkdir(mode=0o700, exist_ok=True)
            path = directory / f"{name}.log"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as out:
                out.write(text)
            return path
        except OSError:
            pass
    try:
        fd, name_in_tmp = tempfile.mkstemp(prefix=f"drhost-{name}-", suffix=".log")  # mode 0600
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as out:
            out.write(text)
        return Path(name_in_tmp)
    except OSError:
        return None


def internal_error(exc: BaseException, argv: Sequence[str], state_dir: Path | None, *, as_json: bool) -> int:
    """An exception nobody expected: one line naming it and the debug log with its traceback; exit 1."""
    log = write_debug_log(exc, argv, state_dir)
    t = translator()
    where = t("details: {path}").format(path=log) if log else t("no debug log could be written")
    message = json_value(" ".join(str(exc).split()))  # one line, whatever the exception's text holds
    line = t("drhost: internal error: {exception}: {message} ({where})").format(
        exception=type(exc).__name__, message=message, where=where)
    return report(exc, ExitCode.FAILED, as_json=as_json, line=line, message=message, type="InternalError",
                  exception=type(exc).__name__, debug_log=str(log) if log else None)


def stdout_gone() -> bool:
    """Whether the command's stdout is a pipe whose reader went away (``drhost plan | head``).

    A BrokenPipeError from anything else (a pipe to a child process, a socket) is a failure, not a reader that
    left: taking it for one would end a broken command with exit 0 and no word.
    """
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no descriptor to ask: keep the old reading
        return True
