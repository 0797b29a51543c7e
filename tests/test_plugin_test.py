"""``drhost plugin-test`` passes the department plugins and the scaffold, each in its own isolation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plugin_test_helpers import failures, plugin_test, results

pytestmark = [pytest.mark.podman, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]

#: plugin -> (its source tree, the isolation its class gets by default)
DEPARTMENT = {
    "dr-core": ("platform-core", "thread"),
    "dr-database": ("dba-database", "process"),
    "dr-catalog": ("ops-catalog", "process"),
    "dr-monitoring": ("vendor-monitoring", "container"),
}


class _Reports(dict[str, tuple[int, dict[str, Any]]]):
    """plugin-test of a department plugin, run when a test first asks for it (the tests of one plugin share a
    worker: tests/xdist_scopes.py)."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self._factory = factory

    def __missing__(self, plugin: str) -> tuple[int, dict[str, Any]]:
        self[plugin] = plugin_test(plugin, tmp=self._factory.mktemp(plugin))
        return self[plugin]


@pytest.fixture(scope="module")
def department_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, dict[str, Any]]]:
    """plugin-test of each department plugin, run at most once per worker: (exit code, report)."""
    return _Reports(tmp_path_factory)


@pytest.mark.parametrize("plugin", sorted(DEPARTMENT))
def test_department_plugin_passes_with_its_companions(
        department_reports: dict[str, tuple[int, dict[str, Any]]], plugin: str) -> None:
    """Every department plugin passes every check, run with the other three as in a real run."""
    code, report = department_reports[plugin]
    assert failures(report) == {}
    assert code == 0
    assert report["isolation"] == DEPARTMENT[plugin][1]
    assert sorted(report["companions"]) == sorted(set(DEPARTMENT) - {plugin})
    assert report["kept"] is None, "a passing test leaves nothing behind"
    ran = {c["subject"] for c in results(report, "runs", "pass")}
    assert all("/" in subject for subject in ran) and len(ran) >= 3
    # Every stage the plugin takes part in had its rollback checked against the snapshots.
    stages = {subject.split("/")[0] for subject in ran}
    assert {c["subject"] for c in results(report, "rollback_restores", "pass")} == stages
    assert results(report, "idempotent", "pass")
    assert results(report, "timeout_behaviour", "pass")


def test_dr_core_non_retryable_steps_are_cut_cleaned_and_restarted(
        department_reports: dict[str, tuple[int, dict[str, Any]]]) -> None:
    """dr-core's four non-retryable upgrade steps each get a cut run, the stage's cleanup and a restart."""
    code, report = department_reports["dr-core"]
    assert code == 0
    cut = {c["subject"] for c in results(report, "timeout_behaviour", "pass") if "restarted stage" in c["reason"]}
    assert cut == {"upgrade/install_program_files", "upgrade/register_services", "upgrade/init_core_config",
                   "upgrade/update_licence"}
    assert "upgrade" in {c["subject"] for c in results(report, "cleanup_no_residue", "pass")}


def test_source_tree_of_an_installed_plugin_is_installed_privately_and_tested(tmp_path: Path) -> None:
    """Given a source directory, plugin-test builds it with pip into its own directory and tests that build."""
    code, report = plugin_test(REPO / "department_plugins" / "ops-catalog", tmp=tmp_path)
    assert code == 0, failures(report)
    (install,) = results(report, "install", "pass")
    assert "drhost-plugin-ops-catalog 1.0.0 built and installed into" in install["reason"]
    assert report["plugin"] == "dr-catalog"


@pytest.mark.parametrize("plugin_class", ["core", "business", "database", "third_party"])
def test_generated_plugin_passes_as_generated(tmp_path: Path, plugin_class: str) -> None:
    """`drhost plugin new NAME --class CLASS` gives a plugin that passes plugin-test untouched."""
    from drhost.authoring import new_plugin

    name = f"acme-{plugin_class.replace('_', '')}"
    result = new_plugin(name, plugin_class, tmp_path / name)
    code, report = plugin_test(result.directory, tmp=tmp_path / "work")
    assert failures(report) == {}
    assert code == 0
    assert report["class"] == plugin_class
    assert {c["subject"] for c in results(report, "rollback_restores", "pass")} >= {"upgrade"}
    assert results(report, "cleanup_no_residue", "pass")


def test_text_report_has_one_line_per_check_and_a_summary(tmp_path: Path) -> None:
    """Without --json every check is a PASS/FAIL/skip line and the last line sums them up."""
    import os

    proc = subprocess.run([sys.executable, "-m", "drhost", "plugin-test", "dr-catalog", "--alone"],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert any(line.startswith("PASS  idempotent") for line in lines)
    assert lines[-1].startswith("dr-catalog 1.0.0 (drhost-plugin-ops-catalog, class business, isolation process)")
    assert " failed" in lines[-1] and "0 failed" in lines[-1]
