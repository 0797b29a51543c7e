"""The plugin lock: the set of plugins an operator approved, pinned to the bytes that were installed.

The idea of pip's ``--require-hashes`` and Go's ``go.sum``, applied to plugins: ``drhost plugins
lock`` records, per plugin name, the distribution that offers it, its version, its class, its entry
point and the digest of every file it installed (``_digest.py``). A run (``upgrade``, ``plan``,
``resume``, ``rollback``) with a lock refuses a plugin that is missing, extra or different, naming
every difference — so a second distribution that declares ``dr-core``, a patched file in a
vendor plugin, or a new plugin nobody approved cannot slip into a run.

File: JSON ``{"format": 1, "plugins": {NAME: {"distribution", "version", "class", "entry_point",
"digest"}}}``, written atomically with mode 0600.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from drhost_hookspecs import PluginClass

from ..errors import DrhostError, ExitCode
from ._cache import write_private
from ._digest import Installed

LOCK_FORMAT = 1
LOCK_NAME = "plugins.lock"
_FIELDS = ("distribution", "version", "class", "entry_point", "digest")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CLASSES = tuple(c.value for c in PluginClass)
RELOCK_HINT = "re-run 'drhost plugins lock' if this change is intended"


class PluginLockError(DrhostError):
    """A lock file that cannot be read or is not a plugin lock: bad input, named with what was expected."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class LockEntry:
    name: str
    distribution: str
    version: str
    plugin_class: str
    entry_point: str
    digest: str

    def to_json(self) -> dict[str, str]:
        return {"distribution": self.distribution, "version": self.version, "class": self.plugin_class,
                "entry_point": self.entry_point, "digest": self.digest}

    @classmethod
    def of(cls, installed: Installed, plugin_class: PluginClass) -> LockEntry:
        return cls(name=installed.name, distribution=installed.distribution, version=installed.version,
                   plugin_class=plugin_class.value, entry_point=installed.value, digest=installed.digest)


@dataclass(frozen=True)
class PluginLock:
    path: Path
    entries: Mapping[str, LockEntry]

    def get(self, name: str) -> LockEntry | None:
        return self.entries.get(name)


# -- where ------------------------------------------------------------------------------------
def configured_path(config: Mapping[str, Any]) -> Path | None:
    """``[discovery] lock`` when set (``""``: not set)."""
    text = str((config.get("discovery") or {}).get("lock") or "").strip()
    return Path(text).expanduser() if text else None


def default_path() -> Path:
    from ..state import state_root

    return state_root() / LOCK_NAME


def write_path(config: Mapping[str, Any], out: str | None) -> Path:
    """Where ``drhost plugins lock`` writes: ``--out``, else ``[discovery] lock``, else STATE_ROOT/plugins.lock."""
    if out:
        return Path(out).expanduser()
    return configured_path(config) or default_path()


def find_lock(config: Mapping[str, Any]) -> PluginLock | None:
    """The lock in force: ``[discovery] lock`` (which must exist), else STATE_ROOT/plugins.lock if there is one."""
    configured = configured_path(config)
    if configured is not None:
        if not configured.exists():
            raise PluginLockError.worded("plugin lock {path} ([discovery] lock): no such file; write it with 'drhost "
                                         "plugins lock', or set [discovery] lock = \"\" to run without a lock",
                                         path=configured)
        return read_lock(configured)
    path = default_path()
    return read_lock(path) if path.exists() else None


# -- reading and writing ---------------------------------------------------------------------
_EXPECTED = ('a JSON object {"format": 1, "plugins": {NAME: {"distribution", "version", "class", "entry_point", '
             '"digest"}}} as written by \'drhost plugins lock\'')


def _bad(path: Path, found: str) -> PluginLockError:
    return PluginLockError(f"plugin lock {path}: expected {_EXPECTED}; found {found}")


