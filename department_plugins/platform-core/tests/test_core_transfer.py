"""dr-core's transfer unpacks a package with modes normalised and owners of its own, whatever the archive says."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from drhost.testing import FakeContext
from drhost_hookspecs import LoadedPlugin, PackageInfo, Stage, StepFailed
from plugin_harness import fake_context, package_info

HOSTILE_OWNER = 4242


def _package(path: Path, files: dict[str, tuple[bytes, int]], extra: tuple[tarfile.TarInfo, ...] = ()) -> Path:
    """A package whose entries carry the given modes and a foreign owner; ``extra`` entries are not listed."""
    manifest = {"format": 1, "product": "drproduct", "version": "2.0.0", "upgrades_from": ["1.0.0"],
                "schema_version": 2, "required_free_bytes": 1 << 20,
                "files": [{"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": mode}
                          for name, (data, mode) in files.items()]}
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        text = json.dumps(manifest).encode()
        head = tarfile.TarInfo("manifest.json")
        head.size = len(text)
        tar.addfile(head, io.BytesIO(text))
        folder = tarfile.TarInfo("payload/bin")
        folder.type, folder.mode, folder.uid, folder.gid = tarfile.DIRTYPE, 0o3777, HOSTILE_OWNER, HOSTILE_OWNER
        tar.addfile(folder)
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, HOSTILE_OWNER, HOSTILE_OWNER
            info.uname = info.gname = "mallory"
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return path


def _transfer(root: Path, package: PackageInfo) -> FakeContext:
    ctx = fake_context(root, package, "run-t")
    plugin = LoadedPlugin.from_entry_point("dr-core")
    for step in ("upload_package", "unpack_package"):
        plugin.invoke("run_step", ctx, stage=Stage.TRANSFER, step=step, in_process=True)
    return ctx


FILES = {"payload/bin/tool": (b"#!/bin/sh\necho hi\n", 0o4777), "payload/VERSION": (b"2.0.0\n", 0o666),
         "payload/lib/x.py": (b"x = 1\n", 0o2640)}


def test_unpack_normalises_modes_and_owners(tmp_path: Path) -> None:
    """setuid/setgid/sticky and group/world write are dropped and files belong to the unpacking user."""
    root = tmp_path / "root"
    root.mkdir()
    package = package_info(_package(tmp_path / "drproduct-2.0.0.tar.gz", FILES), tmp_path / "incoming")
    _transfer(root, package)
    staged = root / "staging" / "2.0.0" / "payload"
    modes = {name: stat.S_IMODE((staged.parent / name).stat().st_mode) for name in FILES}
    assert modes == {"payload/bin/tool": 0o755, "payload/VERSION": 0o644, "payload/lib/x.py": 0o640}
    assert stat.S_IMODE((staged / "bin").stat().st_mode) == 0o755
    for path in [staged, *staged.rglob("*")]:
        assert path.lstat().st_uid == os.getuid() != HOSTILE_OWNER, path


def test_unpack_refuses_a_link_the_controller_did_not_see(tmp_path: Path) -> None:
    """An archive that unpacks a symbolic link (not the verified one) fails the step, not retryable."""
    root = tmp_path / "root"
    root.mkdir()
    link = tarfile.TarInfo("payload/bin/sh")
    link.type, link.linkname = tarfile.SYMTYPE, "/bin/sh"
    package = package_info(_package(tmp_path / "drproduct-2.0.0.tar.gz", FILES, (link,)), tmp_path / "incoming")
    with pytest.raises(StepFailed) as caught:
        _transfer(root, package)
    assert "payload/bin/sh" in caught.value.message and not caught.value.retryable
    assert not (root / "staging" / "2.0.0").exists()
