"""Secrets named in the inventory (an environment variable or a file), read at the moment they are needed."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["read_secret"]


def read_secret(env: str | None, file: str | None) -> tuple[str | None, str]:
    """(secret, where it came from or why it is missing): ``$VAR``, ``$VAR (not set)``, ``FILE`` or ``FILE
    (reason)``; ``""`` when neither is named. The variable wins over the file; a file's trailing newline is
    not part of the secret. The description is safe to show; the secret is not."""
    if env:
        value = os.environ.get(env)
        return (value, f"${env}") if value is not None else (None, f"${env} (not set)")
    if file:
        try:
            return Path(file).read_text("utf-8").rstrip("\r\n"), file
        except OSError as exc:
            return None, f"{file} ({exc.strerror})"
    return None, ""
