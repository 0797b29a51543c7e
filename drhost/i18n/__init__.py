"""The operator's language: one message catalogue for every operator-facing line (en and zh_CN).

Message ids are the English texts, with ``{name}`` fields filled after translation; ``t = translator()``
gives the function for the environment's locale (LC_ALL, LC_MESSAGES, LANG). English is the identity, so a
missing translation reads as English, never as an id. The journal (events.jsonl) stays English.
"""

from ._catalog import (
    LANGUAGES,
    N_,
    JsonTranslations,
    Translate,
    catalog,
    english,
    resolve_language,
    translations,
    translator,
)

__all__ = [
    "LANGUAGES",
    "N_",
    "JsonTranslations",
    "Translate",
    "catalog",
    "english",
    "resolve_language",
    "translations",
    "translator",
]
