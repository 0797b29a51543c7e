"""The operator's OpenSSH client config (``~/.ssh/config``): the settings it gives one host, and where each
came from (file and line), for the keys drhost uses.

The rules are OpenSSH's (ssh_config(5)): keywords are case-insensitive and take their value after spaces or
one ``=``; a value may be double-quoted; ``Host`` blocks apply when one of their patterns matches the name
given (``*`` and ``?`` wildcards, ``!`` negates) and no negated one does; ``Match all`` and ``Match host``/
``originalhost`` are evaluated, other ``Match`` criteria (``exec``, ``user``, ...) cannot be judged here and
their block is skipped, said in :attr:`SshConfigResult.skipped`; ``Include`` reads files (globs; relative
paths from ``~/.ssh``) in place; for each keyword the first value obtained wins, except ``IdentityFile`` and
``UserKnownHostsFile``, whose first value drhost uses. ``%h``, ``%p``, ``%r``, ``%n``, ``%%`` and a leading
``~`` are expanded where OpenSSH expands them for these keywords.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Phrase, WordedError, phrase

__all__ = ["SshConfigError", "SshConfigResult", "SshSetting", "lookup"]

#: The keywords drhost takes from an ssh_config (lower case), in the order ``drhost plan`` lists them.
KEYWORDS = ("hostname", "user", "port", "identityfile", "proxyjump", "userknownhostsfile",
            "stricthostkeychecking", "connecttimeout", "serveraliveinterval", "serveralivecountmax")
_MAX_INCLUDE_DEPTH = 16


class SshConfigError(WordedError, ValueError):
    """The file cannot be used: names the file, the line and what is wrong."""


@dataclass(frozen=True)
class SshSetting:
    """One value and where it came from."""

    value: str
    file: str
    line: int
    block: str  # "Host db*", "Match host x", or "" for the lines before any block

    def origin(self) -> str:
        return f"{self.file}:{self.line}" + (f" ({self.block})" if self.block else "")


@dataclass
class SshConfigResult:
    """What an ssh_config gives one host: the first value of each keyword drhost uses."""

    host: str
    settings: dict[str, SshSetting] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # blocks drhost could not evaluate, with their place


def _words(line: str, where: str) -> tuple[str, list[str]]:
    """(keyword in lower case, its arguments) of one line; the separator is spaces or one '='."""
    stripped = line.strip()
    keyword_end = len(stripped)
    for index, char in enumerate(stripped):
        if char in " \t=":
            keyword_end = index
            break
    keyword = stripped[:keyword_end].lower()
    rest = stripped[keyword_end:].lstrip(" \t")
    if rest.startswith("="):
        rest = rest[1:].lstrip(" \t")
    try:
        arguments = shlex.split(rest, comments=False, posix=True)
    except ValueError:
        raise SshConfigError.worded("{where}: unbalanced quotes in {keyword}", where=where,
                                    keyword=repr(keyword)) from None
    return keyword, arguments


def _matches(patterns: list[str], name: str) -> bool:
    """OpenSSH's pattern-list rule: one pattern matches and no negated pattern does."""
    matched = False
    for pattern in patterns:
        for part in pattern.split(","):
            negated = part.startswith("!")
            if fnmatch.fnmatchcase(name.lower(), (part[1:] if negated else part).lower()):
                if negated:
                    return False
                matched = True
    return matched


def _expand(value: str, keyword: str, host: str, original: str, port: str, user: str) -> str:
    if keyword in ("identityfile", "userknownhostsfile") and value.startswith("~"):
        value = os.path.expanduser(value)
    if keyword in ("hostname", "identityfile", "userknownhostsfile", "proxyjump") and "%" in value:
        out, index = [], 0
        tokens = {"h": host, "n": original, "p": port, "r": user, "%": "%"}
        while index < len(value):
            char = value[index]
            if char == "%" and index + 1 < len(value) and value[index + 1] in tokens:
                out.append(tokens[value[index + 1]])
                index += 2
            else:
                out.append(char)
                index += 1
        value = "".join(out)
    return value


