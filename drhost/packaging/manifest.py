"""Reading a package's manifest: every failure is a PackageError naming the file, never a traceback."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
import unicodedata
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

from ..errors import WordedError

MANIFEST_NAME = "manifest.json"
PAYLOAD_PREFIX = "payload/"
MIB = 1 << 20
#: Default of ``[package] max_unpacked_mb``: what a package may declare it unpacks to.
DEFAULT_MAX_UNPACKED_BYTES = 2048 * MIB
# A manifest is a list of file names and hashes; one this large is an attack, not a release.
MANIFEST_MAX_BYTES = 8 * MIB
# Room is left for the target's root and staging/<V>.partial/ in front: PATH_MAX is 4096 on Linux.
MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255
#: Installed modes are the manifest's within rwxr-xr-x: never setuid/setgid/sticky, never group/world-writable.
INSTALL_MODE_MASK = 0o755

# Everything a corrupt or truncated archive can raise while being read.
ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, gzip.BadGzipFile)


class PackageError(WordedError):
    """A package file is unusable; the message names the file, what was expected and what was found.

    ``file`` is the package's file name and ``entry`` the archive entry or manifest key at fault, when known.
    """

    def __init__(self, message: str, *, file: str | None = None, entry: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.entry = entry


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

    @property
    def unpacked_bytes(self) -> int:
        return sum(int(entry["size"]) for entry in self.manifest["files"])

    def info(self) -> PackageInfo:
        """What a run tells plugins about the package; ``remote_path`` is filled per target by the host."""
        return PackageInfo(product=self.product, version=self.version, upgrades_from=tuple(self.upgrades_from),
                           local_path=str(self.path.resolve()), remote_path="", sha256=self.sha256, size=self.size,
                           manifest=dict(self.manifest))


def shown(text: str, limit: int = 120) -> str:
    """A name from an archive, safe to print: control and format characters escaped, cut when long."""
    def escaped(char: str) -> str:
        if unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            return char
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    cut = f"... ({len(text)} characters)" if len(text) > limit else ""
    return "'" + "".join(escaped(c) for c in text[:limit]) + cut + "'"


def path_problem(name: str) -> str | None:
    """Why ``name`` cannot be a payload path that unpacks and verifies the same on every target, or None."""
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in name):
        return "a name without control, format or undecodable characters"
    # sha256sum escapes a name with a backslash, so the target's check could never match it.
    if "\\" in name:
        return "a name without backslashes"
    encoded = name.encode("utf-8")
    if len(encoded) > MAX_PATH_BYTES:
        return f"a path of at most {MAX_PATH_BYTES} bytes, found {len(encoded)}"
    if name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        return "a plain relative path (no leading '/', no empty, '.' or '..' parts)"
    if any(len(part.encode("utf-8")) > MAX_COMPONENT_BYTES for part in name.split("/")):
        return f"path components of at most {MAX_COMPONENT_BYTES} bytes"
    return None


@cache
def manifest_schema() -> dict[str, Any]:
    text = resources.files("drhost.packaging").joinpath("manifest.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_files(files: list[dict[str, Any]], where: str) -> None:
    """What the schema cannot say: exact integers, safe names, no duplicates, no file that is another's parent."""
    listed: set[str] = set()
    for index, entry in enumerate(files):
        name = entry["path"]
        for key in ("size", "mode"):
            if not _is_int(entry[key]):
                raise PackageError(f"{where}: {MANIFEST_NAME} at 'files/{index}/{key}': expected an integer, "
                                   f"found {entry[key]!r}", file=where, entry=f"files/{index}/{key}")
        problem = path_problem(name)
        if problem is None and name in listed:
            problem = "each path listed once"
        if problem is not None:
            raise PackageError(f"{where}: {MANIFEST_NAME} at 'files/{index}/path': expected {problem}, "
                               f"found {shown(name)}", file=where, entry=shown(name))
        listed.add(name)
    for name in sorted(listed):
        parts = name.split("/")
        for depth in range(2, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in listed:
                raise PackageError(f"{where}: {MANIFEST_NAME}: {shown(parent)} is listed as a file and as the "
                                   f"directory of {shown(name)}; expected one or the other", file=where,
                                   entry=shown(parent))


def validate_manifest(manifest: Any, where: str) -> None:
    """Raise PackageError for the first (best-matching) schema violation, naming the key path."""
    validator = jsonschema.Draft202012Validator(manifest_schema())
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(manifest))
    except RecursionError:
        raise PackageError(f"{where}: {MANIFEST_NAME}: expected a manifest object, found too deeply nested data",
                           file=where) from None
    if error is not None:
        key = "/".join(str(p) for p in error.absolute_path)
        at = f" at '{key}'" if key else ""
        message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
        raise PackageError(f"{where}: {MANIFEST_NAME}{at}: {message}", file=where, entry=key or None)
    for key in ("schema_version", "required_free_bytes"):
        if not _is_int(manifest[key]):
            raise PackageError(f"{where}: {MANIFEST_NAME} at '{key}': expected an integer, found {manifest[key]!r}",
                               file=where, entry=key)
    _check_files(manifest["files"], where)


