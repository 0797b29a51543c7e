"""Helpers for runner tests: a HostContext on a local directory and misbehaving worker scripts."""

from __future__ import annotations

import logging
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from drhost.context import HostContext
from drhost.supervisor import RlimitSandbox, WorkerRunner
from drhost.transport import LocalSession
from drhost_hookspecs import PackageInfo, TargetInfo


def make_context(root: Path, *, package_path: str = "/nonexistent/pkg.tar.gz", timeout_s: float = 30.0,
                 events: list[tuple[str, Any]] | None = None, config: dict[str, Any] | None = None) -> HostContext:
    sink = events if events is not None else []
    return HostContext(
        session=LocalSession("t"), run_id="run-test",
        target=TargetInfo(name="t", host="localhost", transport="local", install_root=str(root),
                          work_dir=str(root / "work")),
        package=PackageInfo(product="drproduct", version="2.0.0", upgrades_from=("1.0.0",), local_path=package_path,
                            remote_path=str(root / "staging" / "pkg.tar.gz"), sha256="0" * 64, size=1),
        config=config or {}, state={}, notify=lambda method, args: sink.append((method, dict(args))),
        persist=lambda state: sink.append(("checkpoint", dict(state))),
        cancel=threading.Event(), deadline=time.monotonic() + timeout_s, logger=logging.getLogger("test"),
    )


HELLO = 'import json, sys, os\nout = sys.stdout.buffer\n' \
        'out.write(json.dumps({"type": "hello", "pid": os.getpid(), "protocol": 1}).encode() + b"\\n")\nout.flush()\n' \
        'call = sys.stdin.readline()\n'


#: Runners made by process_runner and not closed yet: closed after each test (conftest), so a test that only
#: looks at a call's outcome leaves no worker and no worker directory behind.
OPEN_RUNNERS: list[WorkerRunner] = []


def process_runner(entry_point: str, limits: dict[str, Any] | None = None, *, command: list[str] | None = None,
                   message_limit: int = 4 * 1024 * 1024, grace_s: float = 0.5) -> WorkerRunner:
    """A worker runner in the rlimit process sandbox."""
    sandbox = RlimitSandbox(limits or {}, message_limit=message_limit, command=command)
    runner = WorkerRunner(entry_point, sandbox=sandbox, logger=logging.getLogger("test.worker"), grace_s=grace_s,
                          message_limit=message_limit)
    OPEN_RUNNERS.append(runner)
    return runner


def close_open_runners() -> None:
    while OPEN_RUNNERS:
        OPEN_RUNNERS.pop().close()


def fake_worker(tmp_path: Path, body: str) -> list[str]:
    """A worker that says hello, reads one call, then runs ``body``."""
    script = tmp_path / "fake_worker.py"
    script.write_text(HELLO + textwrap.dedent(body))
    return [sys.executable, str(script)]
