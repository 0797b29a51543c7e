"""A plugin's state and results must be JSON: a value that is not fails THAT step at once (not retryable, named:
plugin, step, where and the type) in every class — process worker, container worker, core thread — and for
``ctx.checkpoint()`` too; the state the host last stored is kept, and the run goes on by its policy."""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import CLI_TIMEOUT_S, run_json
from drhost.supervisor import WorkerRunner
from drhost.supervisor._container import ContainerSandbox
from drhost_hookspecs import Stage, StepFailed
from drhost_hookspecs._runtime._protocol import JSON_VALUES, json_problem
from plugin_factory import make_plugin, simple_plugin
from state_rows import read_state
from worker_helpers import make_context, process_runner

SOCKET_STEP = """
import socket
ctx.state["ok"] = 1
ctx.checkpoint()
ctx.state["conn"] = socket.socket()
"""
NAN_CHECKPOINT_STEP = """
ctx.state["ratio"] = float("nan")
ctx.checkpoint()
"""
SET_RESULT = """
@hookimpl
def drhost_collect_context(ctx):
    return {"open_files": {"a", "b"}}
"""


def message_for(plugin: str, problem: str, step: str = "work") -> str:
    return f"plugin {plugin!r} step {step!r}: {problem}; {JSON_VALUES}"


@pytest.fixture
def runners() -> Iterator[list[WorkerRunner]]:
    made: list[WorkerRunner] = []
    yield made
    for runner in made:
        runner.close()


def worker(site: Path, runners: list[WorkerRunner], name: str, plugin_class: str, body: str,
           extra: str = "") -> WorkerRunner:
    make_plugin(site, name, simple_plugin(name, plugin_class, body) + extra)
    importlib.invalidate_caches()
    if plugin_class == "third_party":
        sandbox = ContainerSandbox(memory_mb=128, cpu_percent=50, nofile=128, pids_limit=32,
                                   label=f"run-test/{name}/t", message_limit=4 * 1024 * 1024)
        runner = WorkerRunner(name, sandbox=sandbox, logger=logging.getLogger("test.json"), grace_s=1.0)
    else:
        runner = process_runner(name, {"memory_bytes": 512 * 1024 * 1024, "nofile": 256, "core_bytes": 0})
    runners.append(runner)
    return runner


def run_work(runner: WorkerRunner, tmp_path: Path, state: dict[str, Any] | None = None,
             timeout_s: float = 60) -> Any:
    ctx = make_context(tmp_path)
    ctx.state.update(state or {})
    ctx.saved_state = dict(state or {})
    return runner.call("run_step", ctx, stage=Stage.UPGRADE, step="work", timeout_s=timeout_s)


CLASSES = ["business", pytest.param("third_party", marks=pytest.mark.skipif(
    shutil.which("podman") is None, reason="podman is not installed (apt-get install podman runc; .ci/run does)"))]


@pytest.mark.parametrize("plugin_class", CLASSES)
def test_worker_state_that_is_not_json_fails_the_step_at_once(
        tmp_path: Path, site: Path, runners: list[WorkerRunner], plugin_class: str) -> None:
    """A worker whose ctx.state holds a socket answers step_failed (not retryable) in seconds, not at the timeout."""
    name = f"zz-sock-{plugin_class.replace('_', '-')}"
    runner = worker(site, runners, name, plugin_class, SOCKET_STEP)
    runner.start()
    started = time.monotonic()
    outcome = run_work(runner, tmp_path, {"before": "kept"}, timeout_s=120)
    assert time.monotonic() - started < 20
    assert outcome.ended == "failed" and outcome.retryable is False
    assert outcome.message == message_for(name, "ctx.state['conn'] is a socket, which is not JSON")
    assert outcome.state == {"before": "kept", "ok": 1}  # what the checkpoint stored, not the socket
    assert runner.pid is not None  # the worker is fine and stays warm


@pytest.mark.parametrize("plugin_class", CLASSES)
def test_worker_checkpoint_of_nan_is_refused_naming_it(
        tmp_path: Path, site: Path, runners: list[WorkerRunner], plugin_class: str) -> None:
    """ctx.checkpoint() with NaN in the state fails the step, named; the host's stored state is unchanged."""
    name = f"zz-nan-{plugin_class.replace('_', '-')}"
    runner = worker(site, runners, name, plugin_class, NAN_CHECKPOINT_STEP)
    outcome = run_work(runner, tmp_path, {"before": 1})
    assert outcome.ended == "failed" and outcome.retryable is False
    assert "ctx.state['ratio'] is nan, which is not JSON (no NaN or Infinity)" in outcome.message
    assert outcome.message.startswith(f"plugin {name!r} step 'work': ")
    assert outcome.state == {"before": 1}


