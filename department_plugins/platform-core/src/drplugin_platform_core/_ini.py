"""Line-level edits of an INI text.

configparser would re-write the whole file and drop the operators' comments and
layout; these helpers change only the line they need, so an edit made twice gives
the same text as an edit made once.
"""

from __future__ import annotations

import configparser
import re

_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$")
_KEY = re.compile(r"^\s*([^=:#;\s][^=:]*?)\s*[=:]")


def parse(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def get(text: str, section: str, key: str) -> str | None:
    parser = parse(text)
    if not parser.has_option(section, key):
        return None
    return parser.get(section, key)


def set_value(text: str, section: str, key: str, value: str) -> str:
    """Return ``text`` with ``key = value`` in ``section``, adding either when missing."""
    lines = text.splitlines()
    start = end = None
    for index, line in enumerate(lines):
        match = _SECTION.match(line)
        if match is None:
            continue
        if start is not None:
            end = index
            break
        if match.group(1).strip() == section:
            start = index
    if start is None:
        while lines and not lines[-1].strip():
            lines.pop()
        if lines:
            lines.append("")
        lines += [f"[{section}]", f"{key} = {value}"]
        return "\n".join(lines) + "\n"
    end = len(lines) if end is None else end
    for index in range(start + 1, end):
        match = _KEY.match(lines[index])
        if match and match.group(1).strip().lower() == key.lower():
            lines[index] = f"{key} = {value}"
            return "\n".join(lines) + "\n"
    # After the section's last non-blank line, so a blank separator stays where it was.
    insert_at = end
    while insert_at > start + 1 and not lines[insert_at - 1].strip():
        insert_at -= 1
    lines.insert(insert_at, f"{key} = {value}")
    return "\n".join(lines) + "\n"
