"""Reading and verifying packages: every failure is a PackageError naming the file, never a traceback."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from drhost_hookspecs import PackageInfo

MANIFEST_NAME = "manifest.json"
PAYLOAD_PREFIX = "payload/"

# Everything a corrupt or truncated archive can raise while being read.
_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, gzip.BadGzipFile)


class PackageError(Exception):
    """A package file is unusable; the message names the file, what was expected and what was found."""


@dataclass(frozen=True)
class Package:
    path: Path
    product: str
    version: str
    upgrades_from: tuple[str, ...]
    schema_version: int
    required_free_bytes: int
    size: int
    sha256: str
    manifest: dict[str, Any] = field(compare=False, hash=False, repr=False)

    def info(self) -> PackageInfo:
        """What a run tells plugins about the package; ``remote_path`` is filled per target by the host."""
        return PackageInfo(product=self.product, version=self.version, upgrades_from=tuple(self.upgrades_from),
                           local_path=str(self.path.resolve()), remote_path="", sha256=self.sha256, size=self.size,
                           manifest=dict(self.manifest))


@cache
def manifest_schema() -> dict[str, Any]:
    text = resources.files("drhost.packaging").joinpath("manifest.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_manifest(manifest: Any, where: str) -> None:
    """Raise PackageError for the first (best-matching) schema violation, naming the key path."""
    validator = jsonschema.Draft202012Validator(manifest_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(manifest))
    if error is None:
        return
    key = "/".join(str(p) for p in error.absolute_path)
    at = f" at '{key}'" if key else ""
    raise PackageError(f"{where}: {MANIFEST_NAME}{at}: {error.message}")


@contextmanager
def _open(path: Path) -> Iterator[tarfile.TarFile]:
    if not path.is_file():
        raise PackageError(f"{path.name}: expected a package file at {path}, found nothing")
    try:
        with tarfile.open(path, "r:gz") as tar:
            yield tar
    except _ARCHIVE_ERRORS as exc:
        raise PackageError(
            f"{path.name}: expected a gzip-compressed tar archive, found unreadable data ({exc})"
        ) from None


def _load_manifest(path: Path, tar: tarfile.TarFile) -> dict[str, Any]:
    try:
        member = tar.getmember(MANIFEST_NAME)
    except KeyError:
        raise PackageError(f"{path.name}: expected {MANIFEST_NAME} at the archive root, found none") from None
    fh = tar.extractfile(member)
    if fh is None:
        raise PackageError(f"{path.name}: {MANIFEST_NAME}: expected a regular file, found another member type")
    try:
        manifest = json.loads(fh.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PackageError(f"{path.name}: {MANIFEST_NAME}: expected JSON, found invalid text ({exc})") from None
    validate_manifest(manifest, path.name)
    if not isinstance(manifest, dict):  # validated above; narrows the type
        raise PackageError(f"{path.name}: {MANIFEST_NAME}: expected an object")
    return manifest


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_package(path: Path) -> Package:
    """Open a package, validate its manifest against manifest.schema.json and describe it."""
    path = Path(path)
    with _open(path) as tar:
        manifest = _load_manifest(path, tar)
    prefix, suffix = f"{manifest['product']}-", ".tar.gz"
    # A renamed package would make an operator upgrade to a version other than the one they picked.
    if path.name.startswith(prefix) and path.name.endswith(suffix):
        named = path.name[len(prefix):-len(suffix)]
        if named != manifest["version"]:
            raise PackageError(f"{path.name}: {MANIFEST_NAME}: 'version' expected {named!r} (from the file name), "
                               f"found {manifest['version']!r}")
    return Package(
        path=path,
        product=manifest["product"],
        version=manifest["version"],
        upgrades_from=tuple(manifest["upgrades_from"]),
        schema_version=manifest["schema_version"],
        required_free_bytes=manifest["required_free_bytes"],
        size=path.stat().st_size,
        sha256=sha256_of(path),
        manifest=manifest,
    )


def verify_payload(path: Path) -> list[str]:
    """Compare every archive member with the manifest; return the problems (empty: the payload is intact)."""
    path = Path(path)
    problems: list[str] = []
    try:
        with _open(path) as tar:
            manifest = _load_manifest(path, tar)
            listed = {f["path"]: f for f in manifest["files"]}
            seen: set[str] = set()
            for member in tar:
                name = member.name
                if name == MANIFEST_NAME or (member.isdir() and name.rstrip("/") + "/" == PAYLOAD_PREFIX):
                    continue
                if member.isdir() and name.startswith(PAYLOAD_PREFIX):
                    continue
                if not member.isfile():
                    problems.append(f"{path.name}: {name}: expected a regular file, found another member type")
                    continue
                if name not in listed:
                    problems.append(f"{path.name}: {name}: extra file, not listed in the manifest")
                    continue
                seen.add(name)
                entry = listed[name]
                fh = tar.extractfile(member)
                data = fh.read() if fh is not None else b""
                if len(data) != entry["size"]:
                    problems.append(f"{path.name}: {name}: size expected {entry['size']}, found {len(data)}")
                digest = hashlib.sha256(data).hexdigest()
                if digest != entry["sha256"]:
                    problems.append(f"{path.name}: {name}: sha256 expected {entry['sha256']}, found {digest}")
                mode = member.mode & 0o7777
                if mode != entry["mode"]:
                    problems.append(f"{path.name}: {name}: mode expected {entry['mode']:o}, found {mode:o}")
            problems += [f"{path.name}: {name}: listed in the manifest, missing from the archive"
                         for name in sorted(set(listed) - seen)]
    except PackageError as exc:
        problems.append(str(exc))
    except _ARCHIVE_ERRORS as exc:
        problems.append(f"{path.name}: expected a readable archive, found corrupt data ({exc})")
    return problems
