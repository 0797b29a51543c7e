"""Runners with real plugins: limits in force in the worker, faults contained, deadlines enforced."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil

from drhost.supervisor import ThreadRunner, WorkerRunner
from drhost_hookspecs import Category, LoadedPlugin, PluginClass, PluginInfo, Stage, Step, hookimpl
from worker_helpers import make_context, process_runner

LOG = logging.getLogger("test.runners")
MiB = 1024 * 1024


def catalog_runner(memory_mb: int = 256) -> WorkerRunner:
    return process_runner("dr-catalog", {"memory_bytes": memory_mb * MiB, "nofile": 64, "core_bytes": 0})


def fault(tmp_path: Path, kind: str, **extra: object) -> dict[str, object]:
    return {"fault": f"migrate_job_templates:{kind}", **extra}


def call(runner: WorkerRunner, tmp_path: Path, kind: str, timeout_s: float = 20, **extra: object):  # type: ignore[no-untyped-def]
    ctx = make_context(tmp_path, config=fault(tmp_path, kind, **extra))
    return ctx, runner.call("run_step", ctx, stage=Stage.UPGRADE, step="migrate_job_templates", timeout_s=timeout_s)


def test_worker_limits_are_in_force_in_the_kernel(tmp_path: Path) -> None:
    """The worker lowers RLIMIT_AS and RLIMIT_NOFILE on itself before importing the plugin."""
    runner = catalog_runner(200)
    try:
        runner.call("describe", None, timeout_s=30)
        assert runner.hello["limits"]["memory_bytes"] == 200 * MiB
        limits = Path(f"/proc/{runner.pid}/limits").read_text()
        address = next(line for line in limits.splitlines() if line.startswith("Max address space"))
        files = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert address.split()[3] == str(200 * MiB) and address.split()[4] == str(200 * MiB)
        assert files.split()[3] == "64"
    finally:
        runner.close()


def test_memory_bomb_is_contained(tmp_path: Path) -> None:
    """A plugin allocating without bound fails as 'memory'; the host's own memory does not grow."""
    runner = catalog_runner(160)
    before = psutil.Process().memory_info().rss
    try:
        _, outcome = call(runner, tmp_path, "oom")
    finally:
        runner.close()
    assert outcome.ended == "memory"
    assert psutil.Process().memory_info().rss - before < 64 * MiB


def test_crashing_worker_is_reported_with_its_signal(tmp_path: Path) -> None:
    """A worker killed mid-call ends as crashed with the signal; the next call gets a fresh worker."""
    runner = catalog_runner()
    try:
        _, outcome = call(runner, tmp_path, "crash")
        assert outcome.ended == "crashed" and "SIGSEGV" in outcome.message
        _, again = call(runner, tmp_path, "fail")
        assert again.ended == "failed" and "injected fault" in again.message
        assert runner.launches == 2
    finally:
        runner.close()


def test_hanging_worker_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    """A hanging step ends as timeout near its deadline and the worker process is gone afterwards."""
    runner = catalog_runner()
    try:
        runner.call("describe", None, timeout_s=30)
        pid = runner.pid
        assert pid is not None
        started = time.monotonic()
        _, outcome = call(runner, tmp_path, "hang", timeout_s=1.5)
        elapsed = time.monotonic() - started
        assert outcome.ended == "timeout"
        assert elapsed < 1.5 + 5
    finally:
        runner.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _plugin(step_body):  # type: ignore[no-untyped-def]
    @hookimpl
    def drhost_plugin_info() -> PluginInfo:
        return PluginInfo(name="inproc", department="test", plugin_class=PluginClass.CORE)

    @hookimpl
    def drhost_stage_steps(stage: Stage, register) -> None:  # type: ignore[no-untyped-def]
        if stage is Stage.UPGRADE:
            register(Step("work", step_body, retryable=True, timeout_s=5, category=Category.PLUGIN))

    return LoadedPlugin("inproc", SimpleNamespace(drhost_plugin_info=drhost_plugin_info,
                                                  drhost_stage_steps=drhost_stage_steps))


