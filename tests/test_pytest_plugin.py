"""The pytest plugin for plugin authors: its fixtures, loaded through the entry point in a pytest of their own."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest
from pip_helpers import pip_build_flags

from drhost.authoring import new_plugin

pytest_plugins = ["pytester"]

PLUGIN = "acme-audit"
BROKEN = "acme-broken"
MISSING_MODULE = "acme_missing_dependency"
PIP_TIMEOUT_S = 300
#: What an author's pytest run may take here; generous for a busy CI machine, the runs take seconds.
RUN_TIMEOUT_S = 120

AUTHOR_TESTS = '''
"""acme-audit's tests as its author writes them, with drhost's fixtures."""

import os

import drplugin_acme_audit as plugin
import pytest
from drhost.config import load_config
from drhost.policy import class_policy, retry_wait_s
from drhost_hookspecs import PluginClass, Stage, VerifyPhase


def marker(target):
    return target.root / "var" / "acme-audit" / "upgraded-to"


def test_steps_run_in_the_plugins_isolation(drhost_runner, drhost_target, drhost_session):
    """precheck and upgrade run in a worker process; the marker holds 2.0.0 until the rollback."""
    assert drhost_runner.isolation == "process"
    precheck = drhost_runner.run_step("precheck", "check_marker_dir_writable")
    assert precheck.ok, precheck.message
    assert not marker(drhost_target).exists()
    upgrade = drhost_runner.run_step(Stage.UPGRADE, "record_upgrade")
    assert upgrade.ok, upgrade.message
    assert marker(drhost_target).read_text() == "2.0.0\\n"
    launched = drhost_session.events_named("worker.launched")
    assert [event.data["isolation"] for event in launched] == ["process"]
    assert launched[0].data["pid"] != os.getpid()
    assert drhost_runner.verify("upgrade", "completed") == []
    assert drhost_runner.rollback("upgrade") == []
    assert not marker(drhost_target).exists()
    assert drhost_runner.verify(Stage.UPGRADE, VerifyPhase.ROLLED_BACK) == []


def test_a_step_function_called_with_the_hosts_context(drhost_context, drhost_target, drhost_session):
    """record_upgrade called in the test with a real Context writes the marker; its checkpoint reaches the run."""
    assert type(drhost_context).__name__ == "HostContext"
    assert drhost_context.target.install_root == str(drhost_target.root)
    assert drhost_context.package.remote_path.startswith(f"{drhost_target.root}/staging/")
    plugin.record_upgrade(drhost_context)
    assert marker(drhost_target).read_text() == "2.0.0\\n"
    assert [event.message for event in drhost_session.events_named("plugin.log")] == [
        f"{marker(drhost_target)} records version 2.0.0"]
    undone = drhost_session.call("acme-audit", "rollback_step", stage=Stage.UPGRADE, step="record_upgrade")
    assert undone.ok, undone.message
    assert not marker(drhost_target).exists()


def test_retries_do_not_wait_with_the_fixture(drhost_instant_retries):
    """Within drhost_instant_retries a retry waits 0 s, and processes started inherit it."""
    config = load_config([], []).data
    assert retry_wait_s(class_policy(config, PluginClass.BUSINESS), config) == 0
    assert os.environ["DRHOST_INSTANT_RETRIES"] == "1"


def test_retries_wait_without_the_fixture():
    """Without the fixture a retry waits its class's interval: the setting ended with the test before."""
    config = load_config([], []).data
    assert retry_wait_s(class_policy(config, PluginClass.BUSINESS), config) > 0


def test_runs_stay_in_the_private_state_dir(drhost_session, drhost_state_dir):
    """The session's run lives in drhost_state_dir, which is DRHOST_STATE_DIR for the test."""
    assert os.environ["DRHOST_STATE_DIR"] == str(drhost_state_dir)
    assert drhost_session.run_dir.is_relative_to(drhost_state_dir)


@pytest.mark.drhost_companions("dr-core")
def test_companions_join_the_plan(drhost_session, drhost_runner):
    """A companion named by the marker is planned with the plugin under test; the runner keeps to its own steps."""
    assert sorted(entry.name for entry in drhost_session.plan.plugins) == ["acme-audit", "dr-core"]
    assert [step.name for step in drhost_runner.steps("upgrade")] == ["record_upgrade"]
'''

CHOSEN_TESTS = '''
"""Which plugin is under test: the ini option, a marker, or the error that says how to name one."""

import pytest


def test_the_ini_option_names_the_plugin(drhost_runner):
    """The plugin named by the drhost_plugin ini option is the one the runner drives."""
    assert drhost_runner.name == "acme-broken"


@pytest.mark.drhost_plugin("acme-audit")
def test_a_marker_names_another_plugin(drhost_runner):
    """The marker chooses acme-audit; the broken plugin named by the ini option is not loaded."""
    outcome = drhost_runner.run_step("precheck", "check_marker_dir_writable")
    assert (drhost_runner.name, outcome.ok) == ("acme-audit", True), outcome.message
