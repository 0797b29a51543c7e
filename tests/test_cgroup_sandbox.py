"""The cgroup process sandbox with real cgroups and real signals: memory, CPU share, process count, kill."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from drhost.config import load_config
from drhost.errors import RefusedError
from drhost.i18n import translator
from drhost.policy import ClassPolicy
from drhost.supervisor import CallOutcome, RlimitSandbox, WorkerRunner, isolation, make_sandbox
from drhost.supervisor._cgroups import (
    CgroupSandbox,
    CgroupSupport,
    probe_cgroups,
    process_sandbox,
    remove_run_cgroups,
)
from drhost.supervisor._confine import innermost
from drhost_hookspecs import PluginClass, Stage
from plugin_factory import make_plugin, simple_plugin
from worker_helpers import make_context

MiB = 1024 * 1024
SUPPORT = probe_cgroups()
MISSING = SUPPORT.missing()
pytestmark = [
    pytest.mark.cgroups,
    pytest.mark.skipif(bool(MISSING), reason=f"cgroups cannot be created here: {MISSING}"),
]


@pytest.fixture
def sandboxes() -> Iterator[list[CgroupSandbox]]:
    """Every cgroup sandbox a test makes; afterwards none of their cgroups may be left."""
    made: list[CgroupSandbox] = []
    yield made
    for sandbox in made:
        sandbox.close()
        assert [d for d in sandbox.created if d.exists()] == []
        for base in {*SUPPORT.bases.values()}:
            assert [p.name for p in (base / "drhost").glob(f"{sandbox.label}-*")] == []


def runner_for(entry_point: str, made: list[CgroupSandbox], *, memory_mb: int = 256, cpu_percent: int | None = None,
               pids_max: int = 64, nofile: int = 256) -> tuple[WorkerRunner, CgroupSandbox]:
    sandbox = CgroupSandbox({"memory_bytes": memory_mb * MiB, "nofile": nofile, "core_bytes": 0},
                            label=f"test/{entry_point}/{os.getpid()}", message_limit=4 * MiB,
                            cpu_percent=cpu_percent, pids_max=pids_max, support=SUPPORT)
    made.append(sandbox)
    runner = WorkerRunner(entry_point, sandbox=sandbox, logger=logging.getLogger(f"test.cgroup.{entry_point}"),
                          grace_s=0.5, message_limit=4 * MiB)
    return runner, sandbox


def run_step(runner: WorkerRunner, tmp_path: Path, timeout_s: float = 30) -> CallOutcome:
    return runner.call("run_step", make_context(tmp_path), stage=Stage.UPGRADE, step="work", timeout_s=timeout_s)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout_s: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def test_worker_is_in_its_cgroups_before_the_plugin_is_imported(site: Path, tmp_path: Path,
                                                                sandboxes: list[CgroupSandbox]) -> None:
    """The worker joins fresh memory, cpu and pids cgroups under ours before the plugin module is imported."""
    make_plugin(site, "zz-where", "import pathlib\nAT_IMPORT = pathlib.Path('/proc/self/cgroup').read_text()\n"
                + simple_plugin("zz-where", step_body="ctx.state['cgroup'] = AT_IMPORT"))
    runner, sandbox = runner_for("zz-where", sandboxes, cpu_percent=30)
    try:
        outcome = run_step(runner, tmp_path)
        assert outcome.ok, outcome.message
        entries = {c: p for line in outcome.state["cgroup"].splitlines()
                   for _, controllers, p in [line.split(":", 2)] for c in controllers.split(",")}
        for controller in ("memory", "cpu", "pids"):
            directory = sandbox.directories[controller]
            assert directory.parent.name == "drhost" and directory.name == f"{sandbox.label}-1"
            assert directory.parent.parent == SUPPORT.bases[controller]  # nested under our own cgroup
            assert entries[controller].endswith(f"/drhost/{sandbox.label}-1"), entries
        # the worker wrote itself into the cgroups (the host's write in started() is a second line of defence)
        assert sorted(runner.hello["limits"]["cgroups"]) == sorted(runner.sandbox.worker_limits()["cgroup_procs"])
        limits = Path(f"/proc/{runner.pid}/limits").read_text().splitlines()
        address = next(line for line in limits if line.startswith("Max address space"))
        files = next(line for line in limits if line.startswith("Max open files"))
        assert address.split()[3] == "unlimited", "no RLIMIT_AS where the memory cgroup holds memory"
        assert files.split()[3] == "256"
        memory = sandbox.directories["memory"]
        assert int((memory / "memory.limit_in_bytes").read_text()) == 256 * MiB
        assert (sandbox.directories["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "30000"
        assert (sandbox.directories["pids"] / "pids.max").read_text().strip() == "64"
        assert sandbox.in_force() | {"cgroups": None} == {
            "mechanism": "cgroup v1", "memory": f"cgroup v1 memory.limit_in_bytes={256 * MiB}",
            "cpu": "cgroup v1 cfs 30%", "pids": "cgroup v1 pids.max=64", "nofile": "rlimit 256",
            "core_bytes": "rlimit 0", "kill": "process group, then every process in the cgroup v1 cgroups",
            "cgroups": None}
        usage = sandbox.usage()
        assert usage["memory_bytes"] > 0 and usage["processes"] == 1 and usage["tasks"] >= 1
        assert usage["cpu_seconds"] >= 0
    finally:
        runner.close()


def test_memory_bomb_is_killed_by_the_memory_cgroup(site: Path, tmp_path: Path,
                                                   sandboxes: list[CgroupSandbox]) -> None:
    """Touching 600 MB under a 256 MiB cgroup: the kernel OOM-kills the worker; the call ends as 'memory', naming it."""
    make_plugin(site, "zz-hog", simple_plugin("zz-hog", step_body="""
        chunks = []
        for _ in range(600):
            chunks.append(b"x" * (1024 * 1024))
        ctx.state['survived'] = len(chunks)
    """))
    runner, sandbox = runner_for("zz-hog", sandboxes, memory_mb=256)
    before = psutil.Process().memory_info().rss
    try:
        outcome = run_step(runner, tmp_path)
        assert outcome.ended == "memory" and outcome.detail["limit"] == "memory", outcome
        assert "killed by the memory cgroup (limit 256 MiB, oom_kill 1)" in outcome.message
        assert "survived" not in outcome.state
        assert int((sandbox.directories["memory"] / "memory.max_usage_in_bytes").read_text()) > 200 * MiB
        assert psutil.Process().memory_info().rss - before < 64 * MiB
    finally:
        runner.close()


def test_fork_bomb_is_held_at_pids_max_and_cleaned_up(site: Path, tmp_path: Path,
                                                     sandboxes: list[CgroupSandbox]) -> None:
    """A fork bomb stops at pids.max: the step ends as 'pids', the host goes on, and no bomb process survives."""
    make_plugin(site, "zz-forker", simple_plugin("zz-forker", step_body="""
        import os, time
        children = []
        try:
            while len(children) < 10000:
                pid = os.fork()
                if pid == 0:
                    time.sleep(300)
                    os._exit(0)
                children.append(pid)
        finally:
            ctx.state['children'] = children
    """))
    runner, sandbox = runner_for("zz-forker", sandboxes, pids_max=24)
    try:
        outcome = run_step(runner, tmp_path)
        children = outcome.state["children"]
        assert outcome.ended == "pids" and outcome.message.startswith("pids limit 24 reached"), outcome
        assert "Resource temporarily unavailable" in outcome.message
        assert 0 < len(children) < 24
        assert int((sandbox.directories["pids"] / "pids.current").read_text()) <= 24
        assert sandbox.explain_exit(1) == "exit code 1; pids limit 24 reached (fork refused 1 times by the pids cgroup)"
        assert subprocess.run(["true"], check=False).returncode == 0  # the host can still start processes
    finally:
        runner.close()
    assert wait_gone(children) == []
    assert sandbox.leftovers == []


def test_cpu_share_is_held_at_cpu_percent(site: Path, tmp_path: Path, sandboxes: list[CgroupSandbox]) -> None:
    """A spinning step under cpu_percent=20 gets about 20 % of one core (measured by cpuacct over 2 s)."""
    make_plugin(site, "zz-spin", simple_plugin("zz-spin", step_body="""
        import time
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            pass
    """))
    runner, sandbox = runner_for("zz-spin", sandboxes, cpu_percent=20)
    try:
        assert runner.call("describe", None, timeout_s=30).ok
        before, started = sandbox.cpu_seconds(), time.monotonic()
        outcome = run_step(runner, tmp_path)
        after, wall = sandbox.cpu_seconds(), time.monotonic() - started
        assert outcome.ok, outcome.message
        assert before is not None and after is not None
        share = (after - before) / wall
        assert 0.10 < share < 0.35, f"{share:.0%} of one core"
    finally:
        runner.close()


def test_stop_kills_a_child_that_left_the_process_group(site: Path, tmp_path: Path,
                                                       sandboxes: list[CgroupSandbox]) -> None:
    """A child that calls setsid() escapes the process group kill but not the cgroup: stop() ends it."""
    make_plugin(site, "zz-escape", simple_plugin("zz-escape", step_body="""
        import os, subprocess
        child = subprocess.Popen(["sleep", "300"], start_new_session=True)
        ctx.state['child'] = child.pid
        ctx.state['worker_sid'] = os.getsid(0)
    """))
    runner, sandbox = runner_for("zz-escape", sandboxes)
    try:
        outcome = run_step(runner, tmp_path)
        assert outcome.ok, outcome.message
        child = outcome.state["child"]
        assert os.getsid(child) != outcome.state["worker_sid"] and alive(child)
        assert child in sandbox.members()
    finally:
        runner.close()
    assert wait_gone([child]) == []
    assert sandbox.leftovers == []


def test_close_removes_every_cgroup_and_each_launch_gets_a_fresh_one(site: Path, tmp_path: Path,
                                                                    sandboxes: list[CgroupSandbox]) -> None:
    """A relaunch after a crash gets a new cgroup (the old one emptied and removed); close() removes the last."""
    make_plugin(site, "zz-crash", simple_plugin("zz-crash", step_body="import os\nos.kill(os.getpid(), 9)"))
    runner, sandbox = runner_for("zz-crash", sandboxes)
    try:
        first = run_step(runner, tmp_path)
        assert first.ended == "crashed" and "SIGKILL" in first.message
        first_dir = sandbox.directories["memory"]
        run_step(runner, tmp_path)
        assert runner.launches == 2 and not first_dir.exists()
        assert sandbox.directories["memory"].name == f"{sandbox.label}-2"
    finally:
        runner.close()
    assert sandbox.directories == {}
    assert len(sandbox.created) >= 2 and not any(d.exists() for d in sandbox.created)


def policy(pids: int | None = 48) -> ClassPolicy:
    return ClassPolicy(PluginClass.BUSINESS, "process", memory_mb=256, cpu_percent=30, retries=0,
                       retry_interval_s=0, on_failure="continue", nofile=256, pids=pids)


def test_factory_uses_cgroups_unless_off() -> None:
    """make_sandbox gives process classes cgroups in auto and required mode, rlimits with cgroups = off."""
    for mode in ("auto", "required"):
        sandbox = make_sandbox(policy(), label="r/p/t", message_limit=MiB, config={"process": {"cgroups": mode}})
        limits = innermost(sandbox)
        assert isinstance(limits, CgroupSandbox) and sandbox.enforces_memory and sandbox.process_limit == 48
        sandbox.close()
    off = make_sandbox(policy(), label="r/p/t", message_limit=MiB, config={"process": {"cgroups": "off"}})
    assert isinstance(innermost(off), RlimitSandbox)


def test_required_cgroups_refuse_clearly_where_there_are_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without cgroups, required refuses naming what is missing, and auto falls back to rlimits."""
    none = CgroupSupport(1, {"memory": Path("/nonexistent")}, {"cpu": "cgroup v1: no cpu hierarchy mounted",
                                                             "pids": "cannot create a cgroup: Permission denied"})
    monkeypatch.setattr("drhost.supervisor._cgroups.cgroup_support", lambda: none)
    with pytest.raises(RefusedError, match=r"cpu, pids cgroup controller\(s\): cpu: cgroup v1: no cpu hierarchy"):
        process_sandbox(policy(), label="x", message_limit=MiB, config={"process": {"cgroups": "required"}})
    monkeypatch.setattr("drhost.supervisor._cgroups.cgroup_support", lambda: CgroupSupport(0, {}, {"memory": "no"}))
    fallback = process_sandbox(policy(), label="x", message_limit=MiB, config={"process": {"cgroups": "auto"}})
    assert isinstance(fallback, RlimitSandbox)


