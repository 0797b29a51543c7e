"""Errors the operator sees. Each carries the data it names and the exit code it maps to."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

#: What an error's message quotes of a value at most: an over-long value must not bury the line that names it.
QUOTE_LIMIT = 200

#: Attributes an error may carry; :meth:`DrhostError.details` reports those it has (``--json`` errors).
_DETAIL_ATTRIBUTES = ("file", "section", "key", "value", "expected", "plugin", "target", "variable", "argument",
                      "path", "run")

#: An echoed value longer than this is cut: one error stays one readable line.
SHOWN_CHARS = 200


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` safe to print on a terminal: control characters (C0, DEL, C1, newlines), format characters
    (bidi overrides) and lone surrogates become ``\\xNN``/``\\uNNNN`` escapes, and a long text is cut.

    Used wherever a value read from a file or the command line is echoed, so that a config file can
    neither move the cursor, recolour the terminal nor split one error into several misleading lines."""
    out = []
    for char in text[:limit]:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    if len(text) > limit:
        out.append(f"... ({len(text)} characters)")
    return "".join(out)


def has_control(text: str) -> bool:
    """Whether ``text`` holds a character :func:`shown` would escape (a name or path must not)."""
    return any(unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp") for char in text)


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


_Error = TypeVar("_Error", bound="WordedError")


class Phrase(str):
    """English text that keeps its template and fields, so that it can be said in another language: what a
    setting or a variable expected (``ConfigError.expected``), a field of a worded error. It is a ``str``:
    everything that reads it as English still does."""

    template: str
    fields: Mapping[str, object]


def phrase(template: str, /, **fields: object) -> Phrase:
    """``template`` filled with ``fields``, as a :class:`Phrase` (a message id of drhost.i18n)."""
    text = Phrase(template.format(**fields))
    text.template, text.fields = template, fields
    return text


def said_in(text: object, t: Callable[[str], str]) -> str:
    """``text`` in the language of ``t``: a :class:`Phrase` translated and filled (its phrase fields too), any
    other text translated when the catalogue has it (a constant marked ``N_``), else as it is."""
    if isinstance(text, Phrase):
        return t(text.template).format(**{k: said_in(v, t) if isinstance(v, Phrase) else v
                                           for k, v in text.fields.items()})
    return t(text) if isinstance(text, str) else str(text)


def phrase_json(text: Phrase) -> dict[str, Any]:
    """``text``'s template and fields as JSON (a field that is a phrase nested the same way), for a record that
    keeps its English text and must be said again in another language when it is read back (the journal)."""
    return {"template": text.template,
            "fields": {k: phrase_json(v) if isinstance(v, Phrase) else v if isinstance(v, int | float) else str(v)
                       for k, v in text.fields.items()}}


def phrase_from_json(text: str, wording: object) -> str:
    """``text`` as the :class:`Phrase` that ``wording`` (:func:`phrase_json`) describes, when it does and still
    gives exactly ``text``; else ``text`` as it is: a record that was edited or cut is never said as something
    else than what it says."""
    def rebuilt(data: object) -> Phrase | None:
        if not isinstance(data, dict) or not isinstance(data.get("template"), str) \
                or not isinstance(data.get("fields"), dict):
            return None
        fields = {str(k): rebuilt(v) or v for k, v in data["fields"].items()}
        try:
            return phrase(data["template"], **fields)
        except (KeyError, IndexError, ValueError, AttributeError):
            return None
    found = rebuilt(wording)
    return found if found is not None and found == text else text


def joined(parts: Sequence[str], separator: str = "; ") -> str:
    """``parts`` joined by ``separator``, as a :class:`Phrase` whose parts are said in the operator's language
    when they are phrases themselves (problems collected from several worded errors)."""
    template = separator.replace("{", "{{").replace("}", "}}").join(f"{{part{i}}}" for i in range(len(parts)))
    return phrase(template, **{f"part{i}": part for i, part in enumerate(parts)})


def message_phrase(exc: BaseException) -> str:
    """``exc``'s message as a :class:`Phrase` when it was raised :meth:`WordedError.worded` (so that a message that
    quotes it, an event's or a wrapping error's, can be said in another language), else its English text."""
    if isinstance(exc, WordedError) and exc.template is not None:
        return phrase(exc.template, **exc.fields)
    return str(exc)


class WordedError(Exception):
    """An error that can be said in the operator's language.

    Raised with :meth:`worded`, it keeps its English template and the fields it fills, so the CLI can say it in
    the operator's language (:meth:`in_language`); ``str()`` is always the English.
    """

    #: The English message with ``{fields}`` (a message id of drhost.i18n), when raised with :meth:`worded`.
    template: str | None = None
    fields: Mapping[str, object] = {}

    @classmethod
    def worded(cls: type[_Error], template: str, /, *, init: Mapping[str, Any] | None = None,
               **fields: object) -> _Error:
        """The error whose message is ``template`` filled with ``fields`` (each as it should be quoted);
        ``init``: the other keyword arguments of the error's constructor."""
        error = cls(template.format(**fields), **(init or {}))
        error.template, error.fields = template, fields
        return error

    def in_language(self, t: Callable[[str], str]) -> str:
        """The message in the language of ``t``: the template translated, then filled; else as raised."""
        return said_in(message_phrase(self), t) if self.template is not None else str(self)


class DrhostError(WordedError):
    """A problem the operator can act on: printed as one message, never as a traceback."""

    exit_code = ExitCode.FAILED

    def details(self) -> dict[str, Any]:
        """The data this error carries (file, key, value, plugin, target, ...), for the ``--json`` error object."""
        return error_details(self)


@dataclass(frozen=True)
class Origin:
    """Where a setting came from, so an error can point at it."""

    file: str
    section: str
    key: str

    def __str__(self) -> str:
        section = (f"[{shown(self.section)}]" + (" " if self.key else "")) if self.section else ""
        where = f"{section}{shown(self.key)}"
        return f"{shown(self.file)}: {where}" if where else shown(self.file)


class ConfigError(DrhostError):
    """A setting is wrong: names the file, section and key, what was expected and what was found."""

    exit_code = ExitCode.USAGE

    def __init__(self, origin: Origin, expected: str, found: object) -> None:
        self.origin = origin
        self.expected = expected
        self.found = found
        # "<...>" describes what was found (no quotes); anything else is the value itself, quoted.
        self.found_text = shown(found) if isinstance(found, str) and found.startswith("<") else shown(repr(found))
        super().__init__(f"{origin}: expected {expected}, found {self.found_text}")

    def details(self) -> dict[str, Any]:
        found = {"file": self.origin.file, "section": self.origin.section, "key": self.origin.key}
        return {**{k: v for k, v in found.items() if v}, "expected": self.expected, "value": json_value(self.found)}


class RefusedError(DrhostError):
    """drhost will not start (or continue) a run, and says why."""

    exit_code = ExitCode.REFUSED


class StateError(DrhostError):
    """A run's state cannot be read or trusted."""

    exit_code = ExitCode.REFUSED


class UsageError(DrhostError):
    """The command line is wrong: names the argument, what was expected and what was found."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, *, argument: str | None = None, value: str | None = None) -> None:
        self.argument = argument
        self.value = value
        super().__init__(message)


class EnvironmentVariableError(DrhostError):
    """A ``DRHOST_*`` environment variable drhost reads has a value it cannot use."""

    exit_code = ExitCode.USAGE

    def __init__(self, variable: str, value: str, expected: str) -> None:
        self.variable = variable
        self.value = value
        self.expected = expected
        super().__init__(f"environment variable {variable}={quote(value)}: expected {expected}")


def quote(value: object) -> str:
    """``repr(value)`` as :func:`shown` prints it: cut, control characters escaped, one readable line."""
    return shown(repr(value), QUOTE_LIMIT)


def json_value(value: object) -> Any:
    """``value`` as JSON can carry it: text cut like :func:`quote`, numbers that JSON allows, else its text."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= QUOTE_LIMIT else f"{text[:QUOTE_LIMIT]}… ({len(text)} characters)"


def error_details(exc: BaseException) -> dict[str, Any]:
    """The data attributes ``exc`` carries (any exception: a package error is not a :class:`DrhostError`)."""
    if isinstance(exc, DrhostError) and type(exc).details is not DrhostError.details:
        return exc.details()
    found: dict[str, Any] = {}
    for name in _DETAIL_ATTRIBUTES:
        value = getattr(exc, name, None)
        if value is not None and value != "":
            found[name] = json_value(value)
    return found