'''

NAMELESS_TESTS = '''
"""A test that needs the plugin under test, in a project that names none."""


def test_needs_the_plugin(drhost_plugin_name):
    """Any test using the fixtures needs a plugin under test."""
    assert drhost_plugin_name
'''


def pip_install(sources: Sequence[Path], target: Path) -> Path:
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-deps", *pip_build_flags(), "--target", str(target), *map(str, sources)],
                          capture_output=True, text=True, timeout=PIP_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


@pytest.fixture(scope="module")
def good_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """acme-audit (class business, so a worker process) as `drhost plugin new` writes it, installed by pip."""
    base = tmp_path_factory.mktemp("good")
    new_plugin(PLUGIN, "business", base / "source", department="audit")
    return pip_install([base / "source"], base / "site")


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """acme-broken: a generated plugin whose module imports a module that is not installed."""
    base = tmp_path_factory.mktemp("broken")
    source = base / "source"
    result = new_plugin(BROKEN, "business", source, department="audit")
    module = source / "src" / result.module / "__init__.py"
    module.write_text(module.read_text() + f"\nimport {MISSING_MODULE}  # noqa: E402\n")
    return pip_install([source], base / "site")


def processes_under(root: Path) -> list[psutil.Process]:
    """Processes (this one excepted: pytester runs it in ``root``) started in or about ``root``."""
    text = str(root)
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        if proc.pid == os.getpid():
            continue
        cmdline = " ".join(proc.info.get("cmdline") or [])
        cwd = proc.info.get("cwd") or ""
        if text in cmdline or cwd.startswith(text):
            found.append(proc)
    return found


@pytest.fixture
def author(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.Pytester]:
    """A project directory whose pytest runs see no state directory or retry setting of this test run."""
    for key in ("DRHOST_STATE_DIR", "DRHOST_INSTANT_RETRIES", "DRHOST_LOAD_PLUGINS", "PYTHONPATH"):
        monkeypatch.delenv(key, raising=False)
    # Where drhost would keep its state without DRHOST_STATE_DIR: the fixtures must leave it alone.
    monkeypatch.setenv("XDG_STATE_HOME", str(pytester.path / "user-state"))
    yield pytester
    # A test that found daemons left running must not leave them to the next one.
    for proc in processes_under(pytester.path):
        with contextlib.suppress(psutil.Error):
            proc.kill()


def run_author_pytest(author: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *sites: Path) -> pytest.RunResult:
    """pytest in a fresh interpreter, as the author runs it, with ``sites`` (installed plugins) on its path."""
    if sites:
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(map(str, sites)))
    else:
        monkeypatch.delenv("PYTHONPATH", raising=False)
    return author.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=RUN_TIMEOUT_S)


@pytest.mark.slow
def test_author_tests_drive_the_plugin_through_drhost(author: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                      good_site: Path) -> None:
    """An author's tests pass with every fixture (the sole non-drhost plugin under test); nothing outlives the run."""
    author.makepyfile(test_acme=AUTHOR_TESTS)
    result = run_author_pytest(author, monkeypatch, good_site)
    result.assert_outcomes(passed=6)
    assert [" ".join(proc.info.get("cmdline") or []) for proc in processes_under(author.path)] == []
    assert not (author.path / "user-state").exists()


def test_the_plugin_is_named_by_ini_or_marker_and_a_broken_one_fails_with_its_error(
        author: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, good_site: Path, broken_site: Path) -> None:
    """A broken plugin under test fails the setup with its own import error; a marker overrides the ini option."""
    author.makepyprojecttoml(f'[tool.pytest.ini_options]\ndrhost_plugin = "{BROKEN}"\n')
    author.makepyfile(test_chosen=CHOSEN_TESTS)
    result = run_author_pytest(author, monkeypatch, good_site, broken_site)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at setup of test_the_ini_option_names_the_plugin*",
        f"drhost: the plugin under test {BROKEN} is broken: *ModuleNotFoundError: No module named "
        f"'{MISSING_MODULE}'*",
    ])
    assert "KeyError" not in result.stdout.str()


def test_without_a_name_the_error_says_what_to_set(author: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                   good_site: Path, broken_site: Path) -> None:
    """With no name given and no single plugin besides drhost's own, setup fails saying how to name one."""
    author.makepyfile(test_nameless=NAMELESS_TESTS)
    how = '*set drhost_plugin = "NAME" under [[]tool.pytest.ini_options[]]*@pytest.mark.drhost_plugin("NAME")*'
    none = run_author_pytest(author, monkeypatch)
    none.assert_outcomes(errors=1)
    none.stdout.fnmatch_lines(["drhost: which plugin is under test? none is installed besides drhost's own *" + how])
    several = run_author_pytest(author, monkeypatch, good_site, broken_site)
    several.assert_outcomes(errors=1)
    several.stdout.fnmatch_lines([f"drhost: which plugin is under test? several installed plugins could be the "
                                  f"one under test ({PLUGIN}, {BROKEN})*" + how])
