"""Shared fixtures: an isolated state dir, the drhost CLI as a real subprocess, target inspection."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import CLI_TIMEOUT_S, TargetProbe, demo_roots, pids_under

#: Test files that must not run beside each other (pytest-xdist): they share something machine-wide.
#: remote_hang: both start ``sleep 86400`` on their targets and assert that none is left on the machine.
SHARED_GROUPS = {
    "test_leftover_commands.py": "remote_hang",
    "test_timeout_diagnosis.py": "remote_hang",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One xdist group per test file (or per shared group above), for ``--dist loadgroup``.

    A file's tests then run in order on one worker: its module-scoped fixtures (sshd hosts, built packages,
    installed products) are made once, not once per worker, and its tests never race each other. tryfirst:
    xdist reads the groups in its own hook of the same name.
    """
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            name = item.path.name
            item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(name, str(item.path))))


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
