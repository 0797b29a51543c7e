"""Plugin bundles: the only code a container sees besides the interpreter under ``/usr``.

A bundle is a directory built on the host and mounted read-only at ``/opt/drhost``:
``site/`` holds COPIES of the plugin's import package, of ``drhost_hookspecs`` and
``pluggy`` (and of any installed distribution the plugin requires), plus a minimal
``<dist>.dist-info`` whose ``entry_points.txt`` names exactly this one plugin, so the
worker's entry-point lookup finds it and nothing else. Bundles are cached under
``state_root()/containers/bundles/<plugin>-<version>-<hash>/``; the hash covers every
copied source file, so a changed plugin gets a new bundle. Everything is world-readable
(0755/0644): the container runs as uid 65534.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from drhost_hookspecs import ENTRY_POINT_GROUP

from ..errors import WordedError, message_phrase

#: Where the bundle is mounted inside the container, and what PYTHONPATH the worker gets.
MOUNT_POINT = "/opt/drhost"
SITE = f"{MOUNT_POINT}/site"
#: Packages every worker needs besides the plugin.
RUNTIME_PACKAGES = ("drhost_hookspecs", "pluggy")
#: Never copied into a bundle: the host itself.
_NEVER = frozenset({"drhost"})
_SKIP_DIRS = frozenset({"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
_BUNDLE_FORMAT = "1"


class BundleError(WordedError):
    """The plugin's code could not be found or copied."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    plugin: str
    version: str
    entry_point_value: str
    modules: tuple[str, ...]

    @property
    def site(self) -> Path:
        return self.path / "site"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "x"


def _find_entry_point(name: str) -> importlib.metadata.EntryPoint:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep
    raise BundleError.worded("no entry point {name} in group {group}", name=repr(name), group=repr(ENTRY_POINT_GROUP))


def _top_modules_by_dist() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            found.setdefault(_normalize(dist), []).append(module)
    return found


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _required_modules(dist: importlib.metadata.Distribution | None) -> list[str]:
    """Top-level modules of the installed distributions ``dist`` requires, transitively (best effort)."""
    if dist is None:
        return []
    by_dist = _top_modules_by_dist()
    seen: set[str] = set()
    modules: list[str] = []
    pending = [dist]
    while pending:
        current = pending.pop()
        for requirement in current.requires or []:
            if ";" in requirement and "extra" in requirement.split(";", 1)[1]:
                continue
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
            if match is None:
                continue
            name = _normalize(match.group(1))
            if name in seen:
                continue
            seen.add(name)
            try:
                pending.append(importlib.metadata.distribution(name))
            except importlib.metadata.PackageNotFoundError:
                continue
            modules.extend(m for m in by_dist.get(name, []) if not m.startswith("_") or m == "_distutils_hack")
    return modules


def _module_sources(module: str) -> list[Path]:
    """The files or package directories of top-level module ``module`` as installed on the host."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise BundleError.worded("cannot locate module {module}: {error}", module=repr(module),
                                 error=message_phrase(exc)) from exc
    if spec is None:
        raise BundleError.worded("module {module} is not importable on the host", module=repr(module))
    if spec.submodule_search_locations:
        return [Path(location) for location in spec.submodule_search_locations if Path(location).is_dir()]
    if spec.origin in (None, "built-in", "frozen") or not spec.has_location:
        return []  # part of the interpreter
    return [Path(spec.origin)]


def _files(source: Path) -> Iterator[tuple[Path, Path]]:
    """(absolute file, path relative to the site dir) of everything to copy from ``source``."""
    if source.is_file():
        yield source, Path(source.name)
        return
    for directory, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for filename in sorted(filenames):
            if filename.endswith((".pyc", ".pyo")):
                continue
            path = Path(directory) / filename
            yield path, Path(source.name) / path.relative_to(source)


def _plan(entry_point: str) -> tuple[Bundle, list[tuple[Path, Path]], str, str]:
    ep = _find_entry_point(entry_point)
    top = ep.value.split(":", 1)[0].strip().split(".", 1)[0]
    dist = getattr(ep, "dist", None)
    dist_name = dist.metadata["Name"] if dist is not None and dist.metadata["Name"] else top
    version = dist.version if dist is not None and dist.version else "0"
    modules: list[str] = []
    for module in (top, *RUNTIME_PACKAGES, *_required_modules(dist)):
        if module not in modules and module not in _NEVER:
            modules.append(module)
    files: list[tuple[Path, Path]] = []
    for module in modules:
        sources = _module_sources(module)
        if module == top and not sources:
            raise BundleError.worded("plugin module {module} of entry point {entry_point} has no files to copy",
                                     module=repr(top), entry_point=repr(entry_point))
        for source in sources:
            files.extend(_files(source))
    digest = hashlib.sha256(f"{_BUNDLE_FORMAT}\0{entry_point}\0{ep.value}\0{dist_name}\0{version}\0".encode())
    for absolute, relative in sorted(files, key=lambda item: str(item[1])):
        digest.update(str(relative).encode() + b"\0")
        digest.update(absolute.read_bytes())
        digest.update(b"\0")
    name = f"{_safe(entry_point)}-{_safe(version)}-{digest.hexdigest()[:16]}"
    bundle = Bundle(path=Path(name), plugin=entry_point, version=version, entry_point_value=ep.value,
                    modules=tuple(modules))
    return bundle, files, dist_name, version


def _make_world_readable(root: Path) -> None:
    os.chmod(root, 0o755)
    for directory, dirnames, filenames in os.walk(root):
        for dirname in dirnames:
            os.chmod(Path(directory) / dirname, 0o755)
        for filename in filenames:
            os.chmod(Path(directory) / filename, 0o644)


def build_bundle(entry_point: str, bundles_dir: Path, *, compile_with: str | None = None) -> Bundle:
    """The bundle of plugin ``entry_point`` under ``bundles_dir``: reused when its sources are unchanged.

    ``compile_with`` is the interpreter the container runs (it sees the host's ``/usr``): when it
    exists on the host, the bundle is byte-compiled with it so every worker start skips compiling.
    """
    planned, files, dist_name, version = _plan(entry_point)
    target = bundles_dir / planned.path
    bundle = Bundle(path=target, plugin=planned.plugin, version=planned.version,
                    entry_point_value=planned.entry_point_value, modules=planned.modules)
    if (target / "bundle.complete").exists():
        return bundle
    bundles_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=bundles_dir))
    try:
        site = tmp / "site"
        site.mkdir()
        for absolute, relative in files:
            (site / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(absolute, site / relative)
        info = site / f"{_safe(dist_name).replace('-', '_')}-{_safe(version)}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n",
                                       encoding="utf-8")
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_point} = {planned.entry_point_value}\n",
                                               encoding="utf-8")
        if compile_with and os.access(compile_with, os.X_OK):
            # Best effort: a module the container's interpreter cannot compile fails at import, visibly.
            subprocess.run([compile_with, "-m", "compileall", "-q", "-j", "0", str(site)],
                           capture_output=True, check=False, timeout=300, stdin=subprocess.DEVNULL)
        (tmp / "bundle.complete").write_text(
            f"plugin={entry_point}\nversion={version}\nmodules={','.join(planned.modules)}\n", encoding="utf-8")
        _make_world_readable(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "bundle.complete").exists():
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    return bundle
