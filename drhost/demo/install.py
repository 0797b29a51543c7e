"""Controller-side helpers: install, start, stop and inspect drproduct on THIS machine (demo and tests).

Every product operation goes through the release's own tools, as a plugin on a target would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from drhost.packaging import PackageError, read_package, verify_payload
from drhost.packaging.manifest import INSTALL_MODE_MASK, PAYLOAD_PREFIX

from ..errors import WordedError, phrase
from ._ports import free_port as free_port

TOOL_TIMEOUT = 60.0
ROOT_DIRS = ("releases", "etc/services", "data", "run", "log", "backup", "staging")
EXIT_UNREACHABLE = 3


class InstallError(WordedError, RuntimeError):
    """Installing or driving the demo product failed; the message says which step and why."""


class ProductUnreachable(InstallError):
    """The daemon's /health endpoint did not answer."""


def _tool(root: Path, tool: str, *args: str, release: Path | None = None,
          ok: tuple[int, ...] = (0,), netns: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = (release if release is not None else root / "current") / "bin" / tool
    if not exe.exists():
        raise InstallError.worded("{path}: not found (is drproduct installed under {root}?)", path=exe, root=root)
    argv = [*(("ip", "netns", "exec", netns) if netns else ()), str(exe), "--root", str(root), *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise InstallError.worded("{command}: no answer within {seconds}s", command=" ".join(argv),
                                  seconds=f"{TOOL_TIMEOUT:.0f}") from None
    if proc.returncode not in ok:
        # What the tool said is its own words; "no output" is drhost's.
        reason = proc.stderr.strip() or proc.stdout.strip() or phrase("no output")
        raise InstallError.worded("{command} failed (exit {code}): {reason}", command=f"{tool} {' '.join(args)}",
                                  code=proc.returncode, reason=reason)
    return proc


def _extract_payload(package: Path, dest: Path) -> None:
    """Unpack payload/* into dest; members were checked by verify_payload, paths re-checked here."""
    tmp = dest.with_name(f".{dest.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with tarfile.open(package, "r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.startswith(PAYLOAD_PREFIX):
                continue
            rel = Path(member.name[len(PAYLOAD_PREFIX):])
            if rel.is_absolute() or ".." in rel.parts:
                raise PackageError.worded("{file}: {entry}: expected a relative path inside payload/",
                                          file=package.name, entry=member.name)
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            if src is None:
                raise PackageError.worded("{file}: {entry}: unreadable member", file=package.name, entry=member.name)
            with target.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            # Owners are never taken from the archive, and no mode gives setuid/setgid or group/world write.
            target.chmod(member.mode & INSTALL_MODE_MASK)
    # Rename last so a half-extracted release never sits under its real name.
    tmp.rename(dest)


def _switch_current(root: Path, version: str) -> None:
    tmp = root / ".current.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(f"releases/{version}")
    os.replace(tmp, root / "current")


def _write_ini(root: Path, port: int, major: int) -> None:
    lines = ["[service]", "host = 127.0.0.1", f"port = {port}", "", "[catalog]", "path = data/catalog.db", ""]
    if major >= 2:
        lines += ["[replication]", "mode = async", ""]
    (root / "etc" / "drproduct.ini").write_text("\n".join(lines), encoding="utf-8")


def install_fresh(package: Path, root: Path, port: int, seed_jobs: int = 200) -> None:
    """Install `package` as the first release under root, with a licence and a seeded catalog; do not start."""
    package, root = Path(package), Path(root).absolute()
    pkg = read_package(package)
    problems = verify_payload(package)
    if problems:
        raise PackageError.worded("{file}: payload does not match its manifest: {problems}", file=package.name,
                                  problems="; ".join(problems))
    if (root / "current").is_symlink() or (root / "current").exists():
        raise InstallError.worded("{root}: already has a release installed ({version}); not fresh", root=root,
                                  version=installed_version(root))
    for sub in ROOT_DIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    release = root / "releases" / pkg.version
    if release.exists():
        shutil.rmtree(release)
    _extract_payload(package, release)
    _switch_current(root, pkg.version)
    major = int(pkg.version.split(".")[0])
    _write_ini(root, port, major)
    _tool(root, "drproduct-license", "issue", "--series", f"{major}.x", "--licensee", "demo-site",
          release=release)
    _tool(root, "drproduct-db", "init", "--seed", str(seed_jobs), release=release)
    _tool(root, "drproductctl", "register", release=release)


def clone_fresh(source: Path, root: Path, port: int) -> None:
    """Make ``root`` what ``install_fresh`` would make it, by copying the fresh, never started install at ``source``.

    Extracting, licensing and seeding are the slow part of an install and give the same bytes every time; only
    the daemon's port and its service entry (which names the root) differ, so those are written anew.
    """
    source, root = Path(source).absolute(), Path(root).absolute()
    if any(any((source / sub).iterdir()) for sub in ("run", "log")):
        raise InstallError.worded("{source}: has been started (run/ or log/ not empty); not a fresh install to copy",
                                  source=source)
    if root.exists() and any(root.iterdir()):
        raise InstallError.worded("{root}: not empty; not a place for a fresh install", root=root)
    version = installed_version(source)
    if version is None:
        raise InstallError.worded("{source}: no release installed; not a fresh install to copy", source=source)
    shutil.copytree(source, root, symlinks=True, dirs_exist_ok=True)
    release = root / "releases" / version
    _write_ini(root, port, int(version.split(".")[0]))
    _tool(root, "drproductctl", "register", release=release)


def install_from_golden(package: Path, root: Path, port: int, *, golden_dir: Path, seed_jobs: int = 200) -> None:
    """``install_fresh``, as a copy of a golden install of ``package`` kept under ``golden_dir`` (made once).

    For whatever makes many fresh targets of one package (plugin-test, the test suite). The golden install is
    made under a temporary name and renamed into place, so a reader never sees half of one.
    """
    package = Path(package)
    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:16]
    golden = Path(golden_dir).absolute() / f"{digest}-{seed_jobs}"
    if not (golden / "current").is_symlink():
        golden.parent.mkdir(parents=True, exist_ok=True)
        making = golden.parent / f".{golden.name}.{os.getpid()}"
        shutil.rmtree(making, ignore_errors=True)
        install_fresh(package, making, port, seed_jobs=seed_jobs)
        try:
            os.rename(making, golden)
        except OSError:  # another process made it first: theirs is as good
            shutil.rmtree(making, ignore_errors=True)
    clone_fresh(golden, root, port)


def start(root: Path, timeout: float = 15.0, *, netns: str | None = None) -> None:
    """Start the daemon; in network namespace ``netns`` for a host that lives in one (behind a bastion)."""
    _tool(Path(root), "drproductctl", "start", "--timeout", str(timeout), netns=netns)


def stop(root: Path, timeout: float = 10.0) -> None:
    _tool(Path(root), "drproductctl", "stop", "--timeout", str(timeout))


def health(root: Path) -> dict[str, Any]:
    """The /health body (status ok or degraded); ProductUnreachable when nothing answers."""
    proc = _tool(Path(root), "drproductctl", "health", ok=(0, 1, EXIT_UNREACHABLE))
    if proc.returncode == EXIT_UNREACHABLE:
        raise ProductUnreachable.worded("drproduct under {root} is not reachable: {why}", root=root,
                                        why=proc.stderr.strip())
    try:
        body: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise InstallError.worded("drproductctl health under {root}: expected JSON, found {found}", root=root,
                                  found=repr(proc.stdout[:200])) from None
    return body


def installed_version(root: Path) -> str | None:
    """Version of the release `current` points to, or None when nothing is installed."""
    stamp = Path(root) / "current" / "VERSION"
    try:
        return stamp.read_text(encoding="utf-8").strip()
    except OSError:
        return None


