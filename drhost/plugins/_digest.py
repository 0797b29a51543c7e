"""What a plugin is on disk: one digest over the files its distribution installed.

Used twice: as the plugin lock's ``digest`` (``drhost plugins lock``) and in the key of the
description cache. It hashes every file the distribution's RECORD lists, as it is NOW (the
RECORD's own hashes say what pip wrote, not what is there), plus the files of the entry point's
top-level package as Python finds it — which covers editable installs (their RECORD lists only a
``.pth`` and the dist-info) and distributions without a RECORD, and makes a module dropped into the
package after installation change the digest too.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ._pth import pth_warnings

#: Never part of a digest: caches Python writes next to the sources on import (RECORD-listed .pyc files,
#: written by the installer, are hashed through the RECORD).
_SKIP_DIRS = frozenset({"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
#: Read when a distribution has no RECORD (a hand-made dist-info): what says which plugin it is.
_METADATA_FILES = ("METADATA", "entry_points.txt", "top_level.txt")


@dataclass(frozen=True)
class InstalledFiles:
    """The files that make up one plugin distribution, by a stable name (relative to its site or package)."""

    files: tuple[tuple[str, Path], ...]
    #: Metadata read through importlib (for a distribution without RECORD): name -> text.
    metadata: tuple[tuple[str, str], ...] = ()

    def locations(self) -> tuple[str, ...]:
        """Where the files are (absolute): part of the description cache's key, never of the lock's digest."""
        return tuple(sorted({str(path.parent) for _, path in self.files}))


def top_module(entry_point_value: str) -> str:
    """``pkg.sub:attr`` -> ``pkg``."""
    return entry_point_value.split(":", 1)[0].strip().split(".", 1)[0]


def module_files(module: str) -> Iterator[tuple[str, Path]]:
    """(name relative to the package's parent, path) of every source file of top-level ``module``.

    ``find_spec`` of a top-level name locates it without importing it: no plugin code runs.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return
    if spec is None:
        return
    if spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            root = Path(location)
            if root.is_dir():
                yield from _walk(root, module)
        return
    if spec.origin and spec.has_location and os.path.isfile(spec.origin):
        yield os.path.basename(spec.origin), Path(spec.origin)


def _walk(root: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for filename in sorted(filenames):
            if filename.endswith((".pyc", ".pyo")):
                continue
            path = Path(directory) / filename
            yield f"{prefix}/{path.relative_to(root).as_posix()}", path


def installed_files(dist: importlib.metadata.Distribution | None, entry_point_value: str) -> InstalledFiles:
    """The files of ``dist`` per its RECORD, plus the entry point's top-level package (see the module doc)."""
    files: dict[Path, str] = {}
    metadata: list[tuple[str, str]] = []
    listed = dist.files if dist is not None else None
    if dist is not None and listed is not None:
        for item in listed:
            path = Path(str(dist.locate_file(item)))
            files.setdefault(_absolute(path), item.as_posix())
    elif dist is not None:
        for name in _METADATA_FILES:
            text = dist.read_text(name)
            if text is not None:
                metadata.append((name, text))
    for name, path in module_files(top_module(entry_point_value)):
        files.setdefault(_absolute(path), f"module:{name}")
    return InstalledFiles(files=tuple(sorted(((name, path) for path, name in files.items()), key=lambda f: f[0])),
                          metadata=tuple(metadata))


def _absolute(path: Path) -> Path:
    # The same file reached as "site/../x" and "x" once; symlinks are hashed as what they point to.
    return Path(os.path.abspath(path))


def _file_hash(path: Path) -> str:
    try:
        if path.is_dir():
            return "<directory>"
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    except FileNotFoundError:
        return "<missing>"
    except OSError as exc:
        return f"<unreadable: {exc.strerror}>"


def digest_of(installed: InstalledFiles) -> str:
    """``sha256:<hex>`` over (name, current content) of every file: changes with any byte, any file added or gone."""
    digest = hashlib.sha256(b"drhost-plugin-files/1\n")
    for name, path in installed.files:
        digest.update(f"{name}\0{_file_hash(path)}\n".encode("utf-8", "surrogateescape"))
    for name, text in installed.metadata:
        digest.update(f"metadata:{name}\0{hashlib.sha256(text.encode()).hexdigest()}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def distribution_digest(dist: importlib.metadata.Distribution | None, entry_point_value: str) -> str:
    """The lock's digest of a plugin: :func:`digest_of` its :func:`installed_files`."""
    return digest_of(installed_files(dist, entry_point_value))


def tree_digest(roots: Iterable[tuple[str, Path]]) -> str:
    """``sha256:<hex>`` over the source files under each (name, directory)."""
    digest = hashlib.sha256(b"drhost-tree/1\n")
    for prefix, root in roots:
        for name, path in _walk(root, prefix):
            digest.update(f"{name}\0{_file_hash(path)}\n".encode("utf-8", "surrogateescape"))
    return f"sha256:{digest.hexdigest()}"


@functools.lru_cache(maxsize=1)
def describer_digest() -> str:
    """The code a description depends on besides the plugin: the hook API, the supervisor, discovery, Python."""
    import drhost_hookspecs

    from .. import supervisor

    roots = [("drhost_hookspecs", Path(drhost_hookspecs.__file__).parent),
             ("drhost/supervisor", Path(supervisor.__file__).parent),
             ("drhost/plugins", Path(__file__).parent)]
    return f"{tree_digest(roots)} python {sys.version}"


@dataclass(frozen=True)
class Installed:
    """One entry point of group ``drhost.plugins`` as installed: who offers it, and the digest of its files."""

    name: str
    value: str
    distribution: str
    version: str
    digest: str
    files: InstalledFiles
    #: Warnings about .pth files the distribution installs (``_pth.py``).
    pth_warnings: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``dist 1.0`` — how errors name the distribution."""
        return f"{self.distribution} {self.version}"


def identify(ep: importlib.metadata.EntryPoint) -> Installed:
    """Read (never import) what ``ep`` is: its distribution and the digest of the files it installed."""
    dist = getattr(ep, "dist", None)
    files = installed_files(dist, ep.value)
    name = (dist.metadata["Name"] or dist.name) if dist is not None else "?"
    return Installed(name=ep.name, value=ep.value, distribution=name, version=dist.version if dist else "?",
                     digest=digest_of(files), files=files, pth_warnings=pth_warnings(dist))
