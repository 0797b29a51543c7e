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

from ..errors import WordedError, phrase
from ..i18n import N_

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

#: A manifest key that is not what it must be (an integer, a safe path, ...): the message's template.
_EXPECTED_AT = N_("{file}: {manifest} at '{key}': expected {expected}, found {found}")

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
        return phrase("a name without control, format or undecodable characters")
    # sha256sum escapes a name with a backslash, so the target's check could never match it.
    if "\\" in name:
        return phrase("a name without backslashes")
    encoded = name.encode("utf-8")
    if len(encoded) > MAX_PATH_BYTES:
        return phrase("a path of at most {limit} bytes, found {found}", limit=MAX_PATH_BYTES, found=len(encoded))
    if name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        return phrase("a plain relative path (no leading '/', no empty, '.' or '..' parts)")
    if any(len(part.encode("utf-8")) > MAX_COMPONENT_BYTES for part in name.split("/")):
        return phrase("path components of at most {limit} bytes", limit=MAX_COMPONENT_BYTES)
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
                raise PackageError.worded(_EXPECTED_AT, file=where, manifest=MANIFEST_NAME,
                                          key=f"files/{index}/{key}", expected=phrase("an integer"),
                                          found=repr(entry[key]), init={"file": where, "entry": f"files/{index}/{key}"})
        problem = path_problem(name)
        if problem is None and name in listed:
            problem = phrase("each path listed once")
        if problem is not None:
            raise PackageError.worded(_EXPECTED_AT, file=where, manifest=MANIFEST_NAME, key=f"files/{index}/path",
                                      expected=problem, found=shown(name), init={"file": where, "entry": shown(name)})
        listed.add(name)
    for name in sorted(listed):
        parts = name.split("/")
        for depth in range(2, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in listed:
                raise PackageError.worded("{file}: {manifest}: {parent} is listed as a file and as the directory "
                                          "of {name}; expected one or the other", file=where, manifest=MANIFEST_NAME,
                                          parent=shown(parent), name=shown(name),
                                          init={"file": where, "entry": shown(parent)})


def validate_manifest(manifest: Any, where: str) -> None:
    """Raise PackageError for the first (best-matching) schema violation, naming the key path."""
    validator = jsonschema.Draft202012Validator(manifest_schema())
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(manifest))
    except RecursionError:
        raise PackageError.worded("{file}: {manifest}: expected a manifest object, found too deeply nested data",
                                  file=where, manifest=MANIFEST_NAME, init={"file": where}) from None
    if error is not None:
        key = "/".join(str(p) for p in error.absolute_path)
        # What the schema found wrong is jsonschema's own (English) words.
        message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
        if key:
            raise PackageError.worded("{file}: {manifest} at '{key}': {message}", file=where, manifest=MANIFEST_NAME,
                                      key=key, message=message, init={"file": where, "entry": key})
        raise PackageError.worded("{file}: {manifest}: {message}", file=where, manifest=MANIFEST_NAME,
                                  message=message, init={"file": where})
    for key in ("schema_version", "required_free_bytes"):
        if not _is_int(manifest[key]):
            raise PackageError.worded(_EXPECTED_AT, file=where, manifest=MANIFEST_NAME, key=key,
                                      expected=phrase("an integer"), found=repr(manifest[key]),
                                      init={"file": where, "entry": key})
    _check_files(manifest["files"], where)


@contextmanager
def open_archive(path: Path) -> Iterator[tarfile.TarFile]:
    """The package as a tar stream; a directory, a FIFO or unreadable data is a PackageError."""
    if not path.is_file():
        found = phrase("a directory") if path.is_dir() else phrase("nothing") if not path.exists() \
            else phrase("no regular file")
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
    kinds = {tarfile.SYMTYPE: phrase("a symbolic link"), tarfile.LNKTYPE: phrase("a hard link"),
             tarfile.CHRTYPE: phrase("a character device"), tarfile.BLKTYPE: phrase("a block device"),
             tarfile.FIFOTYPE: phrase("a FIFO"), tarfile.DIRTYPE: phrase("a directory")}
    if member.type in kinds:
        return kinds[member.type]
    return phrase("a regular file") if member.isfile() else phrase("an entry of tar type {type}",
                                                                     type=repr(member.type))


def load_manifest(path: Path, tar: tarfile.TarFile, max_unpacked_bytes: int) -> dict[str, Any]:
    """The manifest, which must be the archive's first entry, validated; nothing after it has been read yet."""
    member = tar.next()
    if member is None or member.name != MANIFEST_NAME:
        found = phrase("an empty archive") if member is None else shown(member.name)
        raise PackageError.worded("{file}: expected {manifest} as the first archive entry, found {found}",
                                  file=path.name, manifest=MANIFEST_NAME, found=found,
                                  init={"file": path.name, "entry": MANIFEST_NAME})
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        where = {"file": path.name, "entry": MANIFEST_NAME}
        if member.issym() or member.islnk():
            raise PackageError.worded("{file}: {manifest}: expected a regular file, found {kind} to {target}",
                                      file=path.name, manifest=MANIFEST_NAME, kind=_kind(member),
                                      target=shown(member.linkname), init=where)
        raise PackageError.worded("{file}: {manifest}: expected a regular file, found {kind}", file=path.name,
                                  manifest=MANIFEST_NAME, kind=_kind(member), init=where)
    if member.size > MANIFEST_MAX_BYTES:
        raise PackageError.worded("{file}: {manifest}: expected at most {limit} bytes, found {size}", file=path.name,
                                  manifest=MANIFEST_NAME, limit=MANIFEST_MAX_BYTES, size=member.size,
                                  init={"file": path.name, "entry": MANIFEST_NAME})
    fh = tar.extractfile(member)
    data = fh.read() if fh is not None else b""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number")

    try:
        manifest = json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        why = phrase("too deeply nested data") if isinstance(exc, RecursionError) \
            else phrase("invalid text ({why})", why=exc)
        raise PackageError.worded("{file}: {manifest}: expected JSON, found {why}", file=path.name,
                                  manifest=MANIFEST_NAME, why=why,
                                  init={"file": path.name, "entry": MANIFEST_NAME}) from None
    validate_manifest(manifest, path.name)
    declared = sum(int(entry["size"]) for entry in manifest["files"])
    if declared > max_unpacked_bytes:
        raise PackageError.worded("{file}: {manifest}: 'files' declare {declared} bytes unpacked, expected at most "
                                  "{limit} ([package] max_unpacked_mb = {mb})", file=path.name,
                                  manifest=MANIFEST_NAME, declared=declared, limit=max_unpacked_bytes,
                                  mb=max_unpacked_bytes // MIB, init={"file": path.name, "entry": "files"})
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
