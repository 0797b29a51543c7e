"""Packages: deterministic builds, manifest validation, payload verification."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from drhost.i18n import translator
from drhost.packaging import PackageError, build_package, read_package, verify_payload
from product_helpers import build_all, repack

MIB = 1 << 20


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("packages"))


def test_build_is_deterministic(tmp_path: Path) -> None:
    """Two builds of the same version are byte-identical (same sha256)."""
    a = build_package("2.0.0", tmp_path / "a")
    b = build_package("2.0.0", tmp_path / "b")
    assert a.name == "drproduct-2.0.0.tar.gz"
    assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest()
    assert read_package(a).sha256 == read_package(b).sha256


def test_manifest_describes_versions(packages: dict[str, Path]) -> None:
    """Each package carries its version, schema, upgrade path and only its own migrations."""
    p1, p2 = read_package(packages["1.0.0"]), read_package(packages["2.0.0"])
    assert (p1.version, p1.schema_version, p1.upgrades_from) == ("1.0.0", 1, ())
    assert (p2.version, p2.schema_version, p2.upgrades_from) == ("2.0.0", 2, ("1.0.0",))
    names1 = {f["path"] for f in p1.manifest["files"]}
    assert "payload/migrations/001_initial.sql" in names1
    assert "payload/migrations/002_retention_replicas.sql" not in names1
    assert p2.size == packages["2.0.0"].stat().st_size
    assert p2.sha256 == hashlib.sha256(packages["2.0.0"].read_bytes()).hexdigest()


def test_required_free_bytes_is_three_times_payload(packages: dict[str, Path]) -> None:
    """required_free_bytes is 3x the unpacked payload rounded up to a whole MiB."""
    pkg = read_package(packages["2.0.0"])
    unpacked = sum(f["size"] for f in pkg.manifest["files"])
    assert pkg.required_free_bytes % MIB == 0
    assert 3 * unpacked <= pkg.required_free_bytes < 3 * unpacked + MIB


def test_unknown_version_refused(tmp_path: Path) -> None:
    """Building a version absent from versions.json fails with a PackageError naming it."""
    with pytest.raises(PackageError, match=r"found '9\.9\.9'"):
        build_package("9.9.9", tmp_path)


def test_missing_manifest_key_names_file_and_key(packages: dict[str, Path], tmp_path: Path) -> None:
    """A manifest without 'version' is rejected with a message naming the package file and the key."""
    bad = repack(packages["2.0.0"], tmp_path / "drproduct-2.0.0.tar.gz",
                 edit_manifest=lambda m: m.pop("version"))
    with pytest.raises(PackageError) as err:
        read_package(bad)
    assert str(err.value) == "drproduct-2.0.0.tar.gz: manifest.json: 'version' is a required property"


def test_nested_manifest_error_names_path(packages: dict[str, Path], tmp_path: Path) -> None:
    """A bad value deep in the manifest is reported with its key path."""
    def corrupt(m: dict[str, Any]) -> None:
        m["files"][0]["sha256"] = "not-a-hash"

    bad = repack(packages["1.0.0"], tmp_path / "drproduct-1.0.0.tar.gz", edit_manifest=corrupt)
    with pytest.raises(PackageError, match=r"drproduct-1\.0\.0\.tar\.gz: manifest\.json at 'files/0/sha256'"):
        read_package(bad)


def test_a_manifest_error_is_said_in_chinese_with_the_same_english(packages: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """A manifest that lists one path twice is refused in Chinese under zh_CN, quoting the file, the key and the
    path as they are; its English (str) is unchanged."""
    listed: list[str] = []

    def twice(m: dict[str, Any]) -> None:
        m["files"][1]["path"] = m["files"][0]["path"]
        listed.append(m["files"][0]["path"])

    bad = repack(packages["1.0.0"], tmp_path / "drproduct-1.0.0.tar.gz", edit_manifest=twice)
    with pytest.raises(PackageError) as err:
        read_package(bad)
    assert str(err.value) == (f"drproduct-1.0.0.tar.gz: manifest.json at 'files/1/path': expected each path listed "
                              f"once, found '{listed[0]}'")
    assert err.value.in_language(translator("zh_CN")) == (
        f"drproduct-1.0.0.tar.gz: manifest.json 的 'files/1/path': 期望 每个路径只列出一次, 实际为 '{listed[0]}'")
    assert (err.value.file, err.value.entry) == ("drproduct-1.0.0.tar.gz", f"'{listed[0]}'")


def test_renamed_package_refused(packages: dict[str, Path], tmp_path: Path) -> None:
    """A package whose file name disagrees with its manifest version is refused."""
    renamed = tmp_path / "drproduct-3.0.0.tar.gz"
    renamed.write_bytes(packages["2.0.0"].read_bytes())
    with pytest.raises(PackageError, match=r"expected '3\.0\.0'.*found '2\.0\.0'"):
        read_package(renamed)


def test_garbage_file_is_package_error(tmp_path: Path) -> None:
    """A file that is not a tar.gz gives a PackageError naming it, not a traceback from tarfile."""
    junk = tmp_path / "drproduct-1.0.0.tar.gz"
    junk.write_bytes(b"this is not a package")
    with pytest.raises(PackageError, match=r"^drproduct-1\.0\.0\.tar\.gz: expected a gzip-compressed tar"):
        read_package(junk)
    assert verify_payload(junk) and "drproduct-1.0.0.tar.gz" in verify_payload(junk)[0]


def test_verify_payload_clean(packages: dict[str, Path]) -> None:
    """A freshly built package verifies without problems."""
    assert verify_payload(packages["1.0.0"]) == []
    assert verify_payload(packages["2.0.0"]) == []


def test_verify_payload_catches_tampered_file(packages: dict[str, Path], tmp_path: Path) -> None:
    """Changing one payload file is reported with the file's name and its size/sha256 mismatch."""
    name = "payload/lib/drproduct/db.py"
    original = next(f["sha256"] for f in read_package(packages["2.0.0"]).manifest["files"] if f["path"] == name)
    bad = repack(packages["2.0.0"], tmp_path / "drproduct-2.0.0.tar.gz", replace={name: b"print('pwned')\n"})
    problems = verify_payload(bad)
    assert any(name in p and "size expected" in p for p in problems)
    assert any(name in p and f"sha256 expected {original}" in p for p in problems)
    assert len(problems) == 2