def test_worker_result_that_is_not_json_fails_the_call(tmp_path: Path, site: Path,
                                                       runners: list[WorkerRunner]) -> None:
    """A hook result holding a set fails that call at once, named, instead of hanging the host."""
    runner = worker(site, runners, "zz-set-result", "business", "pass", SET_RESULT)
    started = time.monotonic()
    outcome = runner.call("collect_context", make_context(tmp_path), timeout_s=120)
    assert time.monotonic() - started < 20
    assert outcome.ended == "failed" and outcome.retryable is False
    assert outcome.message == (f"plugin 'zz-set-result' collect context: the result['open_files'] is a set, "
                               f"which is not JSON; {JSON_VALUES}")


def test_core_checkpoint_of_a_non_json_value_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    """In a thread of the host, ctx.checkpoint() refuses a non-JSON state (StepFailed, not retryable)."""
    stored: list[dict[str, Any]] = []
    ctx = make_context(tmp_path)
    ctx._persist = stored.append  # type: ignore[method-assign]
    ctx.call = "plugin 'dr-x' step 'backup-db'"
    ctx.state["when"] = {"at": time}  # a module
    with pytest.raises(StepFailed) as raised:
        ctx.checkpoint()
    assert raised.value.retryable is False
    assert str(raised.value) == ("plugin 'dr-x' step 'backup-db': ctx.checkpoint(): ctx.state['when']['at'] is a "
                                 f"module, which is not JSON; {JSON_VALUES}")
    assert stored == []
    ctx.state["when"] = {"at": 12.5}
    ctx.checkpoint()
    ctx.state["when"]["at"] = 99  # changed in place after the checkpoint: the stored copy does not move
    assert stored == [{"when": {"at": 12.5}}] and ctx.saved_state == {"when": {"at": 12.5}}


@pytest.mark.parametrize(("value", "problem"), [
    ({"a": [1, {"b": {1, 2}}]}, "x['a'][1]['b'] is a set, which is not JSON"),
    ({"a": math.inf}, "x['a'] is inf, which is not JSON (no NaN or Infinity)"),
    ({3: "three"}, "x has the key 3, an int: JSON object keys are strings"),
    ({"e": ValueError("boom")}, "x['e'] is a ValueError, which is not JSON"),
])
def test_what_is_not_json_is_named_where_it_is(value: Any, problem: str) -> None:
    """The refusal names the path into the value and the offending type."""
    assert json_problem(value, "x") == problem


def test_json_values_pass_and_cycles_do_not() -> None:
    """Strings, numbers, booleans, None, lists, tuples and string-keyed dicts pass; a cycle is refused."""
    assert json_problem({"s": "x", "i": 1, "f": 1.5, "b": True, "n": None, "l": [1, (2, 3)], "d": {}}, "x") is None
    loop: list[Any] = []
    loop.append(loop)
    assert json_problem({"l": loop}, "x") == "x['l'][0] contains itself (a cycle), which is not JSON"


@pytest.mark.integration
@pytest.mark.podman
def test_core_plugin_with_a_socket_in_its_state_fails_its_step_and_the_run_ends(
        tmp_path: Path, state_dir: Path) -> None:
    """A real run: the core step fails once (not retried), the run rolls back and ends; its state stays JSON."""
    site = tmp_path / "site"
    make_plugin(site, "zz-sock-core", simple_plugin("zz-sock-core", "core", SOCKET_STEP))
    env = {**os.environ, "DRHOST_STATE_DIR": str(state_dir), "DRHOST_INSTANT_RETRIES": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "drhost", "upgrade", "--demo", "--demo-targets", "1", "--json"],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)
    summary = run_json(proc)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert summary["status"] == "rolled_back"
    body = read_state(Path(summary["run_dir"]))
    target = body["targets"]["dr-demo-1"]
    step = target["steps"]["upgrade/zz-sock-core/work"]
    assert step["status"] == "failed" and step["attempts"] == 1  # core retries 3 times, but not this
    assert step["message"] == message_for("zz-sock-core", "ctx.state['conn'] is a socket, which is not JSON")
    assert target["plugin_state"]["zz-sock-core"] == {"ok": 1}
    status = subprocess.run([sys.executable, "-m", "drhost", "status", summary["run_id"], "--json"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert json.loads(status.stdout)["status"] == "rolled_back"
