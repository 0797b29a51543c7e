"""Deterministic build of `drproduct-<V>.tar.gz` from the single source tree in drhost/demo/product."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import math
import os
import py_compile
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from drhost.packaging.manifest import MANIFEST_NAME, PAYLOAD_PREFIX, PackageError, validate_manifest

PRODUCT = "drproduct"
PRODUCT_DIR = Path(__file__).resolve().parent.parent / "demo" / "product"
# Fixed so that two builds of the same sources are byte-identical (2000-01-01T00:00:00Z).
FIXED_MTIME = 946684800
MIB = 1 << 20


def known_versions() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = json.loads((PRODUCT_DIR / "versions.json").read_text(encoding="utf-8"))
    return data


def _payload(version: str, schema: int) -> dict[str, tuple[bytes, int]]:
    """Archive path -> (content, mode) of everything a release of `version` ships."""
    files: dict[str, tuple[bytes, int]] = {}
    for script in sorted((PRODUCT_DIR / "bin").iterdir()):
        if script.is_file():
            files[f"bin/{script.name}"] = (script.read_bytes(), 0o755)
    for module in sorted((PRODUCT_DIR / "lib" / "drproduct").glob("*.py")):
        files[f"lib/drproduct/{module.name}"] = (module.read_bytes(), 0o644)
        files[f"lib/drproduct/__pycache__/{module.stem}.{sys.implementation.cache_tag}.pyc"] = \
            (_bytecode(module), 0o644)
    for migration in sorted((PRODUCT_DIR / "migrations").glob("*.sql")):
        number = migration.name.split("_", 1)[0]
        # Only migrations up to this version's schema: 1.0.0 must not know how to become 2.
        if number.isdigit() and int(number) <= schema:
            files[f"migrations/{migration.name}"] = (migration.read_bytes(), 0o644)
    files["VERSION"] = (f"{version}\n".encode(), 0o644)
    files["SCHEMA"] = (f"{schema}\n".encode(), 0o644)
    return {PAYLOAD_PREFIX + name: content for name, content in sorted(files.items())}


def _bytecode(module: Path) -> bytes:
    """The module compiled as a checked-hash pyc: every tool run would compile it again otherwise (the tools
    never write bytecode, so that a release stays byte-identical to its manifest), and a pyc keyed on the
    source's hash, not its mtime, keeps two builds identical and is ignored if the source ever differs. A
    target whose python3 is another version ignores it too, and compiles in memory as before."""
    with tempfile.TemporaryDirectory(prefix="drproduct-pyc-") as tmp:
        compiled = Path(tmp) / "module.pyc"
        py_compile.compile(str(module), cfile=str(compiled), dfile=f"lib/drproduct/{module.name}", doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        return compiled.read_bytes()


def build_manifest(version: str, payload: dict[str, tuple[bytes, int]]) -> dict[str, Any]:
    versions = known_versions()
    if version not in versions:
        raise PackageError.worded("{file}: version expected one of {versions} (versions.json), found {found}",
                                  file=f"{PRODUCT}-{version}.tar.gz", versions=", ".join(sorted(versions)),
                                  found=repr(version))
    spec = versions[version]
    unpacked = sum(len(data) for data, _ in payload.values())
    manifest: dict[str, Any] = {
        "format": 1,
        "product": PRODUCT,
        "version": version,
        "upgrades_from": list(spec["upgrades_from"]),
        "schema_version": int(spec["schema_version"]),
        # 3x: the new release, the staged copy and the catalog backup must fit side by side.
        "required_free_bytes": math.ceil(3 * unpacked / MIB) * MIB,
        "files": [
            {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": mode}
            for name, (data, mode) in payload.items()
        ],
    }
    validate_manifest(manifest, f"{PRODUCT}-{version}.tar.gz")
    return manifest


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def build_package(version: str, out_dir: Path) -> Path:
    """Build drproduct-<version>.tar.gz in out_dir; same sources give the same sha256."""
    out_dir = Path(out_dir)
    schema = int(known_versions().get(version, {}).get("schema_version", 0))
    payload = _payload(version, schema)
    manifest = build_manifest(version, payload)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PRODUCT}-{version}.tar.gz"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as raw:
            # filename="" and mtime=0 keep the gzip header free of build-time details.
            with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
                _add(tar, MANIFEST_NAME, manifest_bytes, 0o644)
                for name, (data, mode) in payload.items():
                    _add(tar, name, data, mode)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drhost.packaging.build")
    parser.add_argument("version")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        path = build_package(args.version, args.out)
    except (PackageError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
