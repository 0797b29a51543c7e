"""Bad packages: refused before any run exists, with one line naming the package and the entry or key (exit 2)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import run_json, tree_digest
from drhost.cli import main
from drhost.demo import install
from drhost.packaging import PackageError, build_package, read_package, verify_payload
from drhost.packaging.manifest import MIB, validate_manifest

NAME = "drproduct-2.0.0.tar.gz"
Run = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Member:
    """One archive entry; ``listed`` puts a regular file in the manifest with its real size and sha256."""

    name: str
    data: bytes = b""
    mode: int = 0o644
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    listed: bool = True
    uid: int = 0


@dataclass
class Spec:
    """A package to build: its entries, changes to the manifest, and what is done to the finished bytes."""

    members: list[Member] = field(default_factory=lambda: [Member("payload/VERSION", b"2.0.0\n"),
                                                           Member("payload/bin/tool", b"#!/bin/sh\n", 0o755)])
    edit: Callable[[dict[str, Any]], None] | None = None
    manifest_bytes: bytes | None = None
    manifest_member: Member | None = None
    manifest_last: bool = False
    mangle: Callable[[bytes], bytes] | None = None


def manifest_for(members: list[Member]) -> dict[str, Any]:
    files = [{"path": m.name, "size": len(m.data), "sha256": hashlib.sha256(m.data).hexdigest(), "mode": m.mode}
             for m in members if m.listed and m.type == tarfile.REGTYPE]
    return {"format": 1, "product": "drproduct", "version": "2.0.0", "upgrades_from": ["1.0.0"],
            "schema_version": 2, "required_free_bytes": MIB, "files": files}


def _info(member: Member) -> tarfile.TarInfo:
    info = tarfile.TarInfo(member.name)
    info.type, info.mode, info.linkname, info.uid, info.gid = member.type, member.mode, member.linkname, \
        member.uid, member.uid
    info.size = len(member.data) if member.type == tarfile.REGTYPE else 0
    return info


def build(spec: Spec, path: Path) -> Path:
    """Write the package with tarfile (GNU format: long and odd names are stored as they are)."""
    manifest = manifest_for(spec.members)
    if spec.edit:
        spec.edit(manifest)
    text = spec.manifest_bytes if spec.manifest_bytes is not None else json.dumps(manifest).encode()
    head = spec.manifest_member or Member("manifest.json", text)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        ordered = [*spec.members, head] if spec.manifest_last else [head, *spec.members]
        for member in ordered:
            tar.addfile(_info(member), io.BytesIO(member.data) if member.type == tarfile.REGTYPE else None)
    data = buf.getvalue()
    path.write_bytes(spec.mangle(data) if spec.mangle else data)
    return path


def with_members(*extra: Member) -> Spec:
    spec = Spec()
    spec.members += list(extra)
    return spec


def edited(edit: Callable[[dict[str, Any]], None]) -> Spec:
    return Spec(edit=edit)


def _set_file(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["files"][0].__setitem__(key, value)


def _truncate_after_manifest(data: bytes) -> bytes:
    return data[: len(data) - 40]


# (id, package, what the message must name besides the package file, extra --set options)
CASES: list[tuple[str, Spec, list[str], list[str]]] = [
    ("manifest-symlink", Spec(manifest_member=Member("manifest.json", type=tarfile.SYMTYPE,
                                                     linkname="payload/VERSION")),
     ["manifest.json", "symbolic link", "payload/VERSION"], []),
    ("manifest-hardlink", Spec(manifest_member=Member("manifest.json", type=tarfile.LNKTYPE,
                                                      linkname="payload/VERSION")),
     ["manifest.json", "hard link"], []),
    ("manifest-directory", Spec(manifest_member=Member("manifest.json", type=tarfile.DIRTYPE)),
     ["manifest.json", "a directory"], []),
    ("manifest-not-first", Spec(manifest_last=True), ["manifest.json", "first archive entry", "payload/VERSION"], []),
    ("payload-symlink", with_members(Member("payload/bin/sh", type=tarfile.SYMTYPE, linkname="/bin/sh")),
     ["payload/bin/sh", "symbolic link", "/bin/sh"], []),
    ("payload-hardlink", with_members(Member("payload/bin/tool2", type=tarfile.LNKTYPE,
                                             linkname="payload/bin/tool")),
     ["payload/bin/tool2", "hard link"], []),
    ("char-device", with_members(Member("payload/null", type=tarfile.CHRTYPE)),
     ["payload/null", "character device"], []),
    ("block-device", with_members(Member("payload/sda", type=tarfile.BLKTYPE)), ["payload/sda", "block device"], []),
    ("fifo", with_members(Member("payload/pipe", type=tarfile.FIFOTYPE)), ["payload/pipe", "FIFO"], []),
    ("unlisted-directory", with_members(Member("payload/cron.d", type=tarfile.DIRTYPE, mode=0o777)),
     ["payload/cron.d", "directory not listed"], []),
    ("directory-outside-payload", with_members(Member("etc", type=tarfile.DIRTYPE)), ["'etc'", "not listed"], []),
    ("unlisted-file", with_members(Member("payload/bin/backdoor", b"#!/bin/sh\n", listed=False)),
     ["payload/bin/backdoor", "extra file"], []),
    ("dot-dot-entry", with_members(Member("payload/../../etc/cron.d/x", b"x", listed=False)),
     ["payload/../../etc/cron.d/x", "plain relative path"], []),
    ("absolute-entry", with_members(Member("/etc/passwd", b"x", listed=False)), ["/etc/passwd", "plain relative"], []),
    ("dot-slash-entry", with_members(Member("./manifest.json", b"{}", listed=False)),
     ["./manifest.json", "plain relative"], []),
    ("duplicate-entry", with_members(Member("payload/VERSION", b"2.0.0\n", listed=False)),
     ["payload/VERSION", "each entry once"], []),
    ("escape-sequence-name", with_members(Member("payload/\x1b[2Jboom", b"x")),
     ["files/2/path", "\\x1b[2Jboom", "control"], []),
    ("backslash-name", with_members(Member("payload/a\\b", b"x")), ["files/2/path", "backslash"], []),
    ("long-component", with_members(Member("payload/" + "a" * 300, b"x")), ["files/2/path", "255 bytes"], []),
    ("file-is-a-parent", with_members(Member("payload/VERSION/inner", b"x")),
     ["payload/VERSION", "listed as a file and as the directory"], []),
    ("duplicate-manifest-path", edited(lambda m: m["files"].append(dict(m["files"][0]))),
     ["files/2/path", "each path listed once"], []),
    ("other-product", edited(lambda m: m.update(product="otherprod")),
     ["'product' expected 'drproduct'", "found 'otherprod'", "[package] product"], []),
    ("declared-size-over-limit", edited(_set_file("size", 5 << 30)),
     ["'files' declare 5368709130 bytes", "max_unpacked_mb = 2048"], []),
    ("over-configured-limit", with_members(Member("payload/blob", bytes(2 * MIB))),
     ["'files' declare", "max_unpacked_mb = 1"], ["--set", "package.max_unpacked_mb=1"]),
    ("float-size", edited(_set_file("size", 6.0)), ["files/0/size", "expected an integer", "6.0"], []),
    ("nan-size", Spec(manifest_bytes=json.dumps(manifest_for(Spec().members)).replace('"size": 6', '"size": NaN')
                      .encode()), ["manifest.json", "expected JSON", "NaN"], []),
    ("deeply-nested-manifest", Spec(manifest_bytes=b"[" * 100_000 + b"]" * 100_000),
     ["manifest.json", "too deeply nested"], []),
    ("huge-manifest", Spec(manifest_bytes=b" " * (9 * MIB) + b"{}"), ["manifest.json", "at most 8388608 bytes"], []),
    ("manifest-not-utf8", Spec(manifest_bytes=b'{"format": 1, "product": "\xff"}'),
     ["manifest.json", "expected JSON"], []),
    ("tampered-content", Spec(edit=_set_file("sha256", "0" * 64)), ["payload/VERSION", "sha256 expected 0000"], []),
    ("setuid-mode-mismatch", Spec(edit=_set_file("mode", 0o644), members=[
        Member("payload/VERSION", b"2.0.0\n", 0o4755)]), ["payload/VERSION", "mode expected 644, found 4755"], []),
    ("truncated-after-manifest", Spec(members=[Member("payload/VERSION", b"2.0.0\n"),
                                               Member("payload/blob", os.urandom(64 * 1024))],
                                      mangle=_truncate_after_manifest),
     ["truncated"], []),
    ("trailing-garbage", Spec(mangle=lambda data: data + b"garbage after the gzip stream"),
     ["GNU tar", "trailing garbage"], []),
    ("empty-archive", Spec(members=[], manifest_member=None, mangle=lambda _: gzip.compress(bytes(10240), mtime=0)),
     ["manifest.json", "empty archive"], []),
]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real drproduct 1.0.0 install (not started): what a refused package must leave as it was."""
    base = tmp_path_factory.mktemp("target")
    root = base / "opt" / "drproduct"
    install.install_fresh(build_package("1.0.0", base / "packages"), root, install.free_port(), seed_jobs=5)
    return root


