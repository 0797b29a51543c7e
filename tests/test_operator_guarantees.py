"""What an operator can rely on: idempotent re-runs, refused packages, clear config errors, broken plugins."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import TargetProbe, run_json
from product_helpers import repack
from state_rows import read_state

pytestmark = [pytest.mark.podman, pytest.mark.slow, pytest.mark.integration]

Run = Callable[..., subprocess.CompletedProcess[str]]
TARGETS = ["dr-demo-1", "dr-demo-2", "dr-demo-3"]
QUIET = ("--set", "run.forks=3")


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def fingerprint(root: Path) -> dict[str, Any]:
    """What an upgrade could change on a target: releases, the current link, config, catalog, the daemon."""
    files = {}
    for sub in ("etc", "data", "releases"):
        for path in sorted((root / sub).rglob("*")):
            if path.is_file() and not path.is_symlink():
                files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    health = TargetProbe(root).health()
    return {"current": os.readlink(root / "current"), "files": files,
            "backups": sorted(p.name for p in (root / "backup").glob("*")) if (root / "backup").exists() else [],
            "daemon": (health or {}).get("pid"), "version": (health or {}).get("version")}


def assert_single_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr}"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert proc.stdout == ""


def write_inventory(path: Path, roots: list[Path]) -> Path:
    path.write_text("".join(f"[target:{name}]\ntransport = local\nroot = {root}\n\n"
                            for name, root in zip(TARGETS, roots, strict=True)))
    return path


def test_rerun_on_upgraded_targets_is_up_to_date(drhost: Run, state_dir: Path, tmp_path: Path) -> None:
    """Upgrading targets already at 2.0.0 again changes nothing on them and reports up_to_date."""
    first = drhost("upgrade", "--demo", "--json", "--keep", *QUIET)
    assert first.returncode == 0, first.stderr[-3000:]
    roots = [Path(r) for r in read_state(Path(run_json(first)["run_dir"]))["demo"]["roots"]]
    before = {str(r): fingerprint(r) for r in roots}
    assert {f["version"] for f in before.values()} == {"2.0.0"}
    inventory = write_inventory(tmp_path / "inv.ini", roots)
    package = state_dir / "demo" / "packages" / "drproduct-2.0.0.tar.gz"

    again = drhost("upgrade", "-i", str(inventory), "--package", str(package), "--json", *QUIET)
    summary = run_json(again)
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary["status"] == "succeeded"
    assert {n: (t["status"], t["version"]) for n, t in summary["targets"].items()} == \
        {n: ("up_to_date", "2.0.0") for n in TARGETS}
    assert {str(r): fingerprint(r) for r in roots} == before
    events = read_events(Path(summary["run_dir"]))
    assert sorted(e["target"] for e in events if e["event"] == "target.up_to_date") == TARGETS
    assert not [e for e in events if e["event"] == "step.started"]


def test_package_not_upgrading_from_installed_version_is_refused(drhost: Run, state_dir: Path,
                                                                 tmp_path: Path) -> None:
    """A package that does not list the installed version in upgrades_from is refused by precheck; nothing changes."""
    base = drhost("plan", "--demo", "--json")  # builds the demo packages
    assert base.returncode == 0, base.stderr
    original = state_dir / "demo" / "packages" / "drproduct-2.0.0.tar.gz"
    if not original.exists():
        from drhost.packaging import build_package

        original = build_package("2.0.0", tmp_path)
    (tmp_path / "variant").mkdir()
    variant = repack(original, tmp_path / "variant" / "drproduct-2.0.0.tar.gz",
                     edit_manifest=lambda m: m.update(upgrades_from=["1.5.0"]))

    proc = drhost("upgrade", "--demo", "--json", "--keep", "--package", str(variant), *QUIET)
    summary = run_json(proc)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert summary["status"] == "rolled_back"
    run_dir = Path(summary["run_dir"])
    state = read_state(run_dir)
    events = read_events(run_dir)
    for name, root in zip(TARGETS, [Path(r) for r in state["demo"]["roots"]], strict=True):
        record = state["targets"][name]
        assert record["status"] == "rolled_back"
        assert record["stages"]["precheck"] == "failed"
        assert all(v == "pending" for k, v in record["stages"].items() if k != "precheck")
        messages = [e["message"] for e in record["errors"]]
        assert any("1.0.0" in m and "2.0.0" in m and "1.5.0" in m for m in messages), messages
        # Non-retryable: one attempt only.
        assert record["steps"]["precheck/dr-core/check_installed_version"]["attempts"] == 1
        probe = TargetProbe(root)
        assert probe.current_version == "1.0.0"
        assert not (root / "releases" / "2.0.0").exists()
        assert probe.schema() == 1
        health = probe.health()
        assert health is not None and (health["status"], health["version"]) == ("ok", "1.0.0")
    assert not [e for e in events if e["event"] == "step.started" and e.get("stage") != "precheck"]


def test_bad_setting_is_one_line_usage_error(drhost: Run) -> None:
    """A wrongly typed --set value exits 2 with one line naming where it came from and the key; no traceback."""
    assert_single_line_error(drhost("upgrade", "--demo", "--set", "class.core.retries=three"),
                             "--set", "class.core.retries", "integer", "three")


def test_unknown_ini_section_is_one_line_usage_error(drhost: Run, tmp_path: Path) -> None:
    """An unknown section in an INI file exits 2 with one line naming the file and the section."""
    config = tmp_path / "extra.ini"
    config.write_text("[run]\nforks = 2\n\n[bogus]\nkey = 1\n")
    assert_single_line_error(drhost("upgrade", "--demo", "-c", str(config)), str(config), "[bogus]")


def test_unknown_plugin_section_is_one_line_usage_error(drhost: Run, tmp_path: Path) -> None:
    """A section for a plugin that is not installed exits 2 with one line naming file, section and key."""
    config = tmp_path / "extra.ini"
    config.write_text("[plugin:nope]\nfault = x:fail\n")
    assert_single_line_error(drhost("upgrade", "--demo", "-c", str(config)), str(config), "[plugin:nope]",
                             "fault", "nope")


def test_unknown_inventory_key_is_one_line_usage_error(drhost: Run, tmp_path: Path) -> None:
    """An unknown key in an inventory target section exits 2 naming the file, the section and the key."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text(f"[target:a]\ntransport = local\nroot = {tmp_path}\nbogus_key = 1\n")
    assert_single_line_error(drhost("plan", "-i", str(inventory)), str(inventory), "[target:a]", "bogus_key")


