"""The JSON-lines channel to a sandboxed worker: a misbehaving worker is a failed plugin, never a failed host."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytest

from drhost.supervisor import WorkerRunner
from drhost_hookspecs._runtime import PROTOCOL_VERSION
from worker_helpers import fake_worker, make_context, process_runner

LOG = logging.getLogger("test.worker")


def runner_for(tmp_path: Path, body: str, message_limit: int = 4 * 1024 * 1024) -> WorkerRunner:
    return process_runner("fake", command=fake_worker(tmp_path, body), message_limit=message_limit)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0


def test_garbage_on_stdout_fails_the_call(tmp_path: Path) -> None:
    """A worker that writes something that is not JSON ends as a protocol failure and is killed."""
    runner = runner_for(tmp_path, 'out.write(b"hello there, not json\\n"); out.flush(); import time; time.sleep(60)')
    outcome = runner.call("run_step", make_context(tmp_path), timeout_s=10)
    assert outcome.ended == "protocol"
    assert "not JSON" in outcome.message
    assert runner.pid is None


def test_unknown_message_type_fails_the_call(tmp_path: Path) -> None:
    """Valid JSON of an unknown shape is rejected too."""
    runner = runner_for(tmp_path, 'out.write(b\'{"type": "surprise"}\\n\'); out.flush(); import time; time.sleep(60)')
    outcome = runner.call("run_step", make_context(tmp_path), timeout_s=10)
    assert outcome.ended == "protocol" and "surprise" in outcome.message


def test_oversized_message_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    """A message over the size limit (here a 64 MiB line) is a protocol failure; the host stays small."""
    import psutil

    runner = runner_for(tmp_path, 'out.write(b\'{"type": "result", "id": 1, "result": "\' + b"x" * (64 * 1024 * 1024) '
                                  '+ b\'", "state": {}}\\n\'); out.flush()', message_limit=1024 * 1024)
    before = psutil.Process().memory_info().rss
    outcome = runner.call("run_step", make_context(tmp_path), timeout_s=30)
    grown = psutil.Process().memory_info().rss - before
    assert outcome.ended == "protocol" and "exceeds the limit" in outcome.message
    assert grown < 32 * 1024 * 1024


def test_exit_mid_message_is_a_crash(tmp_path: Path) -> None:
    """A worker that dies in the middle of a message ends as crashed, with how it died."""
    runner = runner_for(tmp_path, 'out.write(b\'{"type": "resu\'); out.flush(); os._exit(9)')
    outcome = runner.call("run_step", make_context(tmp_path), timeout_s=10)
    assert outcome.ended in ("crashed", "protocol")
    assert "exit code 9" in outcome.message or "cut off" in outcome.message


def test_silent_worker_is_killed_at_the_deadline(tmp_path: Path) -> None:
    """A worker that never answers is stopped at the deadline: its whole process group is gone."""
    runner = runner_for(tmp_path, 'import subprocess, time\nsubprocess.Popen(["sleep", "300"])\ntime.sleep(300)')
    ctx = make_context(tmp_path)
    started = time.monotonic()
    outcome = runner.call("run_step", ctx, timeout_s=1.0)
    assert outcome.ended == "timeout"
    assert outcome.detail.get("killed") is True
    assert time.monotonic() - started < 10
    assert ctx.cancelled


def test_stderr_flood_does_not_block_or_break_the_call(tmp_path: Path) -> None:
    """A worker flooding stderr (20 MiB) still gets its result through."""
    body = ('import sys\nfor _ in range(20 * 1024):\n    sys.stderr.write("y" * 1023 + "\\n")\nsys.stderr.flush()\n'
            'out.write(b\'{"type": "result", "id": 1, "result": 42, "state": {"k": 1}}\\n\'); out.flush()\n'
            'sys.stdin.readline()\n')
    runner = runner_for(tmp_path, body)
    outcome = runner.call("run_step", make_context(tmp_path), timeout_s=30)
    assert outcome.ok and outcome.result == 42 and outcome.state == {"k": 1}


def test_state_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    """The plugin state a worker returns must be a JSON object."""
    runner = runner_for(tmp_path, 'out.write(b\'{"type": "result", "id": 1, "result": null, "state": [1]}\\n\');'
                                  ' out.flush(); sys.stdin.readline()')
    outcome = runner.call("run_step", make_context(tmp_path), timeout_s=10)
    assert outcome.ended == "protocol"


def test_worker_that_cannot_start_is_reported(tmp_path: Path) -> None:
    """A worker dying before hello is a crashed call with the reason, and the next call starts a new one."""
    script = tmp_path / "dies.py"
    script.write_text("import sys; sys.exit(5)\n")
    runner = process_runner("fake", command=["python3", str(script)])
    outcome = runner.call("run_step", make_context(tmp_path), timeout_s=10)
    assert outcome.ended == "crashed" and "exit code 5" in outcome.message
    outcome = runner.call("run_step", make_context(tmp_path), timeout_s=10)
    assert runner.launches == 2


@pytest.mark.parametrize("limit", [64 * 1024])
def test_host_refuses_to_send_oversized_replies(tmp_path: Path, limit: int) -> None:
    """Requests from the worker are answered; a reply that would exceed the limit becomes an error reply."""
    big = tmp_path / "big.txt"
    big.write_text("z" * (8 * 1024 * 1024))
    body = (f'out.write(json.dumps({{"type": "request", "id": 1, "call_id": 1, "method": "read_text", '
            f'"args": {{"path": "{big}"}}}}).encode() + b"\\n"); out.flush()\n'
            'reply = json.loads(sys.stdin.readline())\n'
            'out.write(json.dumps({"type": "result", "id": 1, "result": "error" in reply, "state": {}}).encode()'
            ' + b"\\n"); out.flush()\nsys.stdin.readline()\n')
    runner = runner_for(tmp_path, body)
    outcome = runner.call("run_step", make_context(tmp_path), timeout_s=20)
    assert outcome.ok and outcome.result is True


def test_fields_of_the_wrong_type_are_refused(tmp_path: Path) -> None:
    """A message whose fields have the wrong JSON types (here a string id) is a protocol failure."""
    runner = runner_for(tmp_path, 'out.write(b\'{"type": "result", "id": "1", "result": 1, "state": {}}\\n\');'
                                  ' out.flush(); sys.stdin.readline()')
    outcome = runner.call("run_step", make_context(tmp_path), timeout_s=10)
    assert outcome.ended == "protocol" and "id must be int" in outcome.message


def stale_worker(tmp_path: Path, hello: dict[str, object]) -> list[str]:
    """A worker from another drhost: says ``hello`` (plus its pid), then waits for the host."""
    script = tmp_path / "stale_worker.py"
    script.write_text("import json, os, sys\n"
                      f"hello = {{**{hello!r}, 'type': 'hello', 'pid': os.getpid()}}\n"
                      "sys.stdout.buffer.write(json.dumps(hello).encode() + b'\\n'); sys.stdout.buffer.flush()\n"
                      "sys.stdin.readline()\n")
    return [sys.executable, str(script)]


@pytest.mark.parametrize(("hello", "speaks"), [
    ({"protocol": 999}, "speaks drhost protocol 999"),
    ({}, "names no drhost protocol in its hello (older than protocol 1)"),
    ({"protocol": "1"}, "speaks drhost protocol '1'"),
])
def test_worker_of_another_protocol_is_refused_with_one_message(
        tmp_path: Path, hello: dict[str, object], speaks: str) -> None:
    """A worker whose hello names another protocol (or none) is refused at once: ended 'protocol', not retried."""
    runner = process_runner("dr-stale", command=stale_worker(tmp_path, hello))
    started = time.monotonic()
    outcome = runner.call("run_step", make_context(tmp_path), timeout_s=60)
    assert time.monotonic() - started < 10
    assert outcome.ended == "protocol" and outcome.retryable is False
    assert outcome.message == (
        f"worker for plugin 'dr-stale' {speaks}, this drhost speaks {PROTOCOL_VERSION}: the worker's environment "
        f"(container bundle or venv) is stale — rebuild it (install this drhost's drhost-hookspecs where the "
        f"worker runs; a container bundle is rebuilt when its sources change)")
    assert runner.pid is None  # the stale worker was stopped, nothing left running
    again = runner.call("describe", None, timeout_s=60)
    assert again.ended == "protocol" and again.message == outcome.message


def test_worker_of_this_protocol_is_accepted(tmp_path: Path) -> None:
    """A hello naming this drhost's protocol is accepted and the worker stays up for the call."""
    runner = process_runner("dr-current", command=stale_worker(tmp_path, {"protocol": PROTOCOL_VERSION}))
    try:
        runner.start()
        assert runner.hello["protocol"] == PROTOCOL_VERSION and runner.pid is not None
    finally:
        runner.close()


