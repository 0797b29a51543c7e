"""The message catalogue, through the standard ``gettext`` API shape.

The catalogs are JSON files (``locale/<lang>.json``, msgid -> msgstr) rather than
compiled ``.mo`` files: the package is built with plain setuptools and no
``msgfmt`` step, and a JSON file is diffable and reviewable as-is.  A
:class:`JsonTranslations` is a :class:`gettext.NullTranslations` subclass, so
callers use ``t.gettext(msgid)`` exactly as with a real catalog, and a msgid
missing from the catalog falls back to the English msgid.
"""

from __future__ import annotations

import gettext
import json
import os
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources

__all__ = [
    "LANGUAGES", "N_", "JsonTranslations", "Translate", "catalog", "resolve_language", "translations", "translator",
]

#: A gettext-style function: the message id in, its text in the operator's language out.
Translate = Callable[[str], str]


def N_(message: str) -> str:
    """Mark a message id defined away from its ``t()`` call (a table of labels): returned unchanged, found by the
    catalogue test."""
    return message

#: Languages with a shipped catalog; anything else renders in English (the msgids).
LANGUAGES = ("zh_CN",)

_ENV_VARS = ("LC_ALL", "LC_MESSAGES", "LANG")


class JsonTranslations(gettext.NullTranslations):
    """A ``gettext`` translations object backed by a msgid -> msgstr mapping."""

    def __init__(self, messages: Mapping[str, str]) -> None:
        super().__init__()
        self._messages = dict(messages)

    def gettext(self, message: str) -> str:
        translated = self._messages.get(message)
        if translated is not None:
            return translated
        return super().gettext(message)


@cache
def catalog(lang: str) -> Mapping[str, str]:
    """The shipped msgid -> msgstr mapping for ``lang`` (one of :data:`LANGUAGES`)."""
    if lang not in LANGUAGES:
        raise ValueError(f"no catalog for language {lang!r}")
    text = resources.files("drhost.i18n").joinpath("locale").joinpath(f"{lang}.json").read_text(encoding="utf-8")
    data = json.loads(text)
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"catalog {lang}.json must be an object of strings")
    return data


def resolve_language(lang: str | None = None) -> str | None:
    """The catalog language for ``lang``, else for ``LC_ALL``/``LC_MESSAGES``/``LANG``; None means English.

    Locale names are matched on language and territory only: ``zh_CN.UTF-8``,
    ``zh_CN@x`` and ``zh-CN`` all select ``zh_CN``.  As in POSIX, the first
    non-empty variable wins.
    """
    if lang is None:
        lang = next((os.environ[v] for v in _ENV_VARS if os.environ.get(v)), "")
    base = lang.split(".", 1)[0].split("@", 1)[0].replace("-", "_")
    for known in LANGUAGES:
        if base.lower() == known.lower():
            return known
    return None


def translations(lang: str | None = None) -> gettext.NullTranslations:
    """A ``gettext`` translations object for ``lang`` (or the environment's locale)."""
    resolved = resolve_language(lang)
    if resolved is None:
        return gettext.NullTranslations()
    return JsonTranslations(catalog(resolved))


def english(message: str) -> str:
    """The translator of English: a message id is its English text (the default of every ``t`` parameter)."""
    return message


def translator(lang: str | None = None) -> Callable[[str], str]:
    """The ``gettext`` function for ``lang`` (or the environment's locale); English is the identity."""
    return translations(lang).gettext
