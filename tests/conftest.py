"""Shared fixtures: an isolated state dir, the drhost CLI as a real subprocess, target inspection."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pip_helpers import builds_wheels_here

from cli_helpers import CLI_TIMEOUT_S, TargetProbe, demo_roots, pids_under
from sshd_hosts import LoginUser, SshHost
from worker_helpers import close_open_runners
from xdist_scopes import SuiteScheduling, longest_first

pytest_plugins = ["suite_timeline"]


def pytest_configure(config: pytest.Config) -> None:
    """The product's tools run on this interpreter; under PYTHONDONTWRITEBYTECODE, the suite's Python processes
    keep their bytecode in a private directory of this session (never in a source tree)."""
    if hasattr(config, "workerinput"):
        return
    # The demo product's tools start with `#!/usr/bin/env python3`: with a version manager's shim first on PATH
    # (pyenv's is a bash script that runs `pyenv exec`) every tool run costs half a second of shell, and a demo
    # upgrade runs some sixty of them. The interpreter running the suite goes first, as an activated venv does.
    bin_dir = os.path.dirname(sys.executable)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    # `drhost plugin-test DIR` builds the plugin with pip. An isolated build environment (pip's default) installs
    # setuptools afresh for every build, some 1.5-2 s of CPU each, over thirty builds a run; this environment has
    # a build backend, so pip uses it. (pip reads PIP_NO_BUILD_ISOLATION inverted: "0" turns isolation off.)
    # The quick start test runs pip as an author would, isolated.
    if builds_wheels_here():
        os.environ.setdefault("PIP_NO_BUILD_ISOLATION", "0")
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return
    # The suite starts thousands of Python processes that import drhost (controllers, plugin workers); without
    # bytecode each one compiles drhost again, some 120 ms of CPU, and the CPU is what the suite is short of.
    prefix = tempfile.mkdtemp(prefix="drhost-tests-pycache-")
    # Readable by the worker user too (process workers import drhost_hookspecs as drhost-worker); only we write.
    os.chmod(prefix, 0o755)
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    config.add_cleanup(lambda: shutil.rmtree(prefix, ignore_errors=True))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> SuiteScheduling:
    """Spread the suite over xdist workers by the scopes of tests/xdist_scopes.py."""
    return SuiteScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest scopes first; each scope's tests stay together and in order."""
    items[:] = [items[index] for index in longest_first([item.nodeid for item in items])]


@pytest.fixture(autouse=True)
def _runners_closed() -> Iterator[None]:
    """Every worker runner a test made with worker_helpers.process_runner is closed after it."""
    yield
    close_open_runners()


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private DRHOST_STATE_DIR; afterwards no process may be left running from it."""
    path = tmp_path / "state"
    path.mkdir()
    monkeypatch.setenv("DRHOST_STATE_DIR", str(path))
    monkeypatch.setenv("DRHOST_INSTANT_RETRIES", "1")
    yield path
    for pid in pids_under(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    from drhost.demo.bastion import remove_recorded
    from drhost.demo.sshd import login_keys_under

    for record in path.glob("demo/*/bastion-net/network.json"):  # a kept or killed demo behind a bastion
        remove_recorded(json.loads(record.read_text()))
    for keys in login_keys_under(path):  # and its hosts' login keys
        keys.unlink(missing_ok=True)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory for throwaway plugin distributions (plugin_factory), on sys.path and on workers' PYTHONPATH.

    Readable by the unprivileged worker user (process workers drop to it before importing a plugin), with a
    description cache of its own, so that no test sees another's cached descriptions.
    """
    path = tmp_path / "site"
    path.mkdir()
    path.chmod(0o755)
    monkeypatch.syspath_prepend(str(path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("DRHOST_CACHE_DIR", str(tmp_path / "cache"))
    importlib.invalidate_caches()
    return path


@pytest.fixture
def leftover_processes() -> Callable[[Path], list[int]]:
    return pids_under


@pytest.fixture
def drhost(state_dir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real ``drhost`` command (``python -m drhost``) with the test's state dir."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT_S,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "DRHOST_STATE_DIR": str(state_dir), "DRHOST_INSTANT_RETRIES": "1", **(env or {})}
        return subprocess.run([sys.executable, "-m", "drhost", *args], capture_output=True, text=True,
                              timeout=timeout, env=full_env, input=input, stdin=None if input else subprocess.DEVNULL)

    return run


@pytest.fixture
def probes() -> Callable[[Path], list[TargetProbe]]:
    return lambda state_dir: [TargetProbe(root) for root in demo_roots(state_dir)]



@pytest.fixture(scope="session")
def fresh_seed_jobs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, ...]]:
    """The job rows of a fresh 1.0.0 install (what every demo target starts with)."""
    from drhost.demo import install
    from drhost.packaging import build_package

    base = tmp_path_factory.mktemp("seed")
    install.install_fresh(build_package("1.0.0", base), base / "R", install.free_port())
    return TargetProbe(base / "R").jobs()


@pytest.fixture
def login_user() -> Iterator[LoginUser]:
    """A fresh account with passwordless sudo, removed (with its sudoers drop-in and home) afterwards."""
    from drhost.demo.sshd import ensure_login_user, remove_login_user

    user = LoginUser(f"drt-{secrets.token_hex(4)}")
    ensure_login_user(user.name)
    try:
        yield user
    finally:
        remove_login_user(user.name)


@pytest.fixture
def password_login_user() -> Iterator[LoginUser]:
    """A fresh account whose sudo asks for a password (a random one), removed afterwards."""
    from drhost.demo.sshd import ensure_login_user, remove_login_user

    user = LoginUser(f"drt-{secrets.token_hex(4)}", secrets.token_urlsafe(18))
    ensure_login_user(user.name, password=user.password)
    try:
        yield user
    finally:
        remove_login_user(user.name)


def _one_sshd(directory: Path, login_user: str | None = None) -> Iterator[SshHost]:
    from sshd_hosts import sshd_available, start_hosts

    ok, why = sshd_available()
    if not ok:
        pytest.skip(why)
    (sshd,) = start_hosts(directory, 1, login_user=login_user)
    try:
        yield sshd
    finally:
        sshd.stop()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[SshHost]:
    """A real sshd on loopback for this test (root login, key only), under ``tmp_path/hosts``; skipped where
    no sshd can run. A file whose tests share one host for speed defines its own, module-scoped ``host``."""
    yield from _one_sshd(tmp_path / "hosts")


@pytest.fixture
def login_host(tmp_path: Path, login_user: LoginUser) -> Iterator[SshHost]:
    """A real sshd on loopback that refuses root login and lets ``login_user`` in (sudo to root)."""
    yield from _one_sshd(tmp_path, login_user.name)
