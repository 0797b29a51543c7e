"""dr-core's precheck refuses what it cannot upgrade, with messages an operator can act on."""

from __future__ import annotations

from pathlib import Path

import pytest
from drplugin_platform_core import _ini
from drplugin_platform_core.precheck import parse_df_available

from drhost.testing import DisposableTarget, FakeContext
from drhost_hookspecs import LoadedPlugin, PackageInfo, Stage, StepFailed, UpToDate
from plugin_harness import fake_context, make_harness, with_package


def _run(root: Path, package: PackageInfo, step: str, config: dict[str, object] | None = None) -> FakeContext:
    ctx = fake_context(root, package, "run-p", config)
    LoadedPlugin.from_entry_point("dr-core").invoke("run_step", ctx, stage=Stage.PRECHECK, step=step, in_process=True)
    return ctx


def test_records_old_version(drhost_target: DisposableTarget, package_v2: PackageInfo) -> None:
    """check_installed_version records the installed 1.0.0 as the version to return to."""
    assert _run(drhost_target.root, package_v2, "check_installed_version").state["old_version"] == "1.0.0"


def test_up_to_date_when_installed_is_package_version(drhost_target: DisposableTarget, package_v2: PackageInfo) -> None:
    """A target already at the package's version raises UpToDate, not a failure."""
    with pytest.raises(UpToDate) as caught:
        _run(drhost_target.root, with_package(package_v2, version="1.0.0"), "check_installed_version")
    assert caught.value.version == "1.0.0"


def test_refuses_version_not_in_upgrades_from(drhost_target: DisposableTarget, package_v2: PackageInfo) -> None:
    """An installed version the package does not upgrade from fails without retry, naming both."""
    with pytest.raises(StepFailed) as caught:
        _run(drhost_target.root, with_package(package_v2, upgrades_from=("0.9.0",)), "check_installed_version")
    assert not caught.value.retryable
    assert "1.0.0" in caught.value.message and "0.9.0" in caught.value.message


def test_disk_space_message_has_both_numbers(drhost_target: DisposableTarget, package_v2: PackageInfo) -> None:
    """Too little disk fails with the free and the required byte counts in the message."""
    huge = 10**18
    package = with_package(package_v2, manifest={**package_v2.manifest, "required_free_bytes": huge})
    with pytest.raises(StepFailed) as caught:
        _run(drhost_target.root, package, "check_disk_space")
    assert str(huge) in caught.value.message and "bytes free" in caught.value.message


def test_unhealthy_service_fails_precheck(drhost_target: DisposableTarget, package_v2: PackageInfo) -> None:
    """A stopped service fails check_service_healthy unless require_running_service is false."""
    harness = make_harness(drhost_target.root, package_v2)
    assert harness.tool("drproductctl", "stop").returncode == 0
    with pytest.raises(StepFailed):
        _run(drhost_target.root, package_v2, "check_service_healthy")
    ctx = _run(drhost_target.root, package_v2, "check_service_healthy", {"require_running_service": False})
    assert ctx.state["service_was_running"] is False


def test_df_parsing_takes_available_column() -> None:
    """The available column of df -Pk is read as KiB, also when the device name is long."""
    out = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/x 1000 400 600 40% /\n"
    assert parse_df_available(out) == 600 * 1024


def test_ini_set_value_keeps_other_lines_and_is_idempotent() -> None:
    """Setting an ini key adds only that line, keeps comments, and a second set changes nothing."""
    text = "# ops comment\n[service]\nport = 8123\n\n[catalog]\npath = data/catalog.db\n"
    once = _ini.set_value(text, "replication", "mode", "async")
    assert once.startswith(text) and "[replication]\nmode = async\n" in once
    assert _ini.set_value(once, "replication", "mode", "async") == once
    changed = _ini.set_value(once, "service", "port", "9000")
    assert "port = 9000" in changed and "port = 8123" not in changed and "# ops comment" in changed