def test_required_cgroups_refusal_is_said_in_the_operators_language(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal of cgroups = required reads in Chinese with zh_CN, naming the controllers and what the machine
    said as it said it; the English is unchanged."""
    none = CgroupSupport(1, {"memory": Path("/nonexistent")}, {"cpu": "cgroup v1: no cpu hierarchy mounted"})
    monkeypatch.setattr("drhost.supervisor._cgroups.cgroup_support", lambda: none)
    with pytest.raises(RefusedError) as refused:
        process_sandbox(policy(), label="x", message_limit=MiB, config={"process": {"cgroups": "required"}})
    assert str(refused.value) == ("[process] cgroups = required, but this machine does not give drhost the cpu, "
                                  "pids cgroup controller(s): cpu: cgroup v1: no cpu hierarchy mounted; "
                                  "pids: not found")
    assert refused.value.in_language(translator("zh_CN")) == (
        "[process] cgroups = required, 但此机器未向 drhost 提供 cpu, pids cgroup 控制器: "
        "cpu: cgroup v1: no cpu hierarchy mounted; pids: not found")


def test_v2_layout_is_found_and_limited_through_the_unified_files(tmp_path: Path) -> None:
    """On a v2 tree (fake files here) drhost nests under its own cgroup and writes memory.max, swap, cpu.max, pids."""
    root, proc = tmp_path / "cgroup", tmp_path / "proc"
    base = root / "user.slice" / "drhost.scope"
    base.mkdir(parents=True)
    proc.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (base / "cgroup.controllers").write_text("cpu memory pids\n")
    (base / "cgroup.subtree_control").write_text("")
    (proc / "cgroup").write_text("0::/user.slice/drhost.scope\n")
    support = probe_cgroups(root, proc)
    assert support.version == 2 and support.bases == {c: base for c in ("memory", "cpu", "pids")}
    assert (base / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    sandbox = CgroupSandbox({"memory_bytes": 128 * MiB, "nofile": 64}, label="r/p/t", message_limit=MiB,
                            cpu_percent=25, pids_max=16, support=support)
    (base / "drhost" / "r_p_t-1").mkdir(parents=True)  # taken by another drhost: the next name is used
    (base / "drhost" / "r_p_t-1" / "memory.swap.max").write_text("max")
    sandbox.prepare()
    cgroup = base / "drhost" / "r_p_t-2"
    assert sandbox.directories == {c: cgroup for c in ("memory", "cpu", "pids")}
    assert (cgroup / "memory.max").read_text() == str(128 * MiB)
    assert (cgroup / "cpu.max").read_text() == "25000 100000"
    assert (cgroup / "pids.max").read_text() == "16"
    assert sandbox.worker_limits() == {"nofile": 64, "cgroup_procs": [str(cgroup / "cgroup.procs")]}
    (cgroup / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert sandbox.explain_exit(-9) == "killed by the memory cgroup (limit 128 MiB, oom_kill 1)"
    assert sandbox.exit_limit == "memory"
    assert sandbox.in_force()["memory"] == f"cgroup v2 memory.max={128 * MiB}"
    assert sandbox.in_force()["cpu"] == "cgroup v2 cpu.max 25%"


def test_a_later_controller_removes_the_cgroups_a_killed_one_left(sandboxes: list[CgroupSandbox]) -> None:
    """remove_run_cgroups kills what is left in a run's cgroups and removes them; other runs' are untouched."""
    run, other = f"20990101-000000-{os.getpid():06x}", f"20990101-000001-{os.getpid():06x}"
    left = CgroupSandbox({"memory_bytes": 64 * MiB}, label=f"{run}/p/t", message_limit=MiB, support=SUPPORT)
    kept = CgroupSandbox({"memory_bytes": 64 * MiB}, label=f"{other}/p/t", message_limit=MiB, support=SUPPORT)
    sandboxes.extend([left, kept])
    left.prepare()
    kept.prepare()
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    left.started(orphan.pid)  # as if its controller had been SIGKILLed with the worker's child still running
    assert orphan.pid in left.members()
    removed = remove_run_cgroups(run, SUPPORT)
    assert sorted(removed) == sorted(str(d) for d in left.created)
    assert orphan.wait(timeout=5) == -9
    assert all(d.exists() for d in kept.created)


@pytest.mark.parametrize("kind", ["process", "container"])
def test_the_run_clean_up_of_a_worker_kind_removes_the_runs_cgroups(kind: str, sandboxes: list[CgroupSandbox]) -> None:
    """The process kind's clean-up, and the container kind's (its weaker stand-in runs process workers), remove
    the cgroups a killed controller of the run left, and say so as the ``cgroups.removed`` event does."""
    run = f"20990101-000002-{os.getpid():06x}"
    left = CgroupSandbox({"memory_bytes": 64 * MiB}, label=f"{run}/p/t", message_limit=MiB, support=SUPPORT)
    sandboxes.append(left)
    left.prepare()
    removed = [r for r in isolation(kind).clean_up(run, load_config([], []).data, previous_gone=False)
               if r.what == "cgroups"]
    assert [sorted(r.names) for r in removed] == [sorted(str(d) for d in left.created)]
    assert removed[0].message == f"removed {len(left.created)} cgroup(s) left by an earlier controller of this run"
