"""A fresh drproduct install made by copying a golden one is the install ``install_fresh`` makes."""

from __future__ import annotations

import filecmp
import json
import urllib.request
from pathlib import Path

import pytest

from drhost.demo import install
from product_helpers import build_all, daemon_pids, kill_leftovers, tool

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("packages"))


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a link's target, or the kind of entry."""
    return {str(p.relative_to(root)): (f"-> {p.readlink()}" if p.is_symlink() else "dir" if p.is_dir() else "file")
            for p in sorted(root.rglob("*"))}


def test_a_copy_of_a_golden_install_differs_from_a_fresh_one_only_in_port_and_service_entry(
        tmp_path: Path, packages: dict[str, Path]) -> None:
    """Same entries and bytes as install_fresh; its own port in the ini; its service entry names its own root."""
    fresh, copied, port = tmp_path / "fresh", tmp_path / "copied", install.free_port()
    install.install_fresh(packages["1.0.0"], fresh, port, seed_jobs=7)
    install.install_from_golden(packages["1.0.0"], copied, port, golden_dir=tmp_path / "golden", seed_jobs=7)
    assert tree(copied) == tree(fresh)
    service, licence = Path("etc/services/drproductd.json"), Path("etc/license.lic")
    for name, kind in tree(fresh).items():
        if kind == "file" and Path(name) not in (service, licence):
            assert filecmp.cmp(fresh / name, copied / name, shallow=False), name
    # A licence is signed with the time it was issued: the copy's is the golden install's, otherwise the same.
    issued = ("issued", "signature")
    assert ({k: v for k, v in json.loads((copied / licence).read_text()).items() if k not in issued}
            == {k: v for k, v in json.loads((fresh / licence).read_text()).items() if k not in issued})
    entry = json.loads((copied / service).read_text())
    assert str(copied) in json.dumps(entry) and str(fresh) not in json.dumps(entry)
    assert json.loads((fresh / service).read_text()) == json.loads(
        json.dumps(entry).replace(str(copied), str(fresh)))


def test_copies_run_side_by_side_on_their_own_ports(tmp_path: Path, packages: dict[str, Path]) -> None:
    """Two copies of one golden install start together, each on the port it was given, each its own daemon."""
    roots, ports = [tmp_path / "a", tmp_path / "b"], [install.free_port(), install.free_port()]
    try:
        for root, port in zip(roots, ports, strict=True):
            install.install_from_golden(packages["1.0.0"], root, port, golden_dir=tmp_path / "golden", seed_jobs=7)
            install.start(root)
        pids = [daemon_pids(root) for root in roots]
        assert all(len(p) == 1 for p in pids) and pids[0] != pids[1], pids
        for root, port in zip(roots, ports, strict=True):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
                assert json.loads(answer.read())["version"] == "1.0.0"
            assert json.loads(tool(root, "drproduct-license", "show").stdout)["valid"] is True
    finally:
        for root in roots:
            if (root / "current").exists():
                tool(root, "drproductctl", "stop", "--timeout", "5")
            kill_leftovers(root)


def test_a_started_install_or_a_used_place_is_not_copied(tmp_path: Path, packages: dict[str, Path]) -> None:
    """A source that has run (run/ or log/ written) or a destination with files in it is refused, nothing made."""
    source = tmp_path / "source"
    install.install_fresh(packages["1.0.0"], source, install.free_port(), seed_jobs=3)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep").write_text("mine")
    with pytest.raises(install.InstallError, match="not empty"):
        install.clone_fresh(source, tmp_path / "used", install.free_port())
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["keep"]
    (source / "log" / "drproductd.log").write_text("started once\n")
    with pytest.raises(install.InstallError, match="has been started"):
        install.clone_fresh(source, tmp_path / "other", install.free_port())
    assert not (tmp_path / "other").exists()