@pytest.fixture
def broken_plugin_env(tmp_path: Path) -> dict[str, str]:
    """PYTHONPATH with a distribution whose drhost plugin raises ImportError when imported."""
    site = tmp_path / "site"
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "broken_plugin.py").write_text('raise ImportError("broken_plugin needs libfoo, which is missing")\n')
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[drhost.plugins]\nbroken = broken_plugin\n")
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": path}


def test_broken_plugin_is_listed_with_its_error(drhost: Run, broken_plugin_env: dict[str, str]) -> None:
    """A plugin failing at import is listed as broken with its error; the other plugins stay ok."""
    proc = drhost("plugins", "list", "--json", env=broken_plugin_env)
    assert proc.returncode == 0, proc.stderr
    listed = {p["name"]: p for p in json.loads(proc.stdout)}
    assert listed["broken"]["status"] == "broken"
    assert "libfoo" in listed["broken"]["error"]
    assert {n: p["status"] for n, p in listed.items() if n != "broken"} == \
        {"dr-core": "ok", "dr-database": "ok", "dr-catalog": "ok", "dr-monitoring": "ok"}


def test_broken_plugin_refuses_run_unless_blocked(drhost: Run, state_dir: Path,
                                                  broken_plugin_env: dict[str, str]) -> None:
    """A broken plugin makes upgrade refuse (exit 7) before touching anything; -p no:broken runs fine."""
    refused = drhost("upgrade", "--demo", "--json", *QUIET, env=broken_plugin_env)
    assert refused.returncode == 7, refused.stderr
    assert "Traceback" not in refused.stderr
    assert "broken" in refused.stderr and "libfoo" in refused.stderr and "-p no:" in refused.stderr
    assert not list((state_dir / "demo").glob("*/*/opt/drproduct")), "refused run installed a demo"
    assert not (state_dir / "runs").exists() or not list((state_dir / "runs").iterdir())

    ran = drhost("upgrade", "--demo", "--json", "-p", "no:broken", *QUIET, env=broken_plugin_env)
    summary = run_json(ran)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert summary["status"] == "succeeded"
    state = read_state(Path(summary["run_dir"]))
    assert state["blocked_plugins"] == ["broken"]
    assert "broken" not in {p["name"] for p in state["plan"]["plugins"]}
    for root in [Path(r) for r in state["demo"]["roots"]]:
        assert TargetProbe(root).current_version == "2.0.0"


def test_empty_load_plugins_loads_none(drhost: Run, state_dir: Path) -> None:
    """DRHOST_LOAD_PLUGINS set to empty loads no plugin: all are not_allowed and a run is refused."""
    env = {"DRHOST_LOAD_PLUGINS": ""}
    proc = drhost("plugins", "list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert {p["name"] for p in listed} >= {"dr-core", "dr-database", "dr-catalog", "dr-monitoring"}
    assert {p["status"] for p in listed} == {"not_allowed"}
    refused = drhost("upgrade", "--demo", "--json", env=env)
    assert refused.returncode == 7, refused.stderr
    assert "no plugins to run" in refused.stderr and "Traceback" not in refused.stderr
    assert not list((state_dir / "demo").glob("*/*/opt/drproduct"))