class _Reader:
    def __init__(self, original: str) -> None:
        self.original = original
        self.result = SshConfigResult(original)
        self.raw: list[tuple[str, str, SshSetting]] = []  # (keyword, raw value, where) in the order obtained

    def read(self, path: Path, depth: int = 0) -> None:
        if depth > _MAX_INCLUDE_DEPTH:
            raise SshConfigError.worded("{path}: Include nested more than {depth} deep", path=str(path),
                                        depth=_MAX_INCLUDE_DEPTH)
        from ..errors import ConfigError
        from ._loader import read_config_text  # here: the loader imports this module

        try:
            text = read_config_text(path)  # regular files only, bounded, UTF-8 checked
        except ConfigError as exc:
            # What was expected is a constant (an N_ id) or a phrase: said in the operator's language either way.
            expected = exc.expected if isinstance(exc.expected, Phrase) else \
                phrase(exc.expected.replace("{", "{{").replace("}", "}}"))
            raise SshConfigError.worded("{path}: expected {expected}, found {found}", path=str(path),
                                        expected=expected, found=exc.found) from None
        active, block = True, ""
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"{path}:{number}"
            keyword, arguments = _words(line, where)
            if keyword == "host":
                if not arguments:
                    raise SshConfigError.worded("{where}: Host without a pattern", where=where)
                active, block = _matches(arguments, self.original), f"Host {' '.join(arguments)}"
            elif keyword == "match":
                active, block = self._match(arguments, where), f"Match {' '.join(arguments)}"
            elif not active:
                continue
            elif keyword == "include":
                for argument in arguments:
                    pattern = os.path.expanduser(argument)
                    if not os.path.isabs(pattern):
                        pattern = os.path.join(os.path.expanduser("~/.ssh"), pattern)
                    for included in sorted(glob.glob(pattern)):
                        self.read(Path(included), depth + 1)
            elif keyword in KEYWORDS:
                if not arguments:
                    raise SshConfigError.worded("{where}: {keyword} without a value", where=where, keyword=keyword)
                value = arguments[0] if keyword != "proxyjump" else ",".join(arguments)
                self.raw.append((keyword, value, SshSetting(value, str(path), number, block)))

    def _match(self, arguments: list[str], where: str) -> bool:
        criteria = [word.lower() for word in arguments[::2]]
        if criteria == ["all"]:
            return True
        if all(criterion in ("host", "originalhost") for criterion in criteria) and len(arguments) % 2 == 0:
            return all(_matches(arguments[index + 1].split(","), self.original)
                       for index in range(0, len(arguments), 2))
        self.result.skipped.append(f"{where}: Match {' '.join(arguments)} (not evaluated by drhost: its block "
                                   "is not used)")
        return False


def lookup(path: Path, host: str) -> SshConfigResult:
    """The settings ``path`` gives ``host`` (the name as the operator would type it after ``ssh``)."""
    reader = _Reader(host)
    reader.read(path)
    first: dict[str, tuple[str, SshSetting]] = {}
    for keyword, value, where in reader.raw:
        first.setdefault(keyword, (value, where))
    hostname = first["hostname"][0] if "hostname" in first else host
    hostname = _expand(hostname, "hostname", host, host, "", "")
    port = first["port"][0] if "port" in first else "22"
    user = first["user"][0] if "user" in first else ""
    for keyword, (value, where) in first.items():
        expanded = hostname if keyword == "hostname" else _expand(value, keyword, hostname, host, port, user)
        reader.result.settings[keyword] = SshSetting(expanded, where.file, where.line, where.block)
    return reader.result


#: ssh_config keyword -> the [target:NAME] key it supplies.
TARGET_KEYS = {"hostname": "host", "user": "user", "port": "port", "identityfile": "key_file",
               "proxyjump": "proxy_jump", "userknownhostsfile": "known_hosts",
               "stricthostkeychecking": "host_key_policy", "connecttimeout": "connect_timeout_s",
               "serveraliveinterval": "heartbeat_s"}
_POLICIES = {"yes": "strict", "ask": "strict", "accept-new": "accept-new", "no": "accept-new", "off": "accept-new"}
DEFAULT_PATH = "~/.ssh/config"


def target_values(result: SshConfigResult) -> dict[str, tuple[object, SshSetting]]:
    """The [target:NAME] keys and values an ssh_config lookup gives, each with where it came from; a value
    drhost cannot take raises :class:`SshConfigError` naming its place."""
    found: dict[str, tuple[object, SshSetting]] = {}
    for keyword, setting in result.settings.items():
        key = TARGET_KEYS.get(keyword)
        value: object = setting.value
        if keyword == "proxyjump" and setting.value.lower() == "none":
            continue
        if keyword in ("port", "connecttimeout", "serveraliveinterval", "serveralivecountmax"):
            if not setting.value.isdigit() or int(setting.value) <= 0:
                if keyword == "serveraliveinterval" and setting.value == "0":
                    continue  # OpenSSH's "no keepalive": drhost keeps its own heartbeat
                raise SshConfigError.worded("{origin}: {keyword} expected a positive whole number, found {value}",
                                            origin=setting.origin(), keyword=keyword, value=repr(setting.value))
            value = int(setting.value) if keyword == "port" else float(setting.value)
        if keyword == "stricthostkeychecking":
            policy = _POLICIES.get(setting.value.lower())
            if policy is None:
                raise SshConfigError.worded("{origin}: StrictHostKeyChecking expected yes, ask, accept-new, no or off, "
                                            "found {value}", origin=setting.origin(), value=repr(setting.value))
            value = policy
        if key is not None:
            found[key] = (value, setting)
    if "heartbeat_s" in found:
        interval = float(found["heartbeat_s"][0])  # type: ignore[arg-type]
        count = result.settings.get("serveralivecountmax")
        misses = float(count.value) if count is not None else 3.0
        found["dead_after_s"] = (interval * misses, count or found["heartbeat_s"][1])
    return found