def test_cooperative_thread_stops_at_the_deadline(tmp_path: Path) -> None:
    """An in-process step sleeping through ctx.sleep wakes when its deadline passes; no thread is left."""
    runner = ThreadRunner(_plugin(lambda ctx: ctx.sleep(60)), grace_s=1)
    outcome = runner.call("run_step", make_context(tmp_path), stage=Stage.UPGRADE, step="work", timeout_s=0.5)
    assert outcome.ended == "timeout" and outcome.detail["hung_thread"] is False


def test_uncooperative_thread_is_reported_hung(tmp_path: Path) -> None:
    """A thread that ignores the stop request is abandoned and reported as hung (the upgrade must abort)."""
    stop_at = time.monotonic() + 3

    def busy(ctx):  # type: ignore[no-untyped-def]
        while time.monotonic() < stop_at:
            time.sleep(0.05)

    runner = ThreadRunner(_plugin(busy), grace_s=0.2)
    outcome = runner.call("run_step", make_context(tmp_path), stage=Stage.UPGRADE, step="work", timeout_s=0.3)
    assert outcome.ended == "timeout" and outcome.detail["hung_thread"] is True


def test_thread_step_runs_commands_in_their_own_group_and_kills_them(tmp_path: Path) -> None:
    """A command a step started is killed with its process group when the step is stopped."""
    marker = tmp_path / "child.pid"

    def spawn(ctx):  # type: ignore[no-untyped-def]
        ctx.run(["sh", "-c", f'sleep 300 & echo $! > {marker}; wait'])

    runner = ThreadRunner(_plugin(spawn), grace_s=1)
    outcome = runner.call("run_step", make_context(tmp_path), stage=Stage.UPGRADE, step="work", timeout_s=1.0)
    assert outcome.ended in ("timeout", "cancelled")
    child = int(marker.read_text())
    time.sleep(0.2)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert os.getpgid(os.getpid()) != child


def test_thread_waiting_for_its_command_to_be_stopped_is_not_hung(tmp_path: Path) -> None:
    """A step whose command ignores TERM takes the transport's whole kill grace to stop: the runner waits for
    that confirmed stop instead of declaring the thread hung, and the command is gone when the call returns."""
    marker = tmp_path / "stubborn.pid"

    def stubborn(ctx):  # type: ignore[no-untyped-def]
        ctx.run(["sh", "-c", f'trap "" TERM; echo $$ > {marker}; while :; do sleep 0.1; done'])

    runner = ThreadRunner(_plugin(stubborn), grace_s=0.2)  # the session's own kill grace is 3 s
    started = time.monotonic()
    outcome = runner.call("run_step", make_context(tmp_path), stage=Stage.UPGRADE, step="work", timeout_s=0.5)
    assert outcome.ended in ("timeout", "cancelled") and outcome.detail.get("hung_thread") is not True, outcome
    assert time.monotonic() - started >= 3.0  # TERM ignored: only the KILL after the session's grace ended it
    pid = int(marker.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_thread_calls_reuse_a_thread_and_a_hung_one_is_never_given_another_call(tmp_path: Path) -> None:
    """Calls one after another run on one pooled thread (no new thread a step), named for each call; a thread
    abandoned as hung gets no later call, and it ends once its call returns."""
    release = threading.Event()
    ran_on: list[tuple[int | None, str]] = []

    def step(ctx):  # type: ignore[no-untyped-def]
        ran_on.append((threading.get_ident(), threading.current_thread().name))
        if ctx.config.get("hang"):
            release.wait(30)

    runner = ThreadRunner(_plugin(step), grace_s=0.2)
    for _ in range(3):
        assert runner.call("run_step", make_context(tmp_path), stage=Stage.UPGRADE, step="work", timeout_s=5).ok
    assert len({ident for ident, _ in ran_on}) == 1 and {name for _, name in ran_on} == {"plugin-inproc-work"}
    hung = runner.call("run_step", make_context(tmp_path, config={"hang": True}), stage=Stage.UPGRADE, step="work",
                       timeout_s=0.3)
    assert hung.detail["hung_thread"] is True and hung.detail["thread_ident"] == ran_on[-1][0]
    abandoned = next(t for t in threading.enumerate() if t.ident == hung.detail["thread_ident"])
    try:
        assert runner.call("run_step", make_context(tmp_path), stage=Stage.UPGRADE, step="work", timeout_s=5).ok
        assert ran_on[-1][0] != hung.detail["thread_ident"]
    finally:
        release.set()
    abandoned.join(5)
    assert not abandoned.is_alive()