def test_verify_payload_catches_extra_and_missing(packages: dict[str, Path], tmp_path: Path) -> None:
    """A file smuggled in and a file left out are both reported."""
    bad = repack(packages["1.0.0"], tmp_path / "drproduct-1.0.0.tar.gz", drop=("payload/SCHEMA",),
                 extra={"payload/bin/backdoor": b"#!/bin/sh\n"})
    problems = verify_payload(bad)
    assert any("payload/bin/backdoor" in p and "extra file" in p for p in problems)
    assert any("payload/SCHEMA" in p and "missing" in p for p in problems)


def _unpacked_release(package: Path, dest: Path) -> Path:
    with tarfile.open(package, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.startswith("payload/"):
                target = dest / member.name[len("payload/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                target.write_bytes(source.read())
    return dest


def test_release_tools_load_the_shipped_bytecode_and_never_a_stale_one(packages: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """A release ships its modules compiled (a tool run does not compile them again), as checked-hash pycs:
    a module whose source differs from what was compiled runs from its source."""
    release = _unpacked_release(packages["2.0.0"], tmp_path / "release")
    tool = [sys.executable, "-I", "-S", "-v", str(release / "bin" / "drproduct-db"), "--root", str(tmp_path),
            "version"]
    shipped = subprocess.run(tool, capture_output=True, text=True, timeout=60)
    pyc = release / "lib" / "drproduct" / "__pycache__" / f"db.{sys.implementation.cache_tag}.pyc"
    assert f"code object from '{pyc}'" in shipped.stderr
    assert not any(line.startswith("# bytecode") and "does not match" in line
                   for line in shipped.stderr.splitlines())
    source = release / "lib" / "drproduct" / "db.py"
    source.write_text(source.read_text() + "\n\ndef main(argv: object, release: object) -> int:\n    return 42\n")
    patched = subprocess.run(tool, capture_output=True, text=True, timeout=60)
    assert patched.returncode == 42, patched.stderr[-2000:]
    modules = {path.stem for path in (release / "lib" / "drproduct").glob("*.py")}
    assert {path.name.split(".")[0] for path in release.rglob("*.pyc")} == modules  # shipped, none written