def read_lock(path: Path) -> PluginLock:
    """Parse and check a lock file; every problem is a :class:`PluginLockError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PluginLockError.worded("plugin lock {path}: cannot be read: {why}", path=path,
                                     why=getattr(exc, "strerror", None) or exc) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _bad(path, f"invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _bad(path, f"a JSON {type(data).__name__}")
    if data.get("format") != LOCK_FORMAT:
        raise _bad(path, f"format {data.get('format')!r} (this drhost reads format {LOCK_FORMAT})")
    plugins = data.get("plugins")
    if not isinstance(plugins, dict):
        raise _bad(path, f"\"plugins\": {type(plugins).__name__}")
    entries: dict[str, LockEntry] = {}
    for name, entry in plugins.items():
        if not isinstance(entry, dict):
            raise _bad(path, f"plugin {name!r}: {type(entry).__name__}")
        missing = [key for key in _FIELDS if not isinstance(entry.get(key), str) or not entry.get(key)]
        if missing:
            raise _bad(path, f"plugin {name!r} without {', '.join(missing)}")
        if entry["class"] not in _CLASSES:
            raise _bad(path, f"plugin {name!r}: class {entry['class']!r} (one of {', '.join(_CLASSES)})")
        if not _DIGEST.match(entry["digest"]):
            raise _bad(path, f"plugin {name!r}: digest {entry['digest']!r} (sha256:<64 hex digits>)")
        entries[name] = LockEntry(name=name, distribution=entry["distribution"], version=entry["version"],
                                  plugin_class=entry["class"], entry_point=entry["entry_point"],
                                  digest=entry["digest"])
    return PluginLock(path=path, entries=entries)


def write_lock(path: Path, entries: Iterable[LockEntry]) -> None:
    body = {"format": LOCK_FORMAT,
            "plugins": {e.name: e.to_json() for e in sorted(entries, key=lambda e: e.name)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())


# -- comparing --------------------------------------------------------------------------------
def short(digest: str) -> str:
    return f"{digest[:19]}…" if len(digest) > 19 else digest


class Identity(Protocol):
    """What the lock compares: an installed plugin (``Installed``) or its discovered record."""

    @property
    def name(self) -> str: ...
    @property
    def distribution(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def value(self) -> str: ...
    @property
    def digest(self) -> str: ...


def differences(entry: LockEntry, installed: Identity, declared_class: str | None = None) -> list[str]:
    """What differs between the locked and the installed plugin, one phrase each."""
    found = []
    if entry.distribution != installed.distribution:
        found.append(f"distribution changed (locked {entry.distribution}, installed {installed.distribution})")
    if entry.version != installed.version:
        found.append(f"version changed (locked {entry.version}, installed {installed.version})")
    if entry.entry_point != installed.value:
        found.append(f"entry point changed (locked {entry.entry_point}, installed {installed.value})")
    if entry.digest != installed.digest:
        found.append(f"digest changed (locked {short(entry.digest)}, installed {short(installed.digest)})")
    if declared_class is not None and declared_class != entry.plugin_class:
        found.append(f"class changed (locked {entry.plugin_class}, declared {declared_class})")
    return found


def matches(entry: LockEntry | None, installed: Identity) -> bool:
    """Whether the lock approves exactly these bytes (the class is checked once the plugin declared it)."""
    return entry is not None and not differences(entry, installed)


def lock_status(lock: PluginLock | None, installed: Identity, declared_class: str | None) -> str:
    """``plugins list``'s lock column: ok, changed: …, not in lock, no lock."""
    if lock is None:
        return "no lock"
    entry = lock.get(installed.name)
    if entry is None:
        return "not in lock"
    found = differences(entry, installed, declared_class)
    return f"changed: {'; '.join(found)}" if found else "ok"


def duplicate_error(name: str, offers: Iterable[Installed]) -> str:
    listed = " and ".join(f"{i.label} ({i.value})" for i in offers)
    return (f"plugin name {name!r} is offered by more than one distribution: {listed}; neither is loaded "
            f"until all but one are uninstalled")


def refusal(lock: PluginLock, problems: list[str], extras: list[str]) -> str:
    """The one message of a run refused by the lock: every difference, then what to do."""
    hint = RELOCK_HINT
    if extras:
        hint += ", or disable " + ("it" if len(extras) == 1 else "them") + " with " + " ".join(
            f"-p no:{name}" for name in extras)
    return f"plugin lock {lock.path}: {'; '.join(problems)} — {hint}"
