"""Tests of scaffold-name run by drhost: in its class's isolation, on a disposable target.

The fixtures come from drhost's pytest plugin, loaded wherever drhost is
installed; ``drhost_plugin`` in pyproject.toml names this plugin as the one
under test. Each test gets its own target: drproduct 1.0.0 installed in a
temporary directory with its daemon running, gone after the test.
"""

from __future__ import annotations

from typing import Protocol

import pytest
from drhost_hookspecs import Context, Stage, VerifyPhase

import drplugin_scaffold_name as plugin

# Without drhost there are no fixtures: a skip that says why reads better than "fixture not found".
pytest.importorskip("drhost.testing.pytest_plugin", reason="these tests run the plugin through drhost: install "
                    "the plugin into drhost's environment")


class Outcome(Protocol):
    """How one call ended, as drhost reports it (``drhost.supervisor.CallOutcome``)."""

    @property
    def ok(self) -> bool: ...

    @property
    def message(self) -> str: ...


class Runner(Protocol):
    """The ``drhost_runner`` fixture, as far as these tests use it.

    Spelled out here rather than imported from drhost so that mypy checks this
    file with drhost_hookspecs alone.
    """

    @property
    def isolation(self) -> str: ...

    def run_step(self, stage: Stage | str, step: str, *, timeout_s: float | None = None) -> Outcome: ...

    def rollback(self, stage: Stage | str) -> list[str]: ...

    def verify(self, stage: Stage | str, phase: VerifyPhase | str) -> list[str]: ...


def test_precheck_passes_in_the_plugins_isolation(drhost_runner: Runner, drhost_context: Context) -> None:
    """Run by drhost in the class's isolation, the precheck passes on a fresh install and creates nothing."""
    outcome = drhost_runner.run_step(Stage.PRECHECK, "check_marker_dir_writable")
    assert outcome.ok, f"{drhost_runner.isolation}: {outcome.message}"
    assert not drhost_context.exists(plugin.marker_dir(drhost_context))


def test_upgrade_writes_the_marker_and_rollback_removes_it(drhost_runner: Runner, drhost_context: Context) -> None:
    """Run by drhost, record_upgrade writes the new version and verifies; the stage's rollback removes it again."""
    marker = plugin.marker_file(drhost_context)
    outcome = drhost_runner.run_step(Stage.UPGRADE, "record_upgrade")
    assert outcome.ok, f"{drhost_runner.isolation}: {outcome.message}"
    assert drhost_context.read_text(marker) == drhost_context.package.version + "\n"
    assert drhost_runner.verify(Stage.UPGRADE, VerifyPhase.COMPLETED) == []
    assert drhost_runner.rollback(Stage.UPGRADE) == []
    assert not drhost_context.exists(marker)
    assert drhost_runner.verify(Stage.UPGRADE, VerifyPhase.ROLLED_BACK) == []


def test_record_upgrade_with_the_hosts_context(drhost_context: Context) -> None:
    """Called here with the Context drhost gives plugins, record_upgrade writes the marker and its undo removes it."""
    marker = plugin.marker_file(drhost_context)
    plugin.record_upgrade(drhost_context)
    assert drhost_context.read_text(marker) == drhost_context.package.version + "\n"
    plugin.undo_record_upgrade(drhost_context)
    assert not drhost_context.exists(marker)