_TWO_STEPS = '''
from drhost_hookspecs import Category, PluginClass, PluginInfo, Stage, Step, StepFailed, hookimpl

@hookimpl
def drhost_plugin_info():
    return PluginInfo(name="zz-two", department="qa", plugin_class=PluginClass.BUSINESS)

def boom(ctx):
    raise StepFailed("at once")

def probe(ctx):
    ctx.exists("anything")

@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.UPGRADE:
        register(Step("boom", boom, retryable=True, timeout_s=60, category=Category.PLUGIN))
        register(Step("probe", probe, retryable=True, timeout_s=60, category=Category.PLUGIN))
'''


def test_a_call_sent_the_moment_the_last_one_is_answered_gets_its_replies(tmp_path: Path) -> None:
    """The host's next call may arrive before the worker's thread of the last call has finished: the new call's
    Context keeps receiving its replies (it once lost them and hung until its deadline)."""
    import json
    import threading
    import types

    from drhost_hookspecs import LoadedPlugin
    from drhost_hookspecs._runtime import worker as runtime

    module = types.ModuleType("zz_two")
    exec(compile(_TWO_STEPS, "zz_two.py", "exec"), module.__dict__)
    inbound_read, inbound_write = os.pipe()
    answers: dict[int, dict[str, object]] = {}
    done = threading.Event()

    def call(call_id: int, step: str) -> bytes:
        ctx = {"run_id": "r", "config": {}, "state": {},
               "target": {"name": "t", "host": "localhost", "transport": "local", "install_root": str(tmp_path),
                          "work_dir": str(tmp_path / "work")},
               "package": {"product": "p", "version": "2", "upgrades_from": ["1"], "local_path": "/x",
                           "remote_path": "/y", "sha256": "0" * 64, "size": 1}}
        return json.dumps({"type": "call", "id": call_id, "op": "run_step", "stage": "upgrade", "step": step,
                           "ctx": ctx}).encode() + b"\n"

    class Host:
        """The host's end of the worker's stdout: it answers as fast as a host can, and then some."""

        def write(self, data: bytes) -> None:
            message = json.loads(data)
            if message["type"] == "request":
                os.write(inbound_write, json.dumps({"type": "reply", "id": message["id"], "result": False}).encode()
                         + b"\n")
            elif message["id"] == 1:
                # Call 1 is answered: send call 2 at once, and hold call 1's thread here meanwhile, so the
                # worker takes call 2 before that thread is done.
                os.write(inbound_write, call(2, "probe"))
                time.sleep(0.5)
            else:
                answers[int(message["id"])] = message
                done.set()

        def flush(self) -> None:
            pass

    worker = runtime.Worker(LoadedPlugin("zz-two", module), runtime._Channel(Host(), 1 << 20), None)  # type: ignore[arg-type]
    os.write(inbound_write, call(1, "boom"))
    stdin = os.fdopen(inbound_read, "rb")
    serving = threading.Thread(target=worker.serve, args=(stdin,), daemon=True)
    serving.start()
    answered = done.wait(10)
    os.close(inbound_write)  # end of input: serve returns
    serving.join(2)
    stdin.close()
    assert answered, "call 2 never answered: its Context lost the reply to its request"
    assert answers[2]["type"] == "result"
