"""Verifying a package's payload against its manifest, in one streaming pass with bounded memory.

A package that verifies must also unpack with GNU tar on every target: so every entry, directories
included, must be one the manifest accounts for, of a kind tar unpacks the same everywhere, and GNU tar
must read the archive to its end and see the same names as this check did.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from drhost.packaging.manifest import (
    ARCHIVE_ERRORS,
    DEFAULT_MAX_UNPACKED_BYTES,
    MANIFEST_NAME,
    PAYLOAD_PREFIX,
    PackageError,
    load_manifest,
    open_archive,
    path_problem,
    shown,
)

CHUNK = 1 << 20
# Enough to show what is wrong; a hostile archive with a million bad entries is not listed in full.
MAX_PROBLEMS = 20
TAR_LIST_TIMEOUT_S = 900.0


def _directories(listed: dict[str, Any]) -> set[str]:
    """The directories the listed files imply: the only directory entries an archive may have."""
    found = {PAYLOAD_PREFIX.rstrip("/")}
    for name in listed:
        parts = name.split("/")
        found.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    return found


def _compare(tar: tarfile.TarFile, member: tarfile.TarInfo, entry: dict[str, Any], where: str,
             budget: int) -> list[str]:
    """Mode, size and sha256 of one listed file; its content is hashed only while within ``budget`` bytes."""
    name = shown(member.name)
    problems = []
    mode = member.mode & 0o7777
    if mode != entry["mode"]:
        problems.append(f"{where}: {name}: mode expected {entry['mode']:o}, found {mode:o}")
    if member.size != entry["size"]:
        problems.append(f"{where}: {name}: size expected {entry['size']}, found {member.size}")
    if member.size > budget:
        # A header may claim any size: reading past what the limit allows would only cost time.
        return [*problems, f"{where}: {name}: not read: the archive holds more data than the manifest "
                           f"declares in all"]
    digest = hashlib.sha256()
    fh = tar.extractfile(member)
    if fh is not None:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    if digest.hexdigest() != entry["sha256"]:
        problems.append(f"{where}: {name}: sha256 expected {entry['sha256']}, found {digest.hexdigest()}")
    return problems


def _entry_problem(member: tarfile.TarInfo, listed: dict[str, Any], directories: set[str], seen: set[str],
                   where: str) -> str | None:
    """Why this entry may not be in the package (its content is compared separately), or None."""
    name = member.name
    problem = path_problem(name)
    if problem is not None:
        return f"{where}: {shown(name)}: expected {problem}"
    if name in seen:
        return f"{where}: {shown(name)}: expected each entry once, found it again (tar would unpack the last one)"
    if member.isdir():
        if name in listed:
            return f"{where}: {shown(name)}: listed in the manifest as a file, found a directory"
        if name not in directories:
            return f"{where}: {shown(name)}: directory not listed in the manifest (no listed file is under it)"
        return None
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        link = f" to {shown(member.linkname)}" if member.issym() or member.islnk() else ""
        kind = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link",
                tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
                tarfile.FIFOTYPE: "a FIFO"}.get(member.type, f"tar entry type {member.type!r}")
        return f"{where}: {shown(name)}: expected a regular file or directory, found {kind}{link}"
    if name not in listed:
        return f"{where}: {shown(name)}: extra file, not listed in the manifest"
    return None


def _gnu_tar_problem(path: Path, names: list[str]) -> str | None:
    """What GNU tar, which unpacks the package on the targets, thinks of the archive differently."""
    tar = shutil.which("tar")
    if tar is None:
        return None
    try:
        proc = subprocess.run([tar, "--quoting-style=literal", "-tzf", str(path)], capture_output=True,
                              timeout=TAR_LIST_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"{path.name}: GNU tar could not list the archive within {TAR_LIST_TIMEOUT_S:.0f}s"
    if proc.returncode != 0:
        why = " / ".join(line.strip() for line in proc.stderr.decode(errors="replace").splitlines() if line.strip())
        return f"{path.name}: expected an archive GNU tar unpacks, found one it fails on: {shown(why, 300)}"
    listed = [line.rstrip("/") for line in proc.stdout.decode("utf-8", "surrogateescape").split("\n") if line]
    if listed != names:
        differ = next((f"{shown(a)} / {shown(b)}" for a, b in zip(listed, names, strict=False) if a != b),
                      f"{len(listed)} entries / {len(names)} entries")
        return (f"{path.name}: expected GNU tar to see the entries this check saw, found otherwise "
                f"(tar / check: {differ})")
    return None


def verify_payload(path: Path, max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES) -> list[str]:
    """Compare every archive entry with the manifest; return the problems (empty: the payload is intact)."""
    path = Path(path)
    where = path.name
    problems: list[str] = []
    names = [MANIFEST_NAME]
    try:
        with open_archive(path) as tar:
            manifest = load_manifest(path, tar, max_unpacked_bytes)
            listed: dict[str, Any] = {f["path"]: f for f in manifest["files"]}
            directories = _directories(listed)
            seen: set[str] = set()
            budget = sum(int(f["size"]) for f in manifest["files"])
            while len(problems) < MAX_PROBLEMS and (member := tar.next()) is not None:
                # Stream mode keeps every header read; only the names are needed, and memory stays bounded.
                tar.members.clear()  # type: ignore[attr-defined]
                names.append(member.name)
                problem = _entry_problem(member, listed, directories, seen, where)
                seen.add(member.name)
                if problem is not None:
                    problems.append(problem)
                elif member.isfile():
                    problems += _compare(tar, member, listed[member.name], where, budget)
                    budget -= member.size
            if len(problems) >= MAX_PROBLEMS:
                problems.append(f"{where}: more problems not listed")
            problems += [f"{where}: {shown(name)}: listed in the manifest, missing from the archive"
                         for name in sorted(set(listed) - seen)][:MAX_PROBLEMS]
    except PackageError as exc:
        problems.append(str(exc))
    except ARCHIVE_ERRORS as exc:
        problems.append(f"{where}: expected a complete gzip-compressed tar archive, found corrupt or truncated "
                        f"data ({exc})")
    if not problems:
        problem = _gnu_tar_problem(path, names)
        if problem is not None:
            problems.append(problem)
    return problems