@contextmanager
def open_archive(path: Path) -> Iterator[tarfile.TarFile]:
    """The package as a tar stream; a directory, a FIFO or unreadable data is a PackageError."""
    if not path.is_file():
        found = "a directory" if path.is_dir() else "nothing" if not path.exists() else "no regular file"
        raise PackageError.worded("{file}: expected a package file at {path}, found {found}", file=path.name,
                                  path=path, found=found, init={"file": path.name})
    try:
        # Stream mode: one pass, no seeking, and no member index kept beyond what is read.
        with tarfile.open(path, "r|gz") as tar:
            yield tar
    except ARCHIVE_ERRORS as exc:
        raise PackageError.worded(
            "{file}: expected a gzip-compressed tar archive, found unreadable or truncated data ({why})",
            file=path.name, why=exc, init={"file": path.name}) from None


def _kind(member: tarfile.TarInfo) -> str:
    kinds = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
             tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO", tarfile.DIRTYPE: "a directory"}
    return kinds.get(member.type, "a regular file" if member.isfile() else f"an entry of tar type {member.type!r}")


def load_manifest(path: Path, tar: tarfile.TarFile, max_unpacked_bytes: int) -> dict[str, Any]:
    """The manifest, which must be the archive's first entry, validated; nothing after it has been read yet."""
    member = tar.next()
    if member is None or member.name != MANIFEST_NAME:
        found = "an empty archive" if member is None else shown(member.name)
        raise PackageError.worded("{file}: expected {manifest} as the first archive entry, found {found}",
                                  file=path.name, manifest=MANIFEST_NAME, found=found,
                                  init={"file": path.name, "entry": MANIFEST_NAME})
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        link = f" to {shown(member.linkname)}" if member.issym() or member.islnk() else ""
        raise PackageError(f"{path.name}: {MANIFEST_NAME}: expected a regular file, found {_kind(member)}{link}",
                           file=path.name, entry=MANIFEST_NAME)
    if member.size > MANIFEST_MAX_BYTES:
        raise PackageError(f"{path.name}: {MANIFEST_NAME}: expected at most {MANIFEST_MAX_BYTES} bytes, found "
                           f"{member.size}", file=path.name, entry=MANIFEST_NAME)
    fh = tar.extractfile(member)
    data = fh.read() if fh is not None else b""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number")

    try:
        manifest = json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        why = "too deeply nested data" if isinstance(exc, RecursionError) else f"invalid text ({exc})"
        raise PackageError.worded("{file}: {manifest}: expected JSON, found {why}", file=path.name,
                                  manifest=MANIFEST_NAME, why=why,
                                  init={"file": path.name, "entry": MANIFEST_NAME}) from None
    validate_manifest(manifest, path.name)
    declared = sum(int(entry["size"]) for entry in manifest["files"])
    if declared > max_unpacked_bytes:
        raise PackageError(f"{path.name}: {MANIFEST_NAME}: 'files' declare {declared} bytes unpacked, expected at "
                           f"most {max_unpacked_bytes} ([package] max_unpacked_mb = {max_unpacked_bytes // MIB})",
                           file=path.name, entry="files")
    result: dict[str, Any] = manifest
    return result


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_product(package: Package, expected: str, setting: str) -> None:
    """Refuse a package of another product than the one the targets run, whatever its file name says."""
    if package.product != expected:
        raise PackageError.worded("{file}: {manifest}: 'product' expected {expected} ({setting}), found {found}: "
                                  "this is not a package of the product the targets run", file=package.path.name,
                                  manifest=MANIFEST_NAME, expected=repr(expected), setting=setting,
                                  found=repr(package.product), init={"file": package.path.name, "entry": "product"})


def read_package(path: Path, max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES) -> Package:
    """Open a package, validate its manifest against manifest.schema.json and describe it."""
    path = Path(path)
    with open_archive(path) as tar:
        manifest = load_manifest(path, tar, max_unpacked_bytes)
    prefix, suffix = f"{manifest['product']}-", ".tar.gz"
    # A renamed package would make an operator upgrade to a version other than the one they picked.
    if path.name.startswith(prefix) and path.name.endswith(suffix):
        named = path.name[len(prefix):-len(suffix)]
        if named != manifest["version"]:
            raise PackageError.worded("{file}: {manifest}: 'version' expected {named} (from the file name), found "
                                      "{found}", file=path.name, manifest=MANIFEST_NAME, named=repr(named),
                                      found=repr(manifest["version"]), init={"file": path.name, "entry": "version"})
    try:
        size, digest = path.stat().st_size, sha256_of(path)
    except OSError as exc:
        raise PackageError.worded("{file}: expected a readable package file, found {why}", file=path.name,
                                  why=exc.strerror, init={"file": path.name}) from None
    return Package(
        path=path,
        product=manifest["product"],
        version=manifest["version"],
        upgrades_from=tuple(manifest["upgrades_from"]),
        schema_version=manifest["schema_version"],
        required_free_bytes=manifest["required_free_bytes"],
        size=size,
        sha256=digest,
        manifest=manifest,
    )
