"""Core plugins run inside drhost: whatever they print — at import, in a step, in a compensation, through print(),
sys.stdout, os.write(1, ...), a thread of their own or a child process — goes to stderr, never to stdout, so every
``--json`` command prints exactly one JSON document."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import CLI_TIMEOUT_S, pids_under
from drhost.cli import main
from plugin_factory import make_plugin, simple_plugin

pytestmark = pytest.mark.integration

NOISE = """
import os, subprocess, sys, threading

def noise(where):
    print(f"NOISE {where} print")
    sys.stdout.write(f"NOISE {where} sys.stdout\\n")
    sys.stdout.flush()
    sys.__stdout__.write(f"NOISE {where} sys.__stdout__\\n")
    sys.__stdout__.flush()
    os.write(1, f"NOISE {where} fd1\\n".encode())

noise("import")
"""
STEP = """
noise("step")
t = threading.Thread(target=noise, args=("thread",))
t.start()
t.join()
subprocess.run(["echo", "NOISE child"], check=True)
"""
ROLLBACK = """
@hookimpl
def drhost_rollback(stage, ctx):
    noise(f"rollback-{stage.value}")
"""
MARKS = ("NOISE import print", "NOISE import fd1", "NOISE step print", "NOISE step sys.stdout",
         "NOISE step sys.__stdout__", "NOISE step fd1", "NOISE thread print", "NOISE thread fd1", "NOISE child")


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a drhost whose core plugin 'zz-noisy' prints everywhere it can."""
    base = tmp_path_factory.mktemp("noisy")
    site, state_dir = base / "site", base / "state"
    state_dir.mkdir()
    make_plugin(site, "zz-noisy", NOISE + simple_plugin("zz-noisy", "core", STEP) + ROLLBACK)
    env = {**os.environ, "DRHOST_STATE_DIR": str(state_dir), "DRHOST_INSTANT_RETRIES": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    try:
        yield env
    finally:
        for pid in pids_under(state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def drhost(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "drhost", *args], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)


def one_document(proc: subprocess.CompletedProcess[str]) -> Any:
    """stdout parsed as exactly one JSON document (json.loads refuses anything around it)."""
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not one JSON document ({exc}):\n{proc.stdout[:3000]}\n"
                             f"stderr:\n{proc.stderr[-3000:]}") from None


@pytest.fixture(scope="module")
def upgraded(noisy: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return drhost(noisy, "upgrade", "--demo", "--demo-targets", "1", "--json")


@pytest.mark.podman
def test_upgrade_json_is_one_document_whatever_a_core_plugin_prints(
        upgraded: subprocess.CompletedProcess[str]) -> None:
    """upgrade --json: stdout is one JSON document; the run succeeded although its core plugin printed."""
    summary = one_document(upgraded)
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    assert summary["status"] == "succeeded"
    assert "NOISE" not in upgraded.stdout


@pytest.mark.podman
def test_what_a_core_plugin_prints_goes_to_stderr(upgraded: subprocess.CompletedProcess[str]) -> None:
    """Every way of printing — print, sys.stdout, sys.__stdout__, fd 1, its own thread, a child — ends on stderr."""
    for mark in MARKS:
        assert mark in upgraded.stderr, mark


@pytest.mark.podman
def test_rollback_json_is_one_document_while_compensations_print(
        noisy: dict[str, str], upgraded: subprocess.CompletedProcess[str]) -> None:
    """rollback --json of that run: the core plugin prints in every stage's rollback; stdout stays one document."""
    run_id = one_document(upgraded)["run_id"]
    proc = drhost(noisy, "rollback", run_id, "--json")
    summary = one_document(proc)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert summary["status"] == "rolled_back"
    assert "NOISE rollback-upgrade fd1" in proc.stderr and "NOISE" not in proc.stdout


@pytest.mark.parametrize("command", [("plan", "--demo", "--json"), ("plugins", "list", "--json"),
                                     ("status", "--json"), ("doctor", "--json")])
@pytest.mark.podman
def test_every_json_command_prints_one_document(noisy: dict[str, str], upgraded: subprocess.CompletedProcess[str],
                                                command: tuple[str, ...]) -> None:
    """plan, plugins list, status and doctor with --json: one JSON document, with the noisy plugin installed."""
    proc = drhost(noisy, *command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one_document(proc)
    assert "NOISE" not in proc.stdout


def test_in_process_main_writes_to_the_callers_stdout_and_restores_fd1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """main([...]) called in-process prints to the caller's sys.stdout (capsys sees it) and gives fd 1 back."""
    inventory = tmp_path / "ops.ini"
    inventory.write_text(f"[target:a]\ntransport = local\nroot = {tmp_path / 'a'}\n")
    before = os.fstat(1)
    assert main(["config", "check", str(inventory)]) == 0
    after = os.fstat(1)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    assert sys.stdout is not None and type(sys.stdout).__name__ != "RoutedStdout"
    assert ": ok (1 target(s): a" in capsys.readouterr().out
