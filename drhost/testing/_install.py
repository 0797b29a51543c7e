"""Find the plugin under test: install a source tree or wheel into a private directory, or take an installed one.

A source tree is installed with ``pip install --no-deps --target`` into a directory of
its own, then put first on ``sys.path`` and ``PYTHONPATH``: drhost, its workers and
its container bundles then find exactly that build, ahead of any copy of the same
distribution already installed. Dependencies are not installed: production would not
install them either, so a missing one is a finding, not something to paper over.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from drhost_hookspecs import ENTRY_POINT_GROUP

from ..errors import DrhostError, ExitCode, phrase

_PIP_TIMEOUT_S = 600.0
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class SubjectError(DrhostError):
    """The argument names no plugin that can be tested: a usage error, not a failed check."""

    exit_code = ExitCode.USAGE


class InstallFailed(Exception):
    """pip could not build or install the source tree; carries pip's own words."""

    def __init__(self, source: Path, output: str) -> None:
        super().__init__(f"pip could not install {source}")
        self.source = source
        self.output = output


@dataclass(frozen=True)
class Requirement:
    """One ``Requires-Dist`` line of the plugin's distribution and whether it is installed."""

    line: str
    name: str
    installed: str | None


@dataclass(frozen=True)
class Subject:
    """The distribution under test and the plugin (entry point) in it."""

    distribution: str
    version: str
    plugin: str
    entry_point_value: str
    #: Where a source tree was installed; None for a distribution that was already installed.
    site_dir: Path | None
    requirements: tuple[Requirement, ...]

    @property
    def requires_hookspecs(self) -> bool:
        return any(_normalize(r.name) == "drhost-hookspecs" for r in self.requirements)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: importlib.metadata.Distribution) -> tuple[Requirement, ...]:
    found = []
    for line in dist.requires or []:
        marker = line.partition(";")[2]
        if "extra" in marker:
            continue  # an optional extra is not needed to run the plugin
        match = _REQUIREMENT_NAME.match(line)
        if match is None:
            continue
        name = match.group(1)
        try:
            installed: str | None = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        found.append(Requirement(line.strip(), name, installed))
    return tuple(found)


def _plugins_of(dist: importlib.metadata.Distribution) -> list[importlib.metadata.EntryPoint]:
    return [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]


def _choose(dist: importlib.metadata.Distribution, plugin: str | None, where: str) -> importlib.metadata.EntryPoint:
    plugins = _plugins_of(dist)
    names = ", ".join(ep.name for ep in plugins)
    if not plugins:
        raise SubjectError.worded("{where}: distribution {distribution} declares no entry point in group {group}; "
                                  "add {snippet} to its pyproject.toml", where=where,
                                  distribution=dist.metadata["Name"], group=repr(ENTRY_POINT_GROUP),
                                  snippet=f'[project.entry-points."{ENTRY_POINT_GROUP}"] NAME = "your_module"')
    if plugin is not None:
        for ep in plugins:
            if ep.name == plugin:
                return ep
        raise SubjectError.worded("{where}: no plugin {plugin} in distribution {distribution} (it has {names})",
                                  where=where, plugin=repr(plugin), distribution=dist.metadata["Name"], names=names)
    if len(plugins) > 1:
        raise SubjectError.worded("{where}: distribution {distribution} has several plugins ({names}); choose one "
                                  "with --plugin NAME", where=where, distribution=dist.metadata["Name"], names=names)
    return plugins[0]


def _subject(dist: importlib.metadata.Distribution, ep: importlib.metadata.EntryPoint,
             site_dir: Path | None) -> Subject:
    return Subject(distribution=str(dist.metadata["Name"]), version=str(dist.version), plugin=ep.name,
                   entry_point_value=ep.value, site_dir=site_dir, requirements=_requirements(dist))


def install_source(source: Path, site_dir: Path, *, plugin: str | None = None) -> Subject:
    """Install a source tree (or a wheel) into ``site_dir`` and make it the copy drhost finds first."""
    source = source.resolve()
    if source.is_dir() and not any((source / name).exists() for name in ("pyproject.toml", "setup.py")):
        raise SubjectError.worded("{source}: not a Python project (no pyproject.toml or setup.py); give the "
                                  "directory of a plugin distribution, a wheel, or the name of an installed one",
                                  source=source)
    site_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check",
            "--quiet", "--target", str(site_dir), str(source)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          cwd=site_dir)
    if proc.returncode != 0:
        raise InstallFailed(source, (proc.stdout + proc.stderr).strip())
    dists = list(importlib.metadata.distributions(path=[str(site_dir)]))
    if len(dists) != 1:
        raise InstallFailed(source, f"expected one distribution in {site_dir}, found {len(dists)}")
    activate(site_dir)
    return _subject(dists[0], _choose(dists[0], plugin, str(source)), site_dir)


def activate(site_dir: Path) -> None:
    """Put ``site_dir`` first for this process and every worker it starts (workers inherit PYTHONPATH)."""
    sys.path.insert(0, str(site_dir))
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(site_dir) + (os.pathsep + previous if previous else "")
    importlib.invalidate_caches()


def installed(name: str, *, plugin: str | None = None) -> Subject:
    """An installed distribution, found by its name or by the name of a plugin it provides."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        matches = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        owner = getattr(matches[0], "dist", None) if matches else None
        if owner is None:
            known = sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
            raise SubjectError.worded("{name}: no such directory, and no installed distribution or plugin of that "
                                      "name (installed plugins: {known})", name=repr(name),
                                      known=", ".join(known) or phrase("none")) from None
        dist = owner
        plugin = plugin or name
    return _subject(dist, _choose(dist, plugin, name), None)


def resolve(argument: str, site_dir: Path, *, plugin: str | None = None) -> Subject:
    """PATH (a source tree or a wheel) or DIST (an installed distribution or plugin name)."""
    path = Path(argument)
    if path.exists() or os.sep in argument or argument.startswith("."):
        if not path.exists():
            raise SubjectError.worded("{argument}: no such file or directory", argument=argument)
        return install_source(path, site_dir, plugin=plugin)
    return installed(argument, plugin=plugin)


def missing_requirements(subject: Subject, ignore: Sequence[str] = ()) -> list[Requirement]:
    skip = {_normalize(name) for name in ignore}
    return [r for r in subject.requirements if r.installed is None and _normalize(r.name) not in skip]


__all__ = ["InstallFailed", "Requirement", "Subject", "SubjectError", "activate", "installed",
           "missing_requirements", "resolve"]