@pytest.fixture
def inventory(tmp_path: Path, target: Path) -> Path:
    path = tmp_path / "inv.ini"
    path.write_text(f"[target:a]\ntransport = local\nroot = {target}\n")
    return path


def runs(state_dir: Path) -> list[Path]:
    path = state_dir / "runs"
    return sorted(path.iterdir()) if path.exists() else []


@pytest.mark.parametrize(("spec", "names", "options"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_package_is_refused_before_anything_exists(spec: Spec, names: list[str], options: list[str],
                                                       inventory: Path, target: Path, state_dir: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad package exits 2 with one line naming the file and the entry or key; no run, target unchanged."""
    package = build(spec, tmp_path / NAME)
    before = tree_digest(target)
    code = main(["upgrade", "-i", str(inventory), "--package", str(package), *options])
    err = capsys.readouterr().err
    assert code == 2, err
    line = next(line for line in err.splitlines() if line.startswith("drhost: error:"))
    assert NAME in line
    for name in names:
        assert name in line, line
    assert "Traceback" not in err
    assert runs(state_dir) == []
    assert tree_digest(target) == before


def test_package_that_is_a_directory_or_fifo_is_named(inventory: Path, state_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A directory or a FIFO given as the package is named as such at once (a FIFO is never read)."""
    (tmp_path / "dir.tar.gz").mkdir()
    os.mkfifo(tmp_path / "fifo.tar.gz")
    for name, found in (("dir.tar.gz", "a directory"), ("fifo.tar.gz", "not a regular file")):
        code = main(["upgrade", "-i", str(inventory), "--package", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert code == 2 and name in err and found in err and "Traceback" not in err, err
    assert runs(state_dir) == []


def test_config_check_refuses_another_products_package(tmp_path: Path, target: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """config check finds what upgrade would: another product's package, named with the setting it breaks."""
    package = build(edited(lambda m: m.update(product="otherprod")), tmp_path / NAME)
    config = tmp_path / "site.ini"
    config.write_text(f"[target:a]\ntransport = local\nroot = {target}\n\n[run]\npackage = {package}\n")
    assert main(["config", "check", str(config)]) == 2
    err = capsys.readouterr().err
    assert "found 'otherprod'" in err and NAME in err
    config.write_text(config.read_text() + "\n[package]\nproduct = otherprod\n")
    assert main(["config", "check", str(config)]) == 0, capsys.readouterr().err


def test_bad_package_subprocess_prints_one_line(drhost: Run, state_dir: Path, inventory: Path, target: Path,
                                                tmp_path: Path) -> None:
    """Through the real program: a hostile package gives one error line and no traceback on the terminal."""
    package = build(with_members(Member("payload/bin/sh", type=tarfile.SYMTYPE, linkname="/bin/sh")), tmp_path / NAME)
    before = tree_digest(target)
    proc = drhost("upgrade", "-i", str(inventory), "--package", str(package))
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        line for line in proc.stderr.splitlines() if line.startswith("drhost: error:")]
    assert "payload/bin/sh" in proc.stderr and "Traceback" not in proc.stderr
    assert runs(state_dir) == [] and tree_digest(target) == before


def test_verification_memory_is_bounded(tmp_path: Path) -> None:
    """Verifying a package with a 256 MiB file needs a few MiB of Python memory, not the file's size."""
    size = 256 * MIB
    blob = tmp_path / "blob"
    with blob.open("wb") as fh:
        fh.truncate(size)
    digest = hashlib.sha256()
    with blob.open("rb") as fh:
        for chunk in iter(lambda: fh.read(MIB), b""):
            digest.update(chunk)
    manifest = {"format": 1, "product": "drproduct", "version": "2.0.0", "upgrades_from": ["1.0.0"],
                "schema_version": 2, "required_free_bytes": 3 * size,
                "files": [{"path": "payload/blob", "size": size, "sha256": digest.hexdigest(), "mode": 0o644}]}
    package = tmp_path / NAME
    with tarfile.open(package, "w:gz", compresslevel=1) as tar:
        text = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
        tar.add(blob, "payload/blob")
    tracemalloc.start()
    try:
        assert verify_payload(package) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MIB, peak


@pytest.mark.podman
def test_install_normalises_modes_and_ignores_owners(drhost: Run, state_dir: Path, tmp_path: Path) -> None:
    """A real upgrade installs setuid/world-writable entries as at most rwxr-xr-x, owned by the installer."""
    original = build_package("2.0.0", tmp_path / "built")
    hostile = {"payload/bin/drproductctl": 0o4777, "payload/VERSION": 0o666, "payload/bin": 0o3777}
    variant = tmp_path / NAME
    with tarfile.open(original, "r:gz") as tin, tarfile.open(variant, "w:gz", format=tarfile.GNU_FORMAT) as tout:
        for member in tin:
            data = tin.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "manifest.json":
                manifest = json.loads(data)
                for entry in manifest["files"]:
                    entry["mode"] = hostile.get(entry["path"], entry["mode"])
                data = json.dumps(manifest).encode()
            member.mode = hostile.get(member.name, member.mode)
            member.uid = member.gid = 4242
            member.uname = member.gname = "mallory"
            member.size = len(data)
            tout.addfile(member, io.BytesIO(data))
            if member.name == "manifest.json":
                info = tarfile.TarInfo("payload/bin")
                info.type, info.mode, info.uid, info.uname = tarfile.DIRTYPE, hostile["payload/bin"], 4242, "mallory"
                tout.addfile(info)
    assert verify_payload(variant) == []
    proc = drhost("upgrade", "--demo", "--demo-targets", "1", "--json", "--package", str(variant),
                  "--set", "run.forks=1")
    summary = run_json(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    roots = sorted((state_dir / "demo").glob("*/*/opt/drproduct"))
    assert len(roots) == 1 and summary["status"] == "succeeded"
    release = roots[0] / "releases" / "2.0.0"
    assert stat.S_IMODE((release / "bin" / "drproductctl").stat().st_mode) == 0o755
    assert stat.S_IMODE((release / "VERSION").stat().st_mode) == 0o644
    assert stat.S_IMODE((release / "bin").stat().st_mode) == 0o755
    for path in [release, *release.rglob("*")]:
        found = path.lstat()
        assert found.st_uid == os.getuid() and found.st_uid != 4242, path
        assert not found.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH), path


# Random JSON-like structures, and manifests that are nearly right, for the manifest reader.
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=30)
_paths = st.text(max_size=40).map(lambda s: "payload/" + s) | st.text(max_size=40)
_file = st.fixed_dictionaries({"path": _paths, "size": st.integers(-2, 2**41) | st.floats(), "sha256": st.text(
    "0123456789abcdef", min_size=64, max_size=64), "mode": st.integers(-1, 0o17777) | st.floats()})
_near = st.fixed_dictionaries({
    "format": st.sampled_from([1, 1.0, True, 2]), "product": st.sampled_from(["drproduct", "x", "", "A"]),
    "version": st.sampled_from(["2.0.0", "2.0", "2.0.0\n"]), "upgrades_from": st.lists(st.sampled_from(
        ["1.0.0", "x"]), max_size=3), "schema_version": st.integers(-1, 2**60) | st.floats(),
    "required_free_bytes": st.integers(-1, 2**60), "files": st.lists(_file, max_size=5)})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json | _near)
def test_validate_manifest_only_raises_package_error(manifest: Any) -> None:
    """Any structure given to validate_manifest is accepted or refused with a PackageError, nothing else."""
    try:
        validate_manifest(manifest, NAME)
    except PackageError as exc:
        assert str(exc).startswith(f"{NAME}: manifest.json")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("random")


def _tar_with_manifest(text: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    return buf.getvalue()


def _good_tar() -> bytes:
    buf = io.BytesIO()
    spec = with_members(Member("payload/bin", type=tarfile.DIRTYPE, mode=0o755))
    text = json.dumps(manifest_for(spec.members)).encode()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member in [Member("manifest.json", text), *spec.members]:
            tar.addfile(_info(member), io.BytesIO(member.data) if member.type == tarfile.REGTYPE else None)
    return buf.getvalue()


GOOD_TAR = _good_tar()


def _mutated(edits: list[tuple[int, int]]) -> bytes:
    """A valid package's tar with some bytes overwritten (headers, names, sizes, checksums), recompressed."""
    data = bytearray(GOOD_TAR)
    for position, value in edits:
        data[position % len(data)] = value
    return gzip.compress(bytes(data), mtime=0)


_bytes = (st.binary(max_size=2000) | st.binary(max_size=2000).map(gzip.compress)
          | (_json | _near).map(lambda m: _tar_with_manifest(json.dumps(m).encode()))
          | st.binary(max_size=400).map(_tar_with_manifest)
          | st.lists(st.tuples(st.integers(0, len(GOOD_TAR)), st.integers(0, 255)), min_size=1, max_size=8)
          .map(_mutated))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(_bytes)
def test_package_reader_only_raises_package_error(scratch: Path, data: bytes) -> None:
    """Random bytes, gzip streams, random manifests, mutated archives: only PackageError, or problems listed."""
    package = scratch / NAME
    package.write_bytes(data)
    try:
        read_package(package)
    except PackageError as exc:
        assert str(exc).startswith(NAME)
    problems = verify_payload(package)
    assert all(isinstance(p, str) and p.startswith(NAME) for p in problems)
