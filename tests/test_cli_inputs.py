"""Bad input to the CLI: one clear line naming the culprit, exit 2, and no run left half-created."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from state_rows import read_state


def runs(state_dir: Path) -> list[Path]:
    path = state_dir / "runs"
    return sorted(path.iterdir()) if path.exists() else []


def test_ssh_target_without_host_is_refused_before_a_run_exists(
        drhost: Callable[..., subprocess.CompletedProcess[str]], state_dir: Path, tmp_path: Path) -> None:
    """An ssh target with no host is refused by name before anything is created."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text("[target:db1]\ntransport = ssh\nroot = /opt/drproduct\n")
    proc = drhost("upgrade", "-i", str(inventory), "--package", str(tmp_path / "x.tar.gz"))
    assert proc.returncode == 2
    assert f"{inventory}: [target:db1] host" in proc.stderr and "over SSH" in proc.stderr
    assert "Traceback" not in proc.stderr and runs(state_dir) == []


def test_fault_for_an_unknown_step_is_refused(drhost: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """A drill naming a step the plugin does not have lists the steps it has."""
    proc = drhost("plan", "--demo", "--set", "plugin.dr-database.fault=upgrade_schema:fail")
    assert proc.returncode == 2
    assert "plugin.dr-database.fault" in proc.stderr and "upgrade_db_schema" in proc.stderr


@pytest.mark.podman
def test_missing_package_is_named(drhost: Callable[..., subprocess.CompletedProcess[str]], state_dir: Path,
                                  tmp_path: Path) -> None:
    """An upgrade without a usable package says which file, and creates nothing."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text(f"[target:a]\ntransport = local\nroot = {tmp_path / 'a'}\n")
    proc = drhost("upgrade", "-i", str(inventory), "--package", str(tmp_path / "missing.tar.gz"))
    assert proc.returncode == 2 and "missing.tar.gz" in proc.stderr and "no such file" in proc.stderr
    assert runs(state_dir) == []


@pytest.mark.podman
def test_garbage_package_is_refused(drhost: Callable[..., subprocess.CompletedProcess[str]], state_dir: Path,
                                    tmp_path: Path) -> None:
    """A file that is not a package is refused with its name, without a traceback."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text(f"[target:a]\ntransport = local\nroot = {tmp_path / 'a'}\n")
    bogus = tmp_path / "drproduct-2.0.0.tar.gz"
    bogus.write_bytes(b"not a tarball")
    proc = drhost("upgrade", "-i", str(inventory), "--package", str(bogus))
    assert proc.returncode == 2 and "drproduct-2.0.0.tar.gz" in proc.stderr and "Traceback" not in proc.stderr
    assert runs(state_dir) == []


def test_config_check_reports_ok_with_the_plan_size(drhost: Callable[..., subprocess.CompletedProcess[str]],
                                                    tmp_path: Path) -> None:
    """config check validates targets, plugins and timeouts and says what it found."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text("[target:a]\ntransport = local\nroot = /opt/a\n[timeouts]\nupgrade.stop_services = 60\n")
    proc = drhost("config", "check", str(inventory))
    assert proc.returncode == 0 and "1 target(s): a" in proc.stdout and "27 steps from 4 plugins" in proc.stdout
    inventory.write_text("[target:a]\ntransport = local\nroot = /opt/a\n[timeouts]\nupgrade.stop_service = 60\n")
    proc = drhost("config", "check", str(inventory))
    assert proc.returncode == 2 and "[timeouts] upgrade.stop_service" in proc.stderr


@pytest.mark.podman
def test_plan_into_a_closed_pipe_is_quiet(state_dir: Path) -> None:
    """drhost plan | head ends without a traceback."""
    proc = subprocess.run("python -m drhost plan --demo | head -1", shell=True, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.startswith("targets:") and "Traceback" not in proc.stderr


@pytest.mark.podman
@pytest.mark.slow
def test_an_upgrade_whose_console_reader_quits_goes_on_to_the_end(state_dir: Path) -> None:
    """drhost upgrade --plain 2>&1 | head -3: the closed console ends the output, not the upgrade."""
    proc = subprocess.run("python -m drhost upgrade --demo --demo-targets 1 --plain 2>&1 | head -3", shell=True,
                          capture_output=True, text=True, timeout=300)
    assert len(proc.stdout.splitlines()) == 3 and "Traceback" not in proc.stdout + proc.stderr
    (run_dir,) = (state_dir / "runs").iterdir()
    body = read_state(run_dir)
    assert body["status"] == "succeeded", body["targets"]["dr-demo-1"].get("errors")
    assert "console output stopped" in (run_dir / "debug.log").read_text()


@pytest.mark.podman
@pytest.mark.cgroups
def test_required_cgroups_are_checked_before_a_run(drhost: Callable[..., subprocess.CompletedProcess[str]],
                                                   state_dir: Path) -> None:
    """[process] cgroups = required is checked by plan: here the cgroups exist, so the plan is made."""
    proc = drhost("plan", "--demo", "--set", "process.cgroups=required")
    assert proc.returncode == 0 and "dr-catalog" in proc.stdout


@pytest.mark.slow
def test_unstartable_containers_refuse_the_run_unless_weaker_isolation_is_allowed(
        drhost: Callable[..., subprocess.CompletedProcess[str]], state_dir: Path) -> None:
    """Without a usable podman, third-party plugins never run unconfined silently: refused, or recorded."""
    proc = drhost("upgrade", "--demo", "--json", "--set", "container.podman=/nonexistent/podman")
    assert proc.returncode == 7 and "will not run unconfined" in proc.stderr
    assert "--allow-weaker-isolation" in proc.stderr
    assert runs(state_dir) == []
    proc = drhost("upgrade", "--demo", "--json", "--allow-weaker-isolation", "--set",
                  "container.podman=/nonexistent/podman")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "weaker isolation" in proc.stderr
    report = json.loads(drhost("status", "--json").stdout)
    assert "dr-monitoring" in report["weaker_isolation"]


@pytest.mark.podman
def test_demo_target_count_is_bounded_and_used(drhost: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """--demo-targets N plans N demo targets; 0, 51 and use without --demo are refused with exit 2."""
    proc = drhost("plan", "--demo", "--demo-targets", "5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "targets: " + ", ".join(f"dr-demo-{i}" for i in range(1, 6))
    for args in (("--demo", "--demo-targets", "0"), ("--demo", "--demo-targets", "51"), ("--demo-targets", "2")):
        refused = drhost("plan", *args)
        assert refused.returncode == 2 and "--demo-targets" in refused.stderr, (args, refused.stderr)
        assert "Traceback" not in refused.stderr
